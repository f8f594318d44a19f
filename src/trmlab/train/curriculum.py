"""Training schedules of the recursion itself (seed 004's TODOs): curriculum recursion and annealed ACT exploration.

Curriculum recursion starts shallow (``train.curriculum_n_loops``, ``train.curriculum_T_recursion``) and reaches
the model's full n_loops / T_recursion after ``train.curriculum_steps`` (0 = a fifth of training), either
linearly (``linear``) or all at once (``step``). Evaluation always uses the full depth.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager


def ramp_steps(t) -> int:
    return t.curriculum_steps or max(1, t.steps // 5)


def recursion_depth(step: int, t, m) -> tuple[int, int]:
    """(n_loops, T_recursion) to train with at ``step`` under the curriculum of TrainConfig ``t``."""
    if t.curriculum == "none" or step >= ramp_steps(t):
        return m.n_loops, m.T_recursion
    start = (min(t.curriculum_n_loops, m.n_loops), min(t.curriculum_T_recursion, m.T_recursion))
    if t.curriculum == "step":
        return start
    frac = step / ramp_steps(t)
    return tuple(max(1, round(s + frac * (full - s))) for s, full in zip(start, (m.n_loops, m.T_recursion)))


@contextmanager
def curriculum_depth(model, step: int, t):
    """Train ``model`` at the curriculum's depth for one step.

    RecursiveModel reads n_loops / T_recursion from its ``cfg``; a shallower copy is swapped in for the step and
    the original put back, so the run's config, its checkpoints and the EMA copy keep the full depth.
    """
    m = model.cfg
    n_loops, T = recursion_depth(step, t, m)
    if (n_loops, T) == (m.n_loops, m.T_recursion):
        yield n_loops, T
        return
    model.cfg = dataclasses.replace(m, n_loops=n_loops, T_recursion=T)
    try:
        yield n_loops, T
    finally:
        model.cfg = m


def act_exploration(step: int, t) -> float:
    """Share of samples forced to explore more supervision steps; annealed when act_exploration_final >= 0."""
    if t.act_exploration_final < 0:
        return t.act_exploration
    frac = min(1.0, step / max(1, t.steps))
    return t.act_exploration + frac * (t.act_exploration_final - t.act_exploration)
