"""`trm solve` prints the model's answer and the right verdict: on held-out puzzles a briefly trained model does
solve (1-2 blanks), the printed grid is the solution and the exit code 0; on one it gets wrong, the grid it
printed is its own answer, said to be invalid, exit code 1."""

import numpy as np
import pytest
import torch

from trmlab.api import load
from trmlab.cli import main
from trmlab.data.puzzles import load_puzzle_dataset
from trmlab.data.sudoku import SudokuDataConfig, build_sudoku, decode_tokens, format_grid

# ~100 steps of a one-layer model learn to copy the givens and fill a lone blank from its row, column and box:
# a quarter to a half of these held-out puzzles come out exactly right (measured), and the rest do not
EASY = ["model.n_embd=32", "model.n_head=2", "model.n_layer=1", "model.n_loops=1", "model.T_recursion=1",
        "model.n_sup_train=1", "model.n_sup_inference=1", "train.batch_size=32", "train.warmup_steps=5",
        "train.lr=1e-2", "train.steps=100", "train.ema_decay=0", "train.eval_interval=0",
        "data.n_train=256", "data.n_test=32", "data.min_blanks=1", "data.max_blanks=2"]


@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("solve")
    assert main(["train", "sudoku", *EASY, "--runs-dir", str(root), "--name", "easy", "--data-root",
                 str(root / "data"), "--quiet"]) == 0
    test = load_puzzle_dataset(build_sudoku(SudokuDataConfig(n_train=256, n_test=32, min_blanks=1, max_blanks=2),
                                            root / "data"))[0]["test"]
    model, _ = load(root / "easy")
    answers, _ = model.predict({"inputs": torch.from_numpy(test.inputs.astype(np.int64)),
                                "puzzle_ids": torch.zeros(len(test.inputs), dtype=torch.long)})
    right = (answers.numpy() == test.labels).all(-1)
    assert 0 < right.sum() < len(right), right.mean()  # some solved and some not, for both checks below
    return root / "easy", test, answers.numpy(), right


def puzzle_text(tokens) -> str:
    return "".join(str(d) for d in decode_tokens(tokens))


def solve(capsys, run, tokens):
    rc = main(["solve", str(run), puzzle_text(tokens)])
    out = capsys.readouterr().out.splitlines()
    return rc, "\n".join(out[:11]), out[11]   # the 9 rows and 2 separators, then the verdict


def test_a_puzzle_the_model_solves_prints_its_solution_and_exits_0(capsys, sudoku_run):
    run, test, _, right = sudoku_run
    i = int(np.flatnonzero(right)[0])
    rc, grid, verdict = solve(capsys, run, test.inputs[i])
    assert grid == format_grid(decode_tokens(test.labels[i]))
    assert rc == 0 and verdict.startswith("valid: yes") and "supervision steps used: 1 of 1" in verdict


def test_a_puzzle_the_model_gets_wrong_prints_its_answer_and_exits_1(capsys, sudoku_run):
    run, test, answers, right = sudoku_run
    i = int(np.flatnonzero(~right)[0])
    rc, grid, verdict = solve(capsys, run, test.inputs[i])
    assert grid == format_grid(decode_tokens(answers[i])) != format_grid(decode_tokens(test.labels[i]))
    assert rc == 1 and verdict.startswith("valid: no")
