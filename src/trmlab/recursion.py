"""THE recursion engine: every model here is embed -> recurse on (y, z) with one shared core -> read out.

One recursion (the paper's n latent updates, then one answer update; inputs are summed into the core):
    for _ in range(n_loops): z = core(z, x + y)
    y = core(y, z)
One supervision step: T_recursion - 1 recursions under no_grad, then one recursion with grad; the carry (y, z)
leaves the step detached, so memory does not grow with T_recursion or with the number of supervision steps.
Deep supervision (how many steps, and when the optimizer steps) is the trainer's business: ``train/supervision.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


@dataclass
class Carry:
    """The state carried between supervision steps: y is the answer embedding, z the latent reasoning."""

    y: torch.Tensor
    z: torch.Tensor


@dataclass
class StepOutput:
    logits: torch.Tensor   # [B, L, vocab] read out from y (prefix positions removed)
    q_logit: torch.Tensor  # [B] halting logit: > 0 means "my answer is right, stop"
    carry: Carry           # detached


def recursion(core: nn.Module, x, y, z, n_loops: int):
    xy = x + y  # the n latent updates all inject the same x + y: add it once, not n times
    for _ in range(n_loops):
        z = core(z, xy)
    y = core(y, z)
    return y, z


def deep_recursion(core: nn.Module, x, y, z, n_loops: int, T_recursion: int):
    """T-1 gradient-free recursions (free depth, no activation memory), then one that is backpropagated."""
    with torch.no_grad():
        for _ in range(T_recursion - 1):
            y, z = recursion(core, x, y, z, n_loops)
    return recursion(core, x, y, z, n_loops)


class RecursiveModel(nn.Module):
    """A recursive reasoner assembled from parts: ``embed(batch) -> x``, a shared ``core``, ``head(y) -> logits``.

    Puzzles, the recursive LM and the latent-thought model differ only in these parts and in their loss.
    """

    def __init__(self, cfg, embed: nn.Module, core: nn.Module, head: nn.Module, prefix_len: int = 0):
        super().__init__()
        self.cfg = cfg
        self.embed, self.core, self.head = embed, core, head
        self.prefix_len = prefix_len
        self.q_head = nn.Linear(cfg.n_embd, 1, bias=True)
        with torch.no_grad():  # halt rarely at first: sigmoid(-5) ~ 0.007
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(cfg.q_init_bias)
        # Fixed (not learned) random initial states, as the paper: every sample starts from the same y0, z0.
        self.register_buffer("y_init", nn.init.trunc_normal_(torch.empty(cfg.n_embd), std=1.0, a=-2, b=2))
        self.register_buffer("z_init", nn.init.trunc_normal_(torch.empty(cfg.n_embd), std=1.0, a=-2, b=2))

    @property
    def n_loops(self) -> int:
        return self.cfg.n_loops

    @property
    def T_recursion(self) -> int:
        return self.cfg.T_recursion

    def initial_carry(self, x: torch.Tensor) -> Carry:
        return Carry(self.y_init.to(x.dtype).expand_as(x).clone(), self.z_init.to(x.dtype).expand_as(x).clone())

    def reset_carry(self, carry: Carry, reset: torch.Tensor) -> Carry:
        """Restart the samples where ``reset`` [B] is True from the initial state (ACT replaced them)."""
        m = reset.view(-1, 1, 1)
        return Carry(torch.where(m, self.y_init.to(carry.y.dtype), carry.y),
                     torch.where(m, self.z_init.to(carry.z.dtype), carry.z))

    def make_carry(self, y: torch.Tensor, z: torch.Tensor) -> Carry:
        return Carry(y, z)

    def forward(self, batch: dict, carry: Carry | None = None, reset: torch.Tensor | None = None) -> StepOutput:
        return self.step(batch, carry, reset)

    def step(self, batch: dict, carry: Carry | None = None, reset: torch.Tensor | None = None) -> StepOutput:
        """One supervision step from ``carry`` (None = the initial state; ``reset`` [B] restarts some samples)."""
        x = self.embed(batch)
        if carry is None:
            carry = self.initial_carry(x)
        elif reset is not None:
            carry = self.reset_carry(carry, reset)
        y, z = deep_recursion(self.core, x, carry.y, carry.z, self.n_loops, self.T_recursion)
        logits = self.head(y[:, self.prefix_len:])
        # With a puzzle-id prefix, position 0 acts as a CLS token for the halting head (the paper); else mean-pool.
        pooled = y[:, 0] if self.prefix_len else y.mean(dim=1)
        q_logit = self.q_head(pooled).squeeze(-1).float()
        return StepOutput(logits, q_logit, Carry(y.detach(), z.detach()))

    @torch.no_grad()
    def predict(self, batch: dict, n_sup: int | None = None, halt: bool = True):
        """Answer tokens after up to ``n_sup`` steps; with ``halt`` a sample stops at its first q > 0.

        Returns (tokens [B, L], steps used [B]). Like the paper's eval, all steps run for batching; a halted
        sample simply keeps the answer it had when it halted.
        """
        n_sup = n_sup or self.cfg.n_sup_inference
        carry, tracker = None, HaltTracker(n_sup)
        for _ in range(n_sup):
            out = self.step(batch, carry)
            carry = out.carry
            tracker.update(out.logits.argmax(-1), out.q_logit if halt else None)
        return tracker.answer, tracker.steps


class HaltTracker:
    """ACT at inference: each sample keeps the answer of the step where its Q-head first said halt (q > 0),
    or of the last step if it never did, and records how many supervision steps it used.

    ``rule(q_logit, pred, previous_pred)`` -> [B] bool replaces "q > 0" (``trmlab.eval.halting`` has the rules
    that keep accuracy; previous_pred is None at the first step)."""

    def __init__(self, n_sup: int, rule=None):
        self.n_sup, self.k, self.rule = n_sup, 0, rule
        self.answer = self.steps = self.done = self.previous = None
        self.q_logit = None  # [B] the halting logit of the step whose answer is kept (its confidence)

    def update(self, pred: torch.Tensor, q_logit: torch.Tensor | None):
        if self.answer is None:
            self.answer = pred.clone()
            self.steps = torch.full(pred.shape[:1], self.n_sup, device=pred.device)
            self.done = torch.zeros(pred.shape[:1], dtype=torch.bool, device=pred.device)
        self.k += 1
        self.answer = torch.where(self.done.view(-1, *[1] * (pred.dim() - 1)), self.answer, pred)
        previous, self.previous = self.previous, pred
        if q_logit is not None:
            self.q_logit = q_logit.clone() if self.q_logit is None else torch.where(self.done, self.q_logit, q_logit)
            says_halt = self.rule(q_logit, pred, previous) if self.rule is not None else q_logit > 0
            newly = ~self.done & says_halt
            self.steps = torch.where(newly, torch.full_like(self.steps, self.k), self.steps)
            self.done = self.done | newly


def count_parameters(model: nn.Module) -> dict:
    """Parameter counts with and without the puzzle-identifier table (the paper's "7M" excludes it)."""
    sparse = sum(b.numel() for n, b in model.named_buffers() if "puzzle_emb" in n)  # the sign-SGD table
    total = sum(p.numel() for p in model.parameters()) + sparse
    table = sum(p.numel() for n, p in model.named_parameters() if "puzzle_emb" in n) + sparse
    return {"params": total, "params_without_puzzle_emb": total - table, "puzzle_emb_params": table}


def model_summary(model: nn.Module, cfg) -> str:
    c = count_parameters(model)
    m = cfg.model
    if m.arch == "gpt":
        return f"params {c['params']:,} | plain GPT, no recursion: effective depth {m.effective_depth} = n_layer"
    table = f" (without puzzle-embedding table {c['params_without_puzzle_emb']:,})" if c["puzzle_emb_params"] else ""
    return (f"params {c['params']:,}{table} | n_layer {m.n_layer} x (n_loops {m.n_loops} + 1) x T_recursion {m.T_recursion} x "
            f"n_sup {m.n_sup_train} = effective depth {m.effective_depth}")


def lecun_init_(module: nn.Module):
    """Truncated-normal LeCun init (std 1/sqrt(fan_in)) for every Linear, as the paper's JAX-style init."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=1 / math.sqrt(m.in_features), a=-2 / math.sqrt(m.in_features),
                                  b=2 / math.sqrt(m.in_features))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
