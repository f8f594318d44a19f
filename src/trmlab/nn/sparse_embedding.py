"""The puzzle-identifier table as the paper trains it: a buffer updated by sign-SGD on the rows a batch used.

ARC gives every (task, augmentation) its own id: ~730k ids x 512 numbers for ARC-AGI-1. As an ordinary parameter
under Adam the table would carry a gradient, two moments and an EMA copy (~6 copies, 12.5 KB per id measured:
18.6 GB for ARC-AGI-2), and every step would decay and move every row although a batch touches at most
batch-size of them. The official code instead keeps the table out of ``parameters()`` and updates only the rows in
the batch: sum the gradients per id over the whole (all-gathered) batch, then ``w <- w (1 - lr wd) - lr sign(g)``.
Training and evaluation read the table itself; the EMA copy shares it rather than averaging it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


class SparseEmbedding(nn.Module):
    """Embedding rows from a zero-initialised buffer ``weight``; in training each lookup is a fresh leaf tensor whose
    gradient :class:`SignSGDRows` applies to the looked-up rows (all lookups since its last step, so several
    supervision forwards or gradient-accumulation micro-batches before one optimizer step all count)."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.register_buffer("weight", torch.zeros(num_embeddings, embedding_dim))
        self.lookups: list[tuple[torch.Tensor, torch.Tensor]] = []  # (ids, rows) awaiting the optimizer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weight[ids]
        if self.training and torch.is_grad_enabled():
            rows = rows.detach().requires_grad_()
            self.lookups.append((ids.reshape(-1), rows))
        return rows

    def __deepcopy__(self, memo):
        """A deep copy (the EMA twin) shares the table: the paper evaluates with the trained rows, not an average,
        and a second copy of a 1.5 GB table would buy nothing."""
        twin = SparseEmbedding.__new__(SparseEmbedding)
        nn.Module.__init__(twin)
        twin.register_buffer("weight", self.weight)
        twin.lookups = []
        twin.train(self.training)
        memo[id(self)] = twin
        return twin


def _all_gather(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


class SignSGDRows(torch.optim.Optimizer):
    """Sign-SGD with decoupled weight decay on the rows of :class:`SparseEmbedding` tables that were looked up.

    Stateless, so checkpoints carry nothing for it; ``lr`` follows the trainer's schedule like any param group.
    With several processes the looked-up ids and their gradients are all-gathered first (every rank has the same
    micro-batch size), so every rank applies the same update to its full copy of the table.
    """

    def __init__(self, tables: list[SparseEmbedding], lr: float, weight_decay: float):
        self.tables = tables
        group = {"params": [t.weight for t in tables], "name": "puzzle_emb", "initial_lr": lr}
        super().__init__([group], dict(lr=lr, weight_decay=weight_decay))

    def zero_grad(self, set_to_none: bool = True):
        for t in self.tables:  # lookups of a skipped step (non-finite loss) must not leak into the next one
            t.lookups.clear()

    @torch.no_grad()
    def step(self, closure=None):
        lr, wd = self.param_groups[0]["lr"], self.param_groups[0]["weight_decay"]
        for table in self.tables:
            used = [(ids, rows.grad) for ids, rows in table.lookups if rows.grad is not None]
            table.lookups.clear()
            if not used:
                continue
            ids = torch.cat([i for i, _ in used])
            grads = torch.cat([g.reshape(len(i), -1) for i, g in used]).to(table.weight.dtype)
            if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
                ids, grads = _all_gather(ids), _all_gather(grads)
            rows, where = torch.unique(ids, return_inverse=True)
            summed = torch.zeros(len(rows), grads.shape[1], dtype=grads.dtype, device=grads.device)
            summed.index_add_(0, where, grads)
            w = table.weight
            w[rows] = w[rows] * (1 - lr * wd) - lr * torch.sign(summed)
