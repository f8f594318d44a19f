"""Deep supervision, the two modes of ``train.supervision`` (the trainer runs the steps; this says what they mean).

per_step (the paper's): every optimizer step is ONE supervision step of a carried batch. Each sample keeps its
(y, z) between steps; a sample that halted (its Q-head said stop, or it used n_sup_train steps) is replaced by a
fresh one from the next batch (``refill``); ``halts`` decides, with the paper's ACT exploration (a random minimum
number of steps for a share of the samples, drawn from (seed, step) for the global batch so N processes explore
as one does).

summed (seeds 000/002): each batch runs all n_sup_train steps and one backward of ``summed_objective``. The losses are weighted geometrically from 1 to ``supervision_weight_base`` (normalised to sum to 1), and an
improvement reward pays each step for lowering the loss of the step before it (``improvement_reward_scale``):

  bounded (default)  reward_k = L_{k-1}.detach() - L_k: a step is paid for beating the step before, but the
                     reward cannot be earned by making the earlier step worse, so every step's loss has a
                     non-negative weight and the objective is bounded below by zero.
  telescoping        the seeds' literal formula: sum_k (L_{k-1} - L_k) = L_first - L_last, with gradient. The
                     first step's net weight is w_1 - scale / (N - 1), negative for the seed-000 presets: the
                     objective is unbounded and the first step's loss diverges (docs/lm.md measures it).

"""

from __future__ import annotations

import sys

import torch

from trmlab.train.curriculum import act_exploration

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


def refill(carry: dict | None, fresh: dict) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """per_step: the batch to step now: carried samples that have not halted, fresh ones in the halted slots.
    Returns (batch, steps taken so far [B], reset [B]: True where a fresh sample starts from the initial state)."""
    if carry is None:
        reset = torch.ones(len(fresh["inputs"]), dtype=torch.bool, device=fresh["inputs"].device)
        return dict(fresh), torch.zeros_like(reset, dtype=torch.long), reset
    reset = carry["halted"]
    batch = {k: torch.where(reset.view(-1, *[1] * (v.dim() - 1)), v, carry[k]) for k, v in fresh.items()}
    return batch, torch.where(reset, 0, carry["steps"]), reset


def halts(steps: torch.Tensor, q_logit: torch.Tensor, step: int, rows: slice, m, t) -> torch.Tensor:
    """per_step: which samples stop after this supervision step. ``steps``: steps taken including this one;
    ``rows``: where these samples sit in the global batch (exploration is drawn for the global batch)."""
    halted = steps >= m.n_sup_train
    if m.halting == "act" and m.n_sup_train > 1:
        g = torch.Generator().manual_seed(t.seed * 7_919 + step)
        explore = torch.rand(t.batch_size, generator=g)[rows] < act_exploration(step, t)
        min_steps = torch.where(explore, torch.randint(2, m.n_sup_train + 1, (t.batch_size,), generator=g)[rows], 1)
        halted |= (q_logit > 0) & (steps >= min_steps.to(steps.device))
    return halted
