"""Deep supervision's objective in the summed mode (seeds 000/002): one loss from all n_sup_train steps.

The losses are weighted geometrically from 1 to ``supervision_weight_base`` (normalised to sum to 1), and an
improvement reward pays each step for lowering the loss of the step before it (``improvement_reward_scale``):

  bounded (default)  reward_k = L_{k-1}.detach() - L_k: a step is paid for beating the step before, but the
                     reward cannot be earned by making the earlier step worse, so every step's loss has a
                     non-negative weight and the objective is bounded below by zero.
  telescoping        the seeds' literal formula: sum_k (L_{k-1} - L_k) = L_first - L_last, with gradient. The
                     first step's net weight is w_1 - scale / (N - 1), negative for the seed-000 presets: the
                     objective is unbounded and the first step's loss diverges (docs/lm.md measures it).

The per_step mode (the paper's) needs no objective here: each optimizer step is one supervision step, its loss the
task's loss of that step (train/trainer.py carries the batch between steps).
"""

from __future__ import annotations

import sys

import torch

REWARDS = ("bounded", "telescoping")
_warned = set()


def supervision_weights(n: int, base: float) -> torch.Tensor:
    """Weights of the summed mode: geometric from 1 to ``base`` over the n steps, normalised to sum to 1."""
    w = torch.tensor([base ** (k / max(n - 1, 1)) for k in range(n)], dtype=torch.float32)
    return w / w.sum()


def improvement_reward(losses: torch.Tensor, kind: str = "bounded") -> torch.Tensor:
    """Mean improvement of each step over the one before it (a scalar to subtract from the loss)."""
    if len(losses) < 2:
        return losses.new_zeros(())
    before = losses[:-1].detach() if kind == "bounded" else losses[:-1]
    return (before - losses[1:]).mean()


def summed_objective(losses: torch.Tensor, base: float, reward_scale: float, reward: str = "bounded"):
    """The one backward's loss from the n per-step losses ``losses`` [n]."""
    loss = (supervision_weights(len(losses), base).to(losses) * losses).sum()
    if reward_scale:
        if reward == "telescoping" and reward not in _warned:
            _warned.add(reward)
            print("trm: warning: train.improvement_reward=telescoping is the seeds' literal reward: it is earned by "
                  "making the first step worse (unbounded objective); 'bounded' is the default", file=sys.stderr)
        loss = loss - reward_scale * improvement_reward(losses, reward)
    return loss
