"""Sampling from a trained LM (recursive or plain GPT) with a KV cache: the library half of `trm generate`.

`trm generate <run|checkpoint> --prompt ...`: sample text from a trained LM, recursive or plain GPT.

    trm generate runs/lm-tiny --prompt "A story about the sea." --max-new-tokens 100 --temperature 0.8 --top-k 50

Both models decode with a KV cache by default; the prompt is read in one pass (prefill) and every later pass
feeds only the new token. The plain GPT caches one key/value pair per layer. The recursive LM runs, for every
new token, n_sup_inference supervision steps of T_recursion x (n_loops + 1) core calls, all from the engine's
initial (y, z), exactly as in training and evaluation. Its cache comes in two kinds (``cache=``):

- ``exact`` (default): each of those core calls gets its own cache slots, which reproduces full recomputation
  of the context exactly (tested) at n_sup x T x (n_loops + 1) times the GPT's cache memory;
- ``shared`` (Huginn, arXiv 2502.05171): one recursion's slots, (n_loops + 1) times the GPT's, shared by every
  recursion and supervision step, each keeping the latest application's keys/values. Exact when
  n_sup = T = 1; otherwise an approximation whose cost ``teacher_forced_loss`` measures.

With ACT halting (model.halting=act) the model may stop before n_sup_inference steps when its halting logit says
so; positions would then differ in steps, which no cache can hold, so the context is recomputed for every token.
The line after the text says how many steps each token used. Every document in training starts with
<|endoftext|>, so the prompt is prefixed with it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import torch.nn.functional as F

from trmlab.errors import TrmError
from trmlab.models.lm import RecursiveLM
from trmlab.nn.attention import KVCache

CACHE_MODES = ("exact", "shared")


def check_sampling(temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, n_sup: int | None = None,
                   max_new_tokens: int = 0, cache: str = "exact") -> None:
    """One-line errors for settings that would crash the sampler (top_p 0) or be quietly meaningless."""
    # written as "not (ok)" so that NaN, which fails every comparison, is refused too
    if not (0 <= temperature < math.inf):
        raise TrmError(f"--temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if not (0 < top_p <= 1):
        raise TrmError(f"--top-p must be in (0, 1] (1 = off), got {top_p}")
    if top_k < 0:
        raise TrmError(f"--top-k must be >= 0 (0 = off), got {top_k}")
    if n_sup is not None and n_sup < 1:
        raise TrmError(f"--n-sup must be >= 1 (leave it out for model.n_sup_inference), got {n_sup}")
    if max_new_tokens < 0:
        raise TrmError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if cache not in CACHE_MODES:
        raise TrmError(f"--cache must be one of {', '.join(CACHE_MODES)} (--no-cache for none), got {cache!r}")


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                generator: torch.Generator | None = None) -> int:
    """One token id from logits [V]: greedy at temperature 0, else softmax(logits / T) cut to top-k and top-p."""
    logits = logits.float().cpu()
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:   # nucleus: the smallest set of tokens whose probability reaches top_p
        sorted_p, order = probs.sort(descending=True)
        drop = sorted_p.cumsum(0) - sorted_p >= top_p
        probs[order[drop]] = 0.0
        probs = probs / probs.sum()
    return int(torch.multinomial(probs, 1, generator=generator))


def new_cache(model, cache: str = "exact", capacity: int = 0) -> KVCache:
    """An empty KV cache of the kind ``cache`` names, with room for ``capacity`` positions."""
    check_sampling(cache=cache)
    if cache == "shared" and not isinstance(model, RecursiveLM):
        raise TrmError("--cache shared is for the recursive LM: a plain GPT applies each layer once per token, "
                       "so its (exact) cache already holds one key/value per layer and token")
    return KVCache(shared=cache == "shared", capacity=capacity)


@dataclass
class Generation:
    tokens: list[int]                                   # the new tokens (without the prompt)
    prompt_tokens: int
    prefill_s: float                                    # time to read the prompt
    decode_s: float                                     # time to produce every token after the first
    steps: list[int] = field(default_factory=list)      # supervision steps used for each new token
    cache_bytes: int = 0                                # keys and values held at the end

    @property
    def cache_mb(self) -> float:
        return self.cache_bytes / 2**20

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / max(self.prefill_s + self.decode_s, 1e-9)


@torch.inference_mode()
def generate_ids(model, prompt: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int = 0, use_cache: bool = True, n_sup: int | None = None,
                 halt: bool = False, stop_id: int | None = None, device: torch.device | str = "cpu",
                 cache: str = "exact") -> Generation:
    """Autoregressive sampling from ``model.decode`` (GPT or RecursiveLM); ``halt`` implies no cache.

    ``cache`` is the kind of KV cache (``exact`` or ``shared``, module docstring); ``use_cache=False``: none.
    """
    check_sampling(temperature, top_k, top_p, n_sup, max_new_tokens, cache)
    if not prompt:
        raise TrmError("generation needs at least one prompt token")
    use_cache = use_cache and not halt
    gen = torch.Generator().manual_seed(seed)
    kv = new_cache(model, cache, len(prompt) + max_new_tokens) if use_cache else None
    ids = list(prompt)
    t0 = time.perf_counter()
    logits, used = model.decode(torch.tensor([ids], device=device), kv, n_sup, halt)
    prefill = time.perf_counter() - t0
    out, steps = [], []
    for i in range(max_new_tokens):
        tok = sample_next(logits[0], temperature, top_k, top_p, gen)
        out.append(tok)
        steps.append(used)
        ids.append(tok)
        if tok == stop_id or i == max_new_tokens - 1:
            break
        context = [tok] if use_cache else ids
        logits, used = model.decode(torch.tensor([context], device=device), kv, n_sup, halt)
    decode = time.perf_counter() - t0 - prefill
    return Generation(out, len(prompt), prefill, decode, steps, kv.nbytes() if kv is not None else 0)


@torch.inference_mode()
def teacher_forced_loss(model, inputs: torch.Tensor, targets: torch.Tensor, cache: str | None = "exact",
                        n_sup: int | None = None, prefill: int = 1) -> float:
    """Summed next-token cross-entropy (nats) of ``targets`` [B, L] as generation would score them.

    The windows ``inputs`` [B, L] are decoded as generation reads them: the first ``prefill`` tokens in one
    pass, then one token per pass through a ``cache`` of that kind, taking each pass's last-position logits.
    ``cache=None`` is full recomputation: every step over the whole window, the model's own evaluation.
    Dividing by ``targets.numel()`` gives nats/token; with an exact cache it equals ``cache=None``.
    """
    if cache is None:
        logits = _full_logits(model, inputs, n_sup)
        return float(F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="sum"))
    kv = new_cache(model, cache, inputs.shape[1])
    total = 0.0
    for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, inputs.shape[1])]:
        if start >= stop:
            continue
        last, _ = model.decode(inputs[:, start:stop], kv, n_sup)
        if stop - start > 1:   # the prefill's other positions: what recomputation of the prompt gives
            earlier = _full_logits(model, inputs[:, :stop - 1], n_sup)
            total += float(F.cross_entropy(earlier.float().flatten(0, 1), targets[:, :stop - 1].flatten(),
                                           reduction="sum"))
        total += float(F.cross_entropy(last.float(), targets[:, stop - 1], reduction="sum"))
    return total


def _full_logits(model, inputs: torch.Tensor, n_sup: int | None) -> torch.Tensor:
    """Logits [B, L, V] at every position after the model's inference steps, from the whole window."""
    if not isinstance(model, RecursiveLM):
        return model.step({"inputs": inputs}).logits
    carry = None
    for _ in range(n_sup or model.cfg.n_sup_inference):
        out = model.step({"inputs": inputs}, carry)
        carry = out.carry
    return out.logits


def find_tokenizer(cfg, tokenizer: str = "", data_root: str = "data", checkpoint: str | Path = ""):
    """The tokenizer the run was trained with: --tokenizer, else the run's own copy, else its data directory's."""
    from trmlab.data.text import text_dir_name
    from trmlab.data.tokenizer import load_tokenizer
    from trmlab.tasks.lm import TOKENIZER_FILE, run_tokenizer
    if tokenizer and not Path(tokenizer).is_file():
        raise TrmError(f"--tokenizer {tokenizer}: no such file")
    path = Path(tokenizer) if tokenizer else run_tokenizer(checkpoint) if checkpoint else None
    path = path or Path(data_root) / text_dir_name(cfg.data) / TOKENIZER_FILE
    if not path.is_file():
        raise TrmError(f"tokenizer not found in the run or at {path}: pass --data-root (where the run's data was "
                       f"built) or --tokenizer PATH/tokenizer.json")
    tok = load_tokenizer(path)
    if tok.vocab_size > cfg.model.vocab_size:
        raise TrmError(f"{path} has {tok.vocab_size} tokens but the model's embedding has {cfg.model.vocab_size}: "
                       "not the tokenizer this model was trained with")
    return tok
