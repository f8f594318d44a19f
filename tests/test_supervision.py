"""The summed mode's objective: weights, and an improvement reward that cannot be earned by a worse earlier step."""

import pytest
import torch

from trmlab.config import load_config
from trmlab.errors import TrmError
from trmlab.train.supervision import improvement_reward, summed_objective

SEED_000 = {"moderate": (3.0, 0.5), "aggressive": (5.0, 1.0), "extreme": (10.0, 2.0)}


def _grads(losses, base, scale, reward):
    leaf = torch.tensor(losses, requires_grad=True)
    summed_objective(leaf, base, scale, reward).backward()
    return leaf.grad


@pytest.mark.parametrize("preset", sorted(SEED_000))
def test_bounded_reward_never_pushes_a_loss_up(preset):
    base, scale = SEED_000[preset]
    for losses in ([5.0, 4.0, 3.0, 2.5], [1.0, 3.0, 2.0, 4.0], [2.0, 2.0, 2.0, 2.0]):
        g = _grads(losses, base, scale, "bounded")
        assert (g > 0).all(), (preset, losses, g)  # gradient descent lowers every step's loss


def test_the_seeds_literal_reward_pays_for_a_worse_first_step():
    g = _grads([5.0, 4.0, 3.0, 2.5], *SEED_000["extreme"], "telescoping")
    assert g[0] < 0  # descent raises the first step's loss: the objective is unbounded below
    assert (g[1:-1] > 0).all()


def test_the_reward_is_the_mean_improvement_over_the_step_before():
    losses = torch.tensor([3.0, 2.0, 1.5, 1.75])
    expected = ((3.0 - 2.0) + (2.0 - 1.5) + (1.5 - 1.75)) / 3
    for kind in ("bounded", "telescoping"):
        assert improvement_reward(losses, kind).item() == pytest.approx(expected)
    assert improvement_reward(torch.tensor([2.0])).item() == 0.0


def test_bounded_objective_value_and_gradient():
    losses = torch.tensor([4.0, 2.0], requires_grad=True)
    loss = summed_objective(losses, 1.0, 1.0, "bounded")
    assert loss.item() == pytest.approx(0.5 * 4 + 0.5 * 2 - (4 - 2))
    loss.backward()
    assert torch.allclose(losses.grad, torch.tensor([0.5, 1.5]))


def test_seed_000_presets_default_to_bounded_and_accept_the_literal_form():
    for preset in SEED_000:
        assert load_config(preset).train.improvement_reward == "bounded"
    assert load_config("extreme", ["train.improvement_reward=telescoping"]).train.improvement_reward == "telescoping"
    with pytest.raises(TrmError, match="improvement_reward"):
        load_config("extreme", ["train.improvement_reward=clipped"])


def test_telescoping_warns_once(capsys):
    from trmlab.train import supervision
    supervision._warned.clear()
    for _ in range(3):
        summed_objective(torch.tensor([2.0, 1.0]), 1.0, 0.5, "telescoping")
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "telescoping" in err


def _mt(halting="act", n_sup=3, explore=0.0, batch=4):
    from types import SimpleNamespace
    return (SimpleNamespace(halting=halting, n_sup_train=n_sup),
            SimpleNamespace(seed=0, batch_size=batch, act_exploration=explore, act_exploration_final=-1.0, steps=10))


def test_per_step_halts_when_q_says_so_or_at_the_step_limit():
    from trmlab.train.supervision import halts
    m, t = _mt()
    steps, q = torch.tensor([1, 1, 3, 2]), torch.tensor([2.0, -1.0, -1.0, 0.5])
    assert halts(steps, q, 0, slice(0, 4), m, t).tolist() == [True, False, True, True]
    m_none, _ = _mt(halting="none")
    assert halts(steps, q, 0, slice(0, 4), m_none, t).tolist() == [False, False, True, False]
    _, t_explore = _mt(explore=1.0)  # every sample must first run a random minimum of 2..n_sup steps
    assert not halts(torch.ones(4, dtype=torch.long), torch.full((4,), 5.0), 0, slice(0, 4), m, t_explore).any()


def test_per_step_refills_only_the_halted_slots():
    from trmlab.train.supervision import refill
    fresh = {"inputs": torch.tensor([[1], [2]]), "labels": torch.tensor([[1], [2]])}
    batch, steps, reset = refill(None, fresh)
    assert reset.all() and steps.tolist() == [0, 0] and batch["inputs"].tolist() == [[1], [2]]
    carry = {"inputs": torch.tensor([[7], [8]]), "labels": torch.tensor([[7], [8]]),
             "steps": torch.tensor([2, 1]), "halted": torch.tensor([True, False])}
    batch, steps, reset = refill(carry, fresh)
    assert batch["inputs"].tolist() == [[1], [8]] and steps.tolist() == [0, 1] and reset.tolist() == [True, False]
