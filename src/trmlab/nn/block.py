"""The shared core of every recursive model: a small stack of transformer (or MLP-mixer) blocks.

``ReasoningCore(h, injection)`` returns the new state ``blocks(h + injection)``: the TRM paper sums its inputs
instead of concatenating them, so one network serves both the latent update z <- f(z, x + y) and the answer
update y <- f(y, z).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from trmlab.nn.attention import Attention, KVCache, Rotary
from trmlab.nn.mlp import SequenceMixer, feed_forward


def _normalised(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x / rms(x), 1 / rms(x)) in two passes; bf16/fp16 are normalised in fp32."""
    xf = x.float() if x.element_size() < 4 else x
    rstd = torch.rsqrt(torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square() / x.shape[-1] + eps)
    return xf * rstd, rstd


class _RMSNorm(torch.autograd.Function):
    """RMSNorm with a hand-written backward: two passes forward, three back. Autograd through the composite
    F.rms_norm (what the CPU runs) records five ops and saves their inputs; this saves only the output and 1/rms."""

    @staticmethod
    def forward(ctx, x, eps):
        y, rstd = _normalised(x, eps)
        ctx.save_for_backward(y, rstd)
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        y, rstd = ctx.saved_tensors
        g = grad.to(y.dtype)
        # d/dx of x / rms(x): (g - y * mean(g * y)) / rms
        mean_gy = torch.linalg.vecdot(g, y, dim=-1).unsqueeze(-1) / y.shape[-1]
        return (torch.addcmul(g, y, mean_gy, value=-1) * rstd).to(grad.dtype), None


def rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """RMSNorm without a learnable scale, as the paper (computed in fp32 for stability under autocast)."""
    if torch.compiler.is_compiling():  # inductor fuses the composite itself
        return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)
    if torch.is_grad_enabled() and x.requires_grad:
        return _RMSNorm.apply(x, eps)
    return _normalised(x, eps)[0].to(x.dtype)  # no graph: the same two passes (F.rms_norm's composite takes five)


class Block(nn.Module):
    """Token mixer + feed-forward, each with a residual; post-norm (the paper) or pre-norm (deep LMs)."""

    def __init__(self, cfg, rotary: Rotary | None, seq_len: int):
        super().__init__()
        if cfg.core == "mlp_mixer":
            self.mixer = SequenceMixer(seq_len, cfg.mlp_ratio)
        else:
            self.mixer = Attention(cfg.n_embd, cfg.n_head, cfg.n_kv_head, cfg.causal, rotary)
        self.mlp = feed_forward(cfg.n_embd, cfg.mlp_ratio, cfg.activation_fn)
        self.pre_norm = cfg.norm == "pre"

    def _mix(self, h, cache, layer_id):
        if isinstance(self.mixer, Attention):
            return self.mixer(h, cache, layer_id)
        return self.mixer(h)

    def forward(self, h, cache: KVCache | None = None, layer_id: int = 0):
        if self.pre_norm:
            h = h + self._mix(rms_norm(h), cache, layer_id)
            return h + self.mlp(rms_norm(h))
        h = rms_norm(h + self._mix(h, cache, layer_id))
        return rms_norm(h + self.mlp(h))


class ReasoningCore(nn.Module):
    """``n_layer`` blocks applied to ``h + injection``; the one network the recursion engine reuses."""

    def __init__(self, cfg, seq_len: int):
        super().__init__()
        rotary = None
        if cfg.core == "attention" and cfg.pos_encoding == "rope":
            rotary = Rotary(cfg.n_embd // cfg.n_head, max(seq_len, 1), cfg.rope_theta)
        self.blocks = nn.ModuleList(Block(cfg, rotary, seq_len) for _ in range(cfg.n_layer))
        self.pre_norm = cfg.norm == "pre"
        self.n_calls = 0  # counts applications; tests and benchmarks read it

    def forward(self, h: torch.Tensor, injection: torch.Tensor, cache: KVCache | None = None,
                cache_offset: int = 0) -> torch.Tensor:
        self.n_calls += 1
        h = h + injection
        for i, block in enumerate(self.blocks):
            h = block(h, cache, cache_offset + i)
        # Pre-norm residual streams grow with every recursion; normalising the output keeps states bounded.
        return rms_norm(h) if self.pre_norm else h
