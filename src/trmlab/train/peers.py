"""`trm bench --peers`: trmlab's training step side by side with the code users already have, in one run.

    trm bench --peers --trm-src ~/src/TinyRecursiveModels --nanogpt-src ~/src/nanoGPT --reps 3

The peers are the official TRM code (SamsungSAILMontreal/TinyRecursiveModels: its model and ACT loss head; needs
``einops`` and ``pydantic``) and nanoGPT's model.py (karpathy/nanoGPT), imported from checkouts the user points
at; nothing of theirs is copied here. Every case is one fresh process that builds the model at the given shape,
takes one untimed step (two when compiling), then times ``steps`` steps of forward + backward + AdamW in fp32. Sides
alternate (peer, trmlab eager, trmlab compiled, peer, ...) so a machine whose load drifts affects all alike; the
table gives medians and the ratio to the peer (> 1: trmlab is faster).

TRM shapes (hidden, n_loops, T, batch, mlp_t) compare one supervision step of the official model with one of
trmlab's trainer (``train_step``: per-step supervision, ACT carry, AdamW, no EMA); GPT shapes (layers, heads,
width, context, vocab, batch) compare nanoGPT's model with trmlab's plain GPT through the same trainer.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time

TRM_SHAPES = [(128, 3, 2, 64, True), (128, 3, 2, 64, False), (512, 6, 3, 16, True)]  # the last: the paper's Sudoku
GPT_SHAPES = [(4, 4, 256, 256, 512, 8), (8, 8, 512, 512, 512, 4)]


def _timed(step, warmup: int, steps: int) -> float:
    """Seconds per call of ``step`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t) / steps


def trm_overrides(hidden, n_loops, T, batch, mlp_t) -> list[str]:
    """The official script's shape in trmlab terms (sudoku-paper: 2 layers, SwiGLU x4, 16-token puzzle prefix)."""
    return [f"model.n_embd={hidden}", f"model.n_loops={n_loops}", f"model.T_recursion={T}", f"train.batch_size={batch}",
            f"model.core={'mlp_mixer' if mlp_t else 'attention'}", f"model.pos_encoding={'none' if mlp_t else 'rope'}",
            f"model.n_head={max(1, hidden // 64)}", "data.source=generate", "data.n_train=64", "data.n_test=8",
            "data.num_aug=0", "train.optimizer=adamw", "train.ema_decay=0", "train.warmup_steps=0",
            "train.grad_clip=0", "train.eval_interval=0", "train.ckpt_interval=0"]  # the official code does not clip


def gpt_overrides(layers, heads, width, ctx, vocab, batch) -> list[str]:
    return [f"model.n_layer={layers}", f"model.n_head={heads}", f"model.n_embd={width}", f"model.seq_len={ctx}",
            f"data.vocab_size={vocab}", f"train.batch_size={batch}", "data.n_docs=3000", "train.eval_interval=0",
            "train.ckpt_interval=0", "train.warmup_steps=0"]


def official_trm_step(src: str, hidden, n_loops, T, batch, mlp_t):
    """One supervision step (forward, backward, AdamW) of the official TRM model with its ACT loss head."""
    sys.path.insert(0, src)
    import torch
    from models.losses import ACTLossHead
    from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
    cfg = dict(batch_size=batch, seq_len=81, puzzle_emb_ndim=hidden, num_puzzle_identifiers=1, vocab_size=11,
               H_cycles=T, L_cycles=n_loops, H_layers=0, L_layers=2, hidden_size=hidden, expansion=4,
               num_heads=max(1, hidden // 64), pos_encodings="none" if mlp_t else "rope", halt_max_steps=16,
               halt_exploration_prob=0.1, forward_dtype="float32", mlp_t=mlp_t, puzzle_emb_len=16, no_ACT_continue=True)
    model = ACTLossHead(TinyRecursiveReasoningModel_ACTV1(cfg), loss_type="stablemax_cross_entropy")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1.0)
    data = {"inputs": torch.randint(1, 11, (batch, 81)), "labels": torch.randint(1, 11, (batch, 81)),
            "puzzle_identifiers": torch.zeros(batch, dtype=torch.int32)}
    model.train()
    state = {"carry": model.initial_carry(data)}

    def step():
        state["carry"], loss, *_ = model(return_keys=[], carry=state["carry"], batch=data)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def nanogpt_step(src: str, layers, heads, width, ctx, vocab, batch):
    sys.path.insert(0, src)
    import torch
    from model import GPT, GPTConfig
    m = GPT(GPTConfig(n_layer=layers, n_head=heads, n_embd=width, block_size=ctx, vocab_size=vocab, dropout=0.0,
                      bias=False))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4)
    x, y = torch.randint(0, vocab, (batch, ctx)), torch.randint(0, vocab, (batch, ctx))

    def step():
        _, loss = m(x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)  # nanoGPT's train.py clips at 1.0, as trmlab's GPT does
        opt.step()
    return step


def run_peer_case(case: dict) -> dict:
    """In this process: build one side at one shape, time it, return ms/step (what `--peer-case` prints)."""
    import torch
    torch.manual_seed(0)
    side, shape, compiled = case["side"], case["shape"], case.get("compile", False)
    warmup = 2 if compiled else 1
    if side == "official":
        return {"ms": 1000 * _timed(official_trm_step(case["src"], *shape), warmup, case["steps"])}
    if side == "nanogpt":
        return {"ms": 1000 * _timed(nanogpt_step(case["src"], *shape), warmup, case["steps"])}
    from trmlab.config import load_config
    from trmlab.train.trainer import Trainer
    preset, over = (("sudoku-paper", trm_overrides(*shape)) if side == "trmlab"
                    else ("gpt-baseline", gpt_overrides(*shape)))
    cfg = load_config(preset, over + [f"train.compile={'true' if compiled else 'false'}"])
    with tempfile.TemporaryDirectory(prefix="trm-peers-") as tmp:  # its run and data go when the case ends
        trainer = Trainer(cfg, f"{tmp}/run", data_root=f"{tmp}/data", quiet=True)
        return {"ms": 1000 * _timed(trainer.train_step, warmup, case["steps"])}


def _measure(case: dict) -> float:
    cmd = [sys.executable, "-m", "trmlab", "bench", "--peer-case", json.dumps(case)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{case['side']} {case['shape']}: {tail}")
    return json.loads(lines[-1])["ms"]


def compare(trm_src: str, nanogpt_src: str, reps: int, steps: int, echo=print) -> str:
    """Alternate peer / trmlab eager / trmlab compiled over ``reps`` rounds; a Markdown table of medians."""
    groups = []
    if trm_src:
        groups += [("official", "trmlab", shape, trm_src) for shape in TRM_SHAPES]
    if nanogpt_src:
        groups += [("nanogpt", "trmlab-gpt", shape, nanogpt_src) for shape in GPT_SHAPES]
    times: dict[tuple, list[float]] = {}
    for rep in range(reps):
        for peer, ours, shape, src in groups:
            for side, compiled in ((peer, False), (ours, False), (ours, True)):
                case = {"side": side, "shape": list(shape), "src": src, "steps": steps, "compile": compiled}
                ms = _measure(case)
                times.setdefault((peer, tuple(shape), side, compiled), []).append(ms)
                echo(f"round {rep + 1}/{reps}: {side}{' compiled' if compiled else ''} {shape}: {ms:.0f} ms/step")
    rows = ["| peer | shape | peer ms/step | trmlab eager ms/step | ratio | trmlab compiled ms/step | ratio |",
            "|---|---|---:|---:|---:|---:|---:|"]
    for peer, ours, shape, _ in groups:
        med = {key: statistics.median(times[(peer, tuple(shape), *key)]) for key in
               ((peer, False), (ours, False), (ours, True))}
        p, e, c = med[(peer, False)], med[(ours, False)], med[(ours, True)]
        rows.append(f"| {peer} | {describe(peer, shape)} | {p:.0f} | {e:.0f} | {p / e:.2f} | {c:.0f} | {p / c:.2f} |")
    return "\n".join(rows)


def describe(peer: str, shape) -> str:
    if peer == "official":
        hidden, n, T, batch, mlp_t = shape
        return f"hidden {hidden}, n={n}, T={T}, batch {batch}, {'MLP-mixer' if mlp_t else 'attention'}"
    layers, heads, width, ctx, vocab, batch = shape
    return f"{layers} x {width}, {heads} heads, ctx {ctx}, vocab {vocab}, batch {batch}"
