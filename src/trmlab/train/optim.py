"""Optimizers and learning-rate schedules: parameter groups with their own LRs (matrices, embeddings, puzzle ids)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from trmlab.errors import TrmError
from trmlab.nn.sparse_embedding import SignSGDRows, SparseEmbedding


def param_groups(model: nn.Module, t) -> list[dict]:
    """Split parameters by role; each group remembers its base LR in ``initial_lr`` for the schedule.

    - puzzle_emb: the per-puzzle prefix table when it is a dense parameter (model.puzzle_emb_sparse=false)
    - embed: token / position embeddings and the output head (nanochat's embedding_lr)
    - matrix: every other >= 2-D weight (Muon-eligible)
    - vector: biases and 1-D parameters, never weight-decayed
    """
    groups = {k: [] for k in ("puzzle_emb", "embed", "matrix", "vector")}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if "puzzle_emb" in name:
            groups["puzzle_emb"].append(p)
        elif name.startswith(("embed.", "head.", "lm_head", "wte", "wpe")) or "embedding" in name:
            groups["embed"].append(p)
        elif p.ndim >= 2:
            groups["matrix"].append(p)
        else:
            groups["vector"].append(p)
    embed_lr = t.embedding_lr or t.lr
    settings = {"puzzle_emb": (t.puzzle_emb_lr, t.puzzle_emb_weight_decay), "embed": (embed_lr, t.weight_decay),
                "matrix": (t.lr, t.weight_decay), "vector": (t.lr, 0.0)}
    return [{"params": ps, "name": k, "lr": settings[k][0], "initial_lr": settings[k][0],
             "weight_decay": settings[k][1]} for k, ps in groups.items() if ps]


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): the sign of an interpolated momentum, decoupled weight decay (seed 004's exp09e)."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            beta1, beta2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                p.mul_(1 - g["lr"] * g["weight_decay"])
                p.add_(torch.sign(m * beta1 + p.grad * (1 - beta1)), alpha=-g["lr"])
                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)


def adamw(groups: list[dict], betas) -> torch.optim.AdamW:
    """AdamW, fused where PyTorch has the kernel: on this 2-core CPU a 6.5M-parameter step took 15 ms fused
    against 65-95 ms for the default per-tensor loop (docs/benchmarks.md). FSDP2's DTensor parameters keep the
    default implementation."""
    params = [p for g in groups for p in g["params"]]
    fusable = all(type(p) is nn.Parameter and p.device.type in ("cpu", "cuda") and p.is_floating_point()
                  for p in params)
    return torch.optim.AdamW(groups, betas=betas, fused=fusable or None)


def build_optimizers(model: nn.Module, t) -> list[torch.optim.Optimizer]:
    """The main optimizer (two for Muon: Muon for hidden matrices, AdamW for the rest, as nanochat), plus sign-SGD
    for sparse puzzle-identifier tables (the paper's), which are buffers and so in no parameter group."""
    tables = [m for m in model.modules() if isinstance(m, SparseEmbedding)]
    sparse = [SignSGDRows(tables, t.puzzle_emb_lr, t.puzzle_emb_weight_decay)] if tables else []
    return _main_optimizers(model, t) + sparse


def _main_optimizers(model: nn.Module, t) -> list[torch.optim.Optimizer]:
    groups = param_groups(model, t)
    betas = (t.beta1, t.beta2)
    if t.optimizer == "muon":
        muon = [g for g in groups if g["name"] == "matrix"]
        rest = [g for g in groups if g["name"] != "matrix"]
        opts = [torch.optim.Muon(muon, lr=t.lr, weight_decay=t.weight_decay)] if muon else []
        return opts + ([adamw(rest, betas)] if rest else [])
    if t.optimizer == "adamw":
        return [adamw(groups, betas)]
    if t.optimizer == "lion":
        return [Lion(groups, lr=t.lr, betas=betas)]
    if t.optimizer == "adam_atan2":
        from adam_atan2_pytorch import AdamAtan2  # pure PyTorch; no CUDA extension to build
        return [AdamAtan2(groups, lr=t.lr, betas=betas)]
    raise TrmError(f"train.optimizer: unknown '{t.optimizer}'")


def lr_factor(step: int, t) -> float:
    """Linear warmup, then constant (the paper), cosine or linear decay to ``min_lr_ratio``."""
    if t.warmup_steps and step < t.warmup_steps:
        return (step + 1) / t.warmup_steps
    if t.schedule == "constant" or t.steps <= t.warmup_steps:
        return 1.0
    progress = min(1.0, (step - t.warmup_steps) / max(1, t.steps - t.warmup_steps))
    decay = 0.5 * (1 + math.cos(math.pi * progress)) if t.schedule == "cosine" else 1 - progress
    return t.min_lr_ratio + (1 - t.min_lr_ratio) * decay


def set_lr(optimizers, step: int, t) -> float:
    """LR is a pure function of the step, so resuming needs no scheduler state. Returns the factor."""
    f = lr_factor(step, t)
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * f
    return f
