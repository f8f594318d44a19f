"""Multi-head attention with rotary position embeddings, grouped-query heads, causal or not, and a KV cache."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Rotary(nn.Module):
    """RoPE tables for up to ``max_len`` positions (recomputed on the fly when a longer sequence arrives)."""

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self._build(max_len)

    def _build(self, n: int):
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        angles = torch.outer(torch.arange(n, dtype=torch.float32), inv_freq)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: [B, H, L, hd]; rotate pairs (first half, second half) by position-dependent angles."""
        n = offset + x.shape[-2]
        if n > self.cos.shape[0]:
            self._build(2 * n)
        cos = self.cos[offset:n].to(x.dtype)
        sin = self.sin[offset:n].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class KVCache:
    """Keys and values of past positions, one entry per attention layer, for incremental decoding."""

    def __init__(self):
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def length(self, layer: int) -> int:
        return self.layers[layer][0].shape[-2] if layer in self.layers else 0

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        if layer in self.layers:
            pk, pv = self.layers[layer]
            k, v = torch.cat((pk, k), dim=-2), torch.cat((pv, v), dim=-2)
        self.layers[layer] = (k, v)
        return k, v


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, n_kv_head: int = 0, causal: bool = False,
                 rotary: Rotary | None = None):
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head or n_head
        self.head_dim = dim // n_head
        self.causal, self.rotary = causal, rotary
        self.qkv = nn.Linear(dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.out = nn.Linear(self.n_head * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer_id: int = 0) -> torch.Tensor:
        B, L, _ = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.head_dim, self.n_kv_head * self.head_dim,
                                     self.n_kv_head * self.head_dim], dim=-1)
        q = q.view(B, L, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, L, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = v.view(B, L, self.n_kv_head, self.head_dim).transpose(1, 2)
        offset = cache.length(layer_id) if cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None:
            k, v = cache.append(layer_id, k, v)
        # With a cache, new queries sit at the end: causal masking with is_causal would misalign, so build
        # the mask only when needed (prefill of more than one token).
        mask, is_causal = None, self.causal and cache is None
        if self.causal and cache is not None and L > 1:
            mask = torch.ones(L, k.shape[-2], dtype=torch.bool, device=x.device).tril(k.shape[-2] - L)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           enable_gqa=self.n_kv_head != self.n_head)
        return self.out(y.transpose(1, 2).reshape(B, L, -1))
