"""The losses of deep supervision, checked against their definitions: stable-max cross-entropy and the halting
(Q-head) loss as the puzzle task adds it to the token loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from trmlab.config import load_config
from trmlab.recursion import Carry, StepOutput
from trmlab.tasks import get_task
from trmlab.train.losses import log_stablemax, prediction_stats, token_losses


def stablemax_by_hand(row: list[float]) -> list[float]:
    """The paper's s(x) = 1/(1-x) below zero, x+1 above, normalised over the vocabulary."""
    s = [1 / (1 - x) if x < 0 else x + 1 for x in row]
    return [v / sum(s) for v in s]


def test_stablemax_is_a_normalised_distribution_equal_to_its_definition():
    logits = torch.tensor([[[-3.0, 0.0, 2.0, 0.5]], [[4.0, -1.0, -1.0, 1.0]]])
    p = log_stablemax(logits).exp()
    torch.testing.assert_close(p.sum(-1), torch.ones(2, 1))
    for b in range(2):
        torch.testing.assert_close(p[b, 0], torch.tensor(stablemax_by_hand(logits[b, 0].tolist())))


def test_stablemax_token_loss_is_the_negative_log_probability_of_the_label():
    logits = torch.tensor([[[-3.0, 0.0, 2.0, 0.5], [1.0, 1.0, -2.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    labels = torch.tensor([[2, 1, 0]])  # label 0 is ignored: the mean runs over the two labelled tokens
    expected = -(math.log(stablemax_by_hand(logits[0, 0].tolist())[2])
                 + math.log(stablemax_by_hand(logits[0, 1].tolist())[1])) / 2
    assert token_losses(logits, labels, "stablemax").item() == pytest.approx(expected, rel=1e-5)
    softmax = F.cross_entropy(logits[0, :2], labels[0, :2]).item()
    assert token_losses(logits, labels, "softmax").item() == pytest.approx(softmax, rel=1e-5)


def puzzle_step(q_logit, right: list[bool]):
    """A fake step of 2 Sudoku rows: row i predicts its labels exactly when right[i]."""
    labels = torch.full((2, 81), 3)
    logits = torch.zeros(2, 81, 11)
    for i, ok in enumerate(right):
        logits[i, :, 3 if ok else 4] = 5.0
    return StepOutput(logits, q_logit, Carry(None, None)), {"labels": labels}


def test_the_halting_loss_is_weighted_bce_of_q_against_exact_correctness():
    cfg = load_config("sudoku", ["train.halt_loss_weight=0.5", "train.loss=softmax"])
    task = get_task("sudoku")
    q = torch.tensor([2.0, -1.0], requires_grad=True)
    out, batch = puzzle_step(q, [True, False])
    loss, correct, metrics = task.losses(out, batch, cfg)
    assert correct.tolist() == [True, False]
    bce = F.binary_cross_entropy_with_logits(q.detach(), torch.tensor([1.0, 0.0]), reduction="none")
    torch.testing.assert_close(loss.detach() - metrics["token_loss"], 0.5 * bce)
    loss.sum().backward()  # the Q-head is trained by it: sigmoid(q) - target, times the weight
    torch.testing.assert_close(q.grad, 0.5 * (torch.sigmoid(q.detach()) - torch.tensor([1.0, 0.0])))

    no_act = load_config("sudoku", ["model.halting=none", "train.loss=softmax"])
    loss, _, metrics = task.losses(*puzzle_step(q.detach(), [True, False]), no_act)
    torch.testing.assert_close(loss, metrics["token_loss"])  # without ACT there is no halting term


def test_softmax_token_loss_is_the_per_sample_mean_cross_entropy_of_the_labelled_tokens():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 7, 11), torch.randint(1, 11, (3, 7))
    labels[1, :4] = 0  # ignored
    got = token_losses(logits, labels, "softmax", ignore_index=0)
    for b in range(3):
        keep = labels[b] != 0
        want = F.cross_entropy(logits[b][keep], labels[b][keep])
        assert got[b].item() == pytest.approx(want.item(), rel=1e-6)


def test_prediction_stats_count_a_hit_where_the_label_is_the_first_maximum():
    logits = torch.tensor([[[0.0, 2.0, 2.0], [5.0, 1.0, 1.0], [float("nan"), 0.0, 1.0], [0.0, 0.0, 3.0]]])
    labels = torch.tensor([[2, 0, 2, 2]])  # a tie lost to an earlier index, a hit, NaN wins, a hit
    n_hit, n_valid, exact = prediction_stats(logits, labels, ignore_index=-1)
    assert (n_hit.item(), n_valid.item(), exact.item()) == (2, 4, False)
    n_hit, n_valid, exact = prediction_stats(logits[:, [1, 3]], labels[:, [1, 3]], ignore_index=-1)
    assert (n_hit.item(), exact.item()) == (2, True)
