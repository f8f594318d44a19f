"""Model FLOPs: what one training step, or one answer at inference, costs, from the config and the parameter counts.

The one FLOP model of the project: ``trm compare`` (MFLOP/token), the study results (training and inference
FLOPs, the x of the FLOP plots) and ``trm bench`` (beside the FLOPs it counts with FlopCounterMode) all use it.

Kaplan et al.'s count: a matmul parameter costs 2 FLOPs per token forward and 4 backward; attention adds
2 x n_layer x context x n_embd per token forward (the scores and the weighted values). An MLP-mixer's token-mixing
weights act along the sequence, once per channel: 2 x n_embd FLOPs each per sample. Per sample and per
supervision step, with ctx = seq_len + puzzle_emb_len tokens through the core and seq_len through the head:
  core call   C = ctx x (2 x core_params + 2 x n_layer x ctx x n_embd)                      (attention core)
              C = 2 x ctx x (core_params - mixer_params) + 2 x n_embd x mixer_params        (MLP-mixer core)
  head        H = seq_len x 2 x head_params
  training    3 x (n+1) x C  +  (T-1)(n+1) x C  +  3 x H    the last recursion is backpropagated, T-1 run without grad
  inference   T(n+1) x C  +  H
(a plain GPT: one call of its n_layer blocks). A training step is batch x that, x n_sup_train in ``summed`` mode
(every batch runs all supervision steps) and x 1 in ``per_step`` mode (each step is one supervision step of a
carried batch). The embedding lookups, norms, activations and the one-position Q head are left out.
"""

from __future__ import annotations


def matmul_params(model) -> dict:
    """The parameters the count needs: the shared core's, its blocks' token mixers' (attention projections, or an
    MLP-mixer's sequence weights) and the output head's (LM head, puzzle head)."""
    named = list(model.named_parameters())
    return {"core_params": sum(p.numel() for n, p in named if n.startswith("core.")),
            "mixer_params": sum(p.numel() for n, p in named if n.startswith("core.") and ".mixer." in n),
            "head_params": sum(p.numel() for n, p in named if n.startswith(("head.", "lm_head.")))}


def _calls(m) -> tuple[int, int]:
    """(core calls backpropagated, core calls without grad) in one supervision step."""
    if m.arch == "gpt":
        return 1, 0
    return m.n_loops + 1, (m.T_recursion - 1) * (m.n_loops + 1)


def sample_flops(m, core_params: int, head_params: int, training: bool = True, mixer_params: int = 0) -> float:
    """FLOPs of one supervision step of one sample (the formulas of the module docstring); ``m``: a ModelConfig."""
    ctx = m.seq_len + m.puzzle_emb_len
    if m.core == "attention":
        call = ctx * (2 * core_params + 2 * m.n_layer * ctx * m.n_embd)
    else:
        call = 2 * ctx * (core_params - mixer_params) + 2 * m.n_embd * mixer_params
    head = m.seq_len * 2 * head_params
    grad, free = _calls(m)
    if training:
        return float(3 * grad * call + free * call + 3 * head)
    return float((grad + free) * call + head)


def step_flops(cfg, core_params: int, head_params: int, mixer_params: int = 0) -> float:
    """Training FLOPs of one optimizer step of ``cfg`` (a Config: model and train sections)."""
    m, t = cfg.model, cfg.train
    sups = m.n_sup_train if t.supervision == "summed" and m.arch != "gpt" else 1
    return t.batch_size * sups * sample_flops(m, core_params, head_params, True, mixer_params)


def flops_per_token(cfg, core_params: int, head_params: int, mixer_params: int = 0) -> float:
    """Training FLOPs per training token (a step's FLOPs over the batch's seq_len positions)."""
    return step_flops(cfg, core_params, head_params, mixer_params) / (cfg.train.batch_size * cfg.model.seq_len)


def inference_flops(m, core_params: int, head_params: int, steps: float | None = None,
                    mixer_params: int = 0) -> float:
    """FLOPs of one answer: ``steps`` supervision steps (default model.n_sup_inference; a plain GPT: one pass)."""
    if m.arch == "gpt":
        steps = 1
    n = steps if steps is not None else m.n_sup_inference
    return n * sample_flops(m, core_params, head_params, False, mixer_params)


def model_flops(cfg, model) -> dict:
    """A built model's counts for ``cfg``: per training step, per training token and per answer."""
    split = matmul_params(model)
    return {"flops_per_step": step_flops(cfg, **split), "flops_per_token": flops_per_token(cfg, **split),
            "inference_flops": inference_flops(cfg.model, **split)}
