"""Maze-Hard CSV files as the public dataset lays them out, and `trm eval <run> --puzzles` on a maze CSV."""

import csv
import json
from pathlib import Path

import pytest

from trmlab.cli import main
from trmlab.data.maze import MazeDataConfig, build_maze, check_path, load_csv, text_to_grid, write_csv
from trmlab.errors import TrmError

FIXTURES = Path(__file__).parent / "fixtures"
TINY = ["model.n_embd=32", "model.n_head=2", "model.n_layer=1", "model.n_loops=2", "model.T_recursion=2",
        "model.n_sup_train=2", "model.n_sup_inference=2", "train.batch_size=8", "train.warmup_steps=2",
        "data.size=7", "data.min_path_len=4", "data.n_train=32", "data.n_test=8", "train.log_interval=1"]


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from conftest import train_tiny_run
    return train_tiny_run(tmp_path_factory, "maze", TINY + ["train.steps=3"])


def test_the_maze_hard_fixture_reads_as_written():
    with open(FIXTURES / "maze-hard.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["source", "question", "answer", "rating"]
    inputs, labels = load_csv(FIXTURES / "maze-hard.csv")
    assert inputs.shape == (3, 30, 30)
    for (_, q, a, rating), inp, lab in zip(rows[1:], inputs, labels):
        assert (inp == text_to_grid(q)).all() and (lab == text_to_grid(a)).all()
        assert check_path(inp, lab)["valid"] and int(rating) >= 110  # generated as Maze-Hard: paths of 110+ steps


def test_a_maze_csv_too_small_for_its_splits_says_so(tmp_path):
    with pytest.raises(TrmError, match=r"maze-hard\.csv: only 3 mazes, too few for data.n_train=3 training and "
                                       r"data.n_test=1 test mazes"):
        build_maze(MazeDataConfig(source=str(FIXTURES / "maze-hard.csv"), n_train=3, n_test=1), tmp_path)


def test_eval_puzzles_on_the_runs_own_test_mazes_gives_its_held_out_scores(capsys, trained):
    path = write_csv(trained.tmp / "mazes.csv", trained.test.inputs.reshape(-1, 7, 7),
                     trained.test.labels.reshape(-1, 7, 7))
    rc, out, _ = run(capsys, "eval", trained.run, "--puzzles", path, "--json")
    m, held_out = json.loads(out), trained.summary["eval"]
    assert rc == 0 and m["eval_samples"] == 8 and m["skipped"] == 0
    for key in ("exact_acc_per_step", "cell_acc_per_step", "path_valid", "path_connects"):
        assert m[key] == held_out[key], key
    rc, out, _ = run(capsys, "eval", trained.run, "--puzzles", path)
    assert rc == 0 and f"on {path} (8 puzzles)" in out and "path_valid" in out


@pytest.mark.parametrize("puzzles, message", [
    (FIXTURES / "maze-hard.csv", r"maze-hard\.csv: the mazes are 30x30 but this run solves 7x7 mazes"),
    (FIXTURES / "sudoku-puzzles.txt", r"sudoku-puzzles\.txt: holds sudoku puzzles, but the run is a maze run"),
    (FIXTURES / "arc-agi" / "training", r"training: holds arc puzzles, but the run is a maze run"),
])
def test_eval_puzzles_refuses_files_the_run_cannot_solve(capsys, trained, puzzles, message):
    rc, out, err = run(capsys, "eval", trained.run, "--puzzles", puzzles)
    assert rc == 2 and err.count("\n") == 1
    import re
    assert re.search(message, err), err
