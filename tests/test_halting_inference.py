"""Halting at inference (eval/halting.py): the rules, their offline replay, calibration and its file in the run."""

import json

import numpy as np
import pytest
import torch

from trmlab.api import build_model, config
from trmlab.data.puzzles import PuzzleSplit
from trmlab.data.sudoku import generate_puzzle
from trmlab.errors import TrmError
from trmlab.eval.halting import (HALTING_FILE, HaltRule, calibrate, choose, curve, fixed_rule, fingerprint,
                                 load_calibration, replay, resolve_rule, rule_for_run)
from trmlab.eval.puzzle import evaluate_puzzles
from trmlab.eval.views import held_out_views


def recorded():
    """3 puzzles x 4 steps of 2-cell answers. Label [1, 1].
    puzzle 0: right from step 2 on, q confident (0.9) from step 1 -> q halts at a wrong answer, stable waits;
    puzzle 1: right only at step 4, q weak (0.6) from step 2 -> q halts wrong, threshold 0.8 runs to the end;
    puzzle 2: right from step 1, q 0.95 from step 1."""
    preds = torch.tensor([[[2, 1], [1, 1], [1, 1], [1, 1]],
                          [[2, 2], [2, 1], [2, 1], [1, 1]],
                          [[1, 1], [1, 1], [1, 1], [1, 1]]])
    conf = torch.tensor([[0.9, 0.9, 0.9, 0.9], [0.3, 0.6, 0.6, 0.6], [0.95, 0.95, 0.95, 0.95]])
    return preds, torch.logit(conf), torch.ones(3, 2, dtype=torch.long)


def test_each_rule_halts_where_it_should():
    preds, q, labels = recorded()
    steps = {name: replay(preds, q, fixed_rule(name))[1].tolist() for name in ("all", "q", "stable", "unchanged")}
    assert steps["all"] == [4, 4, 4]
    assert steps["q"] == [1, 2, 1]          # the paper's rule: first q > 0
    assert steps["stable"] == [3, 3, 2]     # q > 0 and the answer equals the previous step's
    assert steps["unchanged"] == [3, 3, 2]  # same answers here, q ignored
    assert replay(preds, q, HaltRule("threshold", 0.8))[1].tolist() == [1, 4, 1]
    rows = {r["name"] + str(r["threshold"]): r for r in curve(preds, q, labels, [
        fixed_rule("all"), fixed_rule("q"), fixed_rule("stable"), HaltRule("threshold", 0.8)])}
    assert rows["allNone"]["exact_acc"] == 1.0
    assert rows["q0.5"]["exact_acc"] == pytest.approx(1 / 3, abs=1e-4)   # halted too early on puzzles 0 and 1
    assert rows["stable0.5"]["exact_acc"] == pytest.approx(2 / 3, abs=1e-4)
    assert rows["threshold0.8"]["exact_acc"] == pytest.approx(2 / 3, abs=1e-4)


def test_q_rule_is_exactly_q_above_zero_even_for_tiny_logits():
    q = torch.tensor([1e-9, -1e-9, 0.0, 3.0])
    pred = torch.zeros(4, 2, dtype=torch.long)
    assert fixed_rule("q")(q, pred, None).tolist() == [True, False, False, True]
    assert not fixed_rule("stable")(q, pred, None).any()  # nothing to compare with at the first step


def test_choose_takes_the_cheapest_rule_within_tolerance():
    rows = [{"name": "all", "threshold": None, "stable": False, "exact_acc": 0.90, "mean_steps": 8.0},
            {"name": "q", "threshold": 0.5, "stable": False, "exact_acc": 0.70, "mean_steps": 2.0},
            {"name": "threshold", "threshold": 0.9, "stable": False, "exact_acc": 0.897, "mean_steps": 4.0},
            {"name": "threshold", "threshold": 0.95, "stable": False, "exact_acc": 0.90, "mean_steps": 5.0}]
    assert choose(rows, 0.005)["threshold"] == 0.9
    assert choose(rows, 0.0)["threshold"] == 0.95
    assert choose(rows, 0.5)["name"] == "q"


def tiny_sudoku(n_train=24):
    torch.manual_seed(0)
    cfg = config("sudoku", "model.n_embd=32", "model.n_head=2", "model.n_layer=1", "model.n_sup_inference=3")
    model = build_model(cfg).eval()
    rng = np.random.default_rng(0)
    puzzles = [generate_puzzle(rng, 30)[:2] for _ in range(n_train)]
    train = PuzzleSplit(inputs=np.stack([p + 1 for p, _ in puzzles]).astype(np.uint8),
                        labels=np.stack([s + 1 for _, s in puzzles]).astype(np.uint8),
                        puzzle_ids=np.zeros(n_train, np.int32), group_ids=np.arange(n_train, dtype=np.int32))
    return model, cfg, train


