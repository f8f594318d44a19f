"""Feed-forward layers: SwiGLU (the paper's), GELU / ReLU^2 MLPs, and the MLP-mixer over sequence positions."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def swiglu_width(dim: int, expansion: float, multiple_of: int = 256) -> int:
    """The paper's SwiGLU inner width: round(expansion * dim * 2/3) rounded up to a multiple of 256."""
    inner = round(expansion * dim * 2 / 3)
    return -(-inner // multiple_of) * multiple_of


class SwiGLU(nn.Module):
    def __init__(self, dim: int, expansion: float = 4.0, multiple_of: int = 256):
        super().__init__()
        inner = swiglu_width(dim, expansion, multiple_of)
        self.gate_up = nn.Linear(dim, 2 * inner, bias=False)
        self.down = nn.Linear(inner, dim, bias=False)

    def forward(self, x):
        h = self.gate_up(x)
        if torch.is_grad_enabled() and h.requires_grad and not torch.compiler.is_compiling():
            return self.down(_SiluGate.apply(h))
        gate, up = h.chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class _SiluGate(torch.autograd.Function):
    """silu(gate) * up of h = [gate | up], with both halves of the gradient written into one buffer: autograd's
    chunk would concatenate them, a whole extra pass over h (6 % of an eager Sudoku step)."""

    @staticmethod
    def forward(ctx, h):
        gate, up = h.chunk(2, dim=-1)
        act = F.silu(gate)
        ctx.save_for_backward(gate, up, act)
        return act * up

    @staticmethod
    def backward(ctx, grad):
        gate, up, act = ctx.saved_tensors
        d = grad.new_empty(*grad.shape[:-1], 2 * grad.shape[-1])
        d_gate, d_up = d.chunk(2, dim=-1)
        torch.ops.aten.silu_backward.grad_input(grad * up, gate, grad_input=d_gate)
        torch.mul(grad, act, out=d_up)
        return d


class MLP(nn.Module):
    """Two-layer MLP with GELU or ReLU^2 (the nanochat choice), for seed 002's ``activation_fn``."""

    def __init__(self, dim: int, expansion: float = 4.0, activation: str = "gelu"):
        super().__init__()
        self.fc = nn.Linear(dim, int(expansion * dim), bias=False)
        self.proj = nn.Linear(int(expansion * dim), dim, bias=False)
        self.activation = activation

    def forward(self, x):
        h = self.fc(x)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h).square()
        return self.proj(h)


def feed_forward(dim: int, expansion: float, activation: str, multiple_of: int = 256) -> nn.Module:
    if activation == "swiglu":
        return SwiGLU(dim, expansion, multiple_of)
    return MLP(dim, expansion, activation)


class SequenceMixer(nn.Module):
    """Mixes information across positions with a SwiGLU over the sequence axis (the paper's mlp_t for Sudoku).

    Only valid for a fixed sequence length; it replaces attention where the grid is small and fixed.
    """

    def __init__(self, seq_len: int, expansion: float = 4.0):
        super().__init__()
        # Sized like the paper's: a SwiGLU whose "hidden" is the sequence length (97 -> inner width 512).
        self.mix = SwiGLU(seq_len, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(x.transpose(1, 2)).transpose(1, 2)
