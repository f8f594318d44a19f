"""ACT halting: the answer kept at inference is the one of the halting step, and the training carry of samples
that are in the middle of their puzzle survives a checkpoint and resume."""

import torch
from safetensors.torch import load_file

from trmlab.config import load_config
from trmlab.recursion import HaltTracker
from trmlab.train.checkpoint import latest_checkpoint
from trmlab.train.trainer import train


def test_halt_tracker_keeps_the_answer_of_the_step_where_q_first_says_halt():
    preds = [torch.tensor([[1, 1], [1, 1], [1, 1]]), torch.tensor([[2, 2], [2, 2], [2, 2]]),
             torch.tensor([[3, 3], [3, 3], [3, 3]])]
    # sample 0 halts at step 1, sample 1 at step 2 (q at step 3 no longer matters), sample 2 never
    qs = [torch.tensor([0.5, -1.0, -1.0]), torch.tensor([-3.0, 2.0, -1.0]), torch.tensor([4.0, -4.0, -1.0])]
    tracker = HaltTracker(3)
    for p, q in zip(preds, qs):
        tracker.update(p, q)
    assert tracker.answer.tolist() == [[1, 1], [2, 2], [3, 3]]
    assert tracker.steps.tolist() == [1, 2, 3]

    no_halt = HaltTracker(3)
    for p in preds:
        no_halt.update(p, None)
    assert no_halt.answer.tolist() == preds[-1].tolist() and no_halt.steps.tolist() == [3, 3, 3]


def test_resume_with_samples_in_the_middle_of_their_puzzle_equals_the_uninterrupted_run(tmp_path, data_root,
                                                                                       tiny_overrides):
    """TINY trains with n_sup_train=3: a checkpoint at step 4 holds samples at their 1st of 3 steps, whose (y, z),
    inputs and step counts must come back, or the resumed run trains on other states."""
    full = load_config("sudoku", tiny_overrides + ["train.steps=6"])
    train(full, tmp_path / "full", data_root=data_root, quiet=True)
    train(load_config("sudoku", tiny_overrides + ["train.steps=4"]), tmp_path / "split", data_root=data_root,
          quiet=True)
    carry = load_file(latest_checkpoint(tmp_path / "split") / "state.safetensors")
    assert not carry["carry.halted"].all() and (carry["carry.steps"] < 3).all()  # mid-puzzle at the checkpoint
    train(full, tmp_path / "split", data_root=data_root, quiet=True, resume=True)
    a = load_file(latest_checkpoint(tmp_path / "full") / "model.safetensors")
    b = load_file(latest_checkpoint(tmp_path / "split") / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
