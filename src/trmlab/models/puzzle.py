"""The puzzle TRM (Sudoku, Maze, ARC): cell tokens + optional puzzle-identifier prefix -> shared core -> cell logits."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from trmlab.errors import TrmError
from trmlab.nn.block import ReasoningCore
from trmlab.nn.sparse_embedding import SparseEmbedding
from trmlab.recursion import RecursiveModel, lecun_init_


class PuzzleEmbedding(nn.Module):
    """Token embedding scaled by sqrt(hidden), an optional learned position table, and the puzzle-id prefix.

    The puzzle-identifier embedding (``puzzle_emb``) gives each puzzle (ARC: each task x augmentation) its own
    ``puzzle_emb_len`` prefix vectors, zero-initialised and trained with their own learning rate (by default the
    paper's sparse sign-SGD, ``trmlab.nn.sparse_embedding``). With
    ``puzzle_emb_ndim`` < puzzle_emb_len x n_embd (the paper: n_embd) each id stores only that many numbers and the
    rest of the prefix is zero padding, as the official code does.
    """

    def __init__(self, cfg):
        super().__init__()
        d = cfg.n_embd
        self.scale = math.sqrt(d)
        self.tokens = nn.Embedding(cfg.vocab_size, d)
        nn.init.trunc_normal_(self.tokens.weight, std=1 / self.scale, a=-2 / self.scale, b=2 / self.scale)
        self.prefix_len = cfg.puzzle_emb_len
        if self.prefix_len:
            ndim = cfg.puzzle_emb_ndim or self.prefix_len * d
            if ndim > self.prefix_len * d:
                raise TrmError(f"model.puzzle_emb_ndim={ndim} exceeds puzzle_emb_len x n_embd = {self.prefix_len * d}")
            table = SparseEmbedding if cfg.puzzle_emb_sparse else nn.Embedding
            self.puzzle_emb = table(max(cfg.num_puzzle_ids, 1), ndim)
            nn.init.zeros_(self.puzzle_emb.weight)
        self.pos = None
        if cfg.pos_encoding == "learned":
            self.pos = nn.Parameter(torch.randn(self.prefix_len + cfg.seq_len, d) / self.scale)

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.tokens(batch["inputs"]) * self.scale
        if self.prefix_len:
            prefix = self.puzzle_emb(batch["puzzle_ids"])
            prefix = F.pad(prefix, (0, self.prefix_len * x.shape[-1] - prefix.shape[-1]))
            prefix = prefix.view(x.shape[0], self.prefix_len, -1)
            x = torch.cat((prefix.to(x.dtype), x), dim=1)
        if self.pos is not None:
            x = x + self.pos * self.scale
        return x


def build_puzzle_model(cfg) -> RecursiveModel:
    """Build from a ModelConfig whose vocab_size, seq_len and num_puzzle_ids are already filled from the data."""
    embed = PuzzleEmbedding(cfg)
    core = ReasoningCore(cfg, cfg.seq_len + cfg.puzzle_emb_len)
    head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
    lecun_init_(core)
    lecun_init_(head)
    return RecursiveModel(cfg, embed, core, head, prefix_len=cfg.puzzle_emb_len)