def test_held_out_views_are_fresh_views_of_training_puzzles():
    _, _, train = tiny_sudoku()
    inputs, labels, about = held_out_views("sudoku", train, 40)
    assert inputs.shape == (40, 81) and "training Sudoku puzzles" in about
    stored = {row.tobytes() for row in train.inputs.astype(np.int64)}
    assert not any(row.tobytes() in stored for row in inputs)  # transformed, never a stored row
    givens = sorted((train.inputs > 1).sum(1).tolist())
    assert set((inputs > 1).sum(1).tolist()) <= set(givens)  # the same puzzles, seen differently
    with pytest.raises(TrmError, match="halting calibration"):
        held_out_views("arc", train, 4)


def test_calibration_is_stored_in_the_run_used_while_current_and_redone_when_the_weights_change(tmp_path):
    model, cfg, train = tiny_sudoku()
    notes = []
    rule = rule_for_run("auto", model, "sudoku", train, 3, tmp_path, note=notes.append, n_views=50)
    saved = json.loads((tmp_path / HALTING_FILE).read_text())
    assert len(notes) == 1 and "stored in" in notes[0]
    assert saved["weights"] == fingerprint(model) and saved["n_sup_inference"] == 3
    assert rule == resolve_rule("auto", saved)
    names = {r["name"] for r in saved["curve"]}
    assert {"all", "q", "stable", "unchanged", "threshold", "threshold+stable"} <= names
    rule_for_run("auto", model, "sudoku", train, 3, tmp_path, note=notes.append, n_views=50)
    assert len(notes) == 1  # current: read back, not recalibrated
    with torch.no_grad():
        model.q_head.bias.add_(1.0)  # other weights: the stored calibration no longer belongs to them
    rule_for_run("auto", model, "sudoku", train, 3, tmp_path, note=notes.append, n_views=50)
    assert len(notes) == 2 and json.loads((tmp_path / HALTING_FILE).read_text())["weights"] == fingerprint(model)


def test_calibrated_rule_keeps_accuracy_on_its_calibration_set():
    model, cfg, train = tiny_sudoku()
    cal = calibrate(model, "sudoku", train, 3, "cpu", n_views=60, tolerance=0.0)
    all_steps = next(r for r in cal["curve"] if r["name"] == "all")
    chosen = next(r for r in cal["curve"] if r["name"] == cal["rule"]["name"]
                  and r["threshold"] == cal["rule"]["threshold"])
    assert chosen["exact_acc"] >= all_steps["exact_acc"]
    assert chosen["mean_steps"] == min(r["mean_steps"] for r in cal["curve"] if r["exact_acc"] >= all_steps["exact_acc"])


def test_the_live_evaluation_halts_as_the_offline_replay_does():
    model, cfg, train = tiny_sudoku()
    with torch.no_grad():
        model.q_head.weight.normal_(0, 1.0, generator=torch.Generator().manual_seed(3))
        batch = {"inputs": torch.from_numpy(train.inputs.astype(np.int64)), "puzzle_ids": torch.zeros(24).long()}
        model.q_head.bias.fill_(-model.step(batch).q_logit.median().item())
    from trmlab.eval.halting import record_steps
    preds, q, _ = record_steps(model, train.inputs, train.labels, 3, "cpu")
    for rule in (fixed_rule("q"), fixed_rule("stable"), HaltRule("threshold", 0.6)):
        result = evaluate_puzzles(model, train, cfg, "cpu", halt_rule=rule)
        answer, steps = replay(preds, q, rule)
        assert np.array_equal(result.halted_predictions, answer.numpy())
        assert result.mean_steps_halted == pytest.approx(steps.float().mean().item())
        assert result.halt_rule == rule.label()


def test_a_broken_calibration_file_is_a_one_line_error(tmp_path):
    (tmp_path / HALTING_FILE).write_text("{not json")
    with pytest.raises(TrmError, match="not a halting calibration"):
        load_calibration(tmp_path)
    assert load_calibration(tmp_path / "nowhere") is None
    with pytest.raises(TrmError, match="no halting calibration"):
        resolve_rule("threshold", None)
    assert resolve_rule("auto", None) == fixed_rule("stable")


def test_the_split_curve_marks_the_calibrated_rule_and_plots(tmp_path):
    from trmlab.eval.halting import plot_curve, split_curve
    model, cfg, train = tiny_sudoku()
    odd = HaltRule("threshold", 0.4321)  # off the grid: added as its own row
    rows = split_curve(model, train, 3, calibrated=odd)
    assert [r for r in rows if r.get("calibrated")] == [r for r in rows if r["threshold"] == 0.4321]
    assert next(r for r in rows if r["name"] == "all")["mean_steps"] == 3.0
    png = plot_curve(rows, tmp_path / "curve.png", title="tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
