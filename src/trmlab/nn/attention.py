"""Multi-head attention with rotary position embeddings, grouped-query heads, causal or not, and a KV cache."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Rotary(nn.Module):
    """RoPE tables for up to ``max_len`` positions (recomputed on the fly when a longer sequence arrives).

    The rotation takes each head's dims as adjacent pairs (x[2i], x[2i+1]) and multiplies them, as complex
    numbers, by e^{i * position * freq_i}: one complex multiply forward and one backward, where a real formula over
    split halves takes four whole-tensor passes each way (a third of an eager step's elementwise time). The model
    keeps the halves convention of its weights: ``Attention`` orders the q/k rows of its projection pairwise.
    """

    def __init__(self, head_dim: int, max_len: int, theta: float = 10000.0):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        self._build(max_len)

    def _build(self, n: int):
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.head_dim, 2, dtype=torch.float32) / self.head_dim))
        angles = torch.outer(torch.arange(n, dtype=torch.float32), inv_freq)
        self.register_buffer("freqs", torch.polar(torch.ones_like(angles), angles), persistent=False)
        self.register_buffer("cos", angles.cos(), persistent=False)  # the same, as reals: for compiled graphs
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: torch.Tensor, offset: int = 0) -> torch.Tensor:
        """x: [B, L, heads, hd] with pairs adjacent; each pair rotated by its position's angles (from ``offset``)."""
        n = offset + x.shape[1]
        if n > self.freqs.shape[0]:
            self._build(2 * n)
        if torch.compiler.is_compiling():  # inductor generates no complex code: the real form, which it fuses
            a, b = x.unflatten(-1, (-1, 2)).unbind(-1)
            cos, sin = self.cos[offset:n, None].to(x.dtype), self.sin[offset:n, None].to(x.dtype)
            return torch.stack((a * cos - b * sin, b * cos + a * sin), -1).flatten(-2)
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # complex needs fp32: bf16 has none
        return torch.view_as_real(pairs * self.freqs[offset:n, None]).flatten(-2).to(x.dtype)


class KVCache:
    """Keys and values of past positions, one slot per attention layer (``layer`` ids), for incremental decoding.

    Each slot is a buffer that grows by doubling (from ``capacity`` positions when given), so a new token is
    written in place instead of copying the whole cache each time (as torch.cat would, per slot per token).

    ``shared=True`` is Huginn's shared cache (arXiv 2502.05171): the same slot is written by several
    applications of one layer to the same new tokens, and each write replaces the previous one; the new
    positions join the cache only at ``commit()``, holding the latest application's keys/values.
    """

    def __init__(self, shared: bool = False, capacity: int = 0):
        self.shared, self.capacity = shared, capacity
        self.layers: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # buffers [B, H, room, head_dim]
        self.lengths: dict[int, int] = {}                                # committed positions per slot
        self.pending = 0                                                 # shared: positions not yet committed

    def length(self, layer: int) -> int:
        return self.lengths.get(layer, 0)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [B, H, L, hd] after the slot's committed positions; return the slot's keys and values so far."""
        n, L = self.length(layer), k.shape[-2]
        kb, vb = self._room(layer, k, v, n + L)
        kb[..., n:n + L, :] = k
        vb[..., n:n + L, :] = v
        if self.shared:
            self.pending = L
        else:
            self.lengths[layer] = n + L
        return kb[..., :n + L, :], vb[..., :n + L, :]

    def commit(self):
        """Shared cache: the positions written since the last commit become part of every slot (exact: no-op)."""
        if self.shared:
            for layer in self.layers:
                self.lengths[layer] = self.length(layer) + self.pending
            self.pending = 0

    def nbytes(self) -> int:
        """Bytes of the keys and values the cache holds (committed positions; buffers may have spare room)."""
        return sum(2 * kb[..., :self.length(layer), :].numel() * kb.element_size()
                   for layer, (kb, _) in self.layers.items())

    def _room(self, layer: int, k: torch.Tensor, v: torch.Tensor, need: int):
        """The slot's buffers, reallocated (doubled, the committed positions copied) when ``need`` does not fit."""
        if layer in self.layers and self.layers[layer][0].shape[-2] >= need:
            return self.layers[layer]
        n = self.length(layer)
        room = max(need, self.capacity, 2 * n)
        buffers = tuple(t.new_empty(*t.shape[:-2], room, t.shape[-1]) for t in (k, v))
        for new, old in zip(buffers, self.layers.get(layer, ())):
            new[..., :n, :] = old[..., :n, :]
        self.layers[layer] = buffers
        return buffers


class Attention(nn.Module):
    def __init__(self, dim: int, n_head: int, n_kv_head: int = 0, causal: bool = False,
                 rotary: Rotary | None = None):
        super().__init__()
        self.n_head, self.n_kv_head = n_head, n_kv_head or n_head
        self.head_dim = dim // n_head
        self.causal, self.rotary = causal, rotary
        self.qkv = nn.Linear(dim, (self.n_head + 2 * self.n_kv_head) * self.head_dim, bias=False)
        self.out = nn.Linear(self.n_head * self.head_dim, dim, bias=False)

    def _weight(self) -> torch.Tensor:
        """The projection's weight with its q/k rows in pairwise order, which the rotation wants (a small copy).
        The parameter keeps RoPE's halves convention, so checkpoints are unchanged; q.k is a sum over head dims,
        and one order for q and k leaves it unchanged, so q and k are never put back; v keeps its rows."""
        w = self.qkv.weight
        if self.rotary is None:
            return w
        n_qk = (self.n_head + self.n_kv_head) * self.head_dim
        # per head, rows x1[0], x2[0], x1[1], x2[1], ...: the halves interleaved
        qk = w[:n_qk].unflatten(0, (-1, 2, self.head_dim // 2)).transpose(1, 2).flatten(0, 2)
        return torch.cat((qk, w[n_qk:]))

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer_id: int = 0) -> torch.Tensor:
        B, L, _ = x.shape
        nq, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        qk, v = F.linear(x, self._weight()).split([(nq + nkv) * hd, nkv * hd], dim=-1)
        qk = qk.view(B, L, nq + nkv, hd)
        offset = cache.length(layer_id) if cache is not None else 0
        if self.rotary is not None:
            qk = self.rotary(qk, offset)  # queries and keys in one rotation
        q, k = qk.split([nq, nkv], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.view(B, L, nkv, hd).transpose(1, 2)
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
