"""`trm` as a user runs it: one-line errors with exit code 2, train -> eval -> solve, and the demo."""

import json

import pytest

from trmlab.cli import main
from trmlab.data.puzzles import load_puzzle_dataset
from trmlab.data.sudoku import SudokuDataConfig, build_sudoku, decode_tokens


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("argv, message", [
    (["train", "sudoku", "model.n_lops=3"], "did you mean model.n_loops"),
    (["train", "sudoku", "train.steps=many"], "expected int"),
    (["train", "no-such-preset"], "unknown preset"),
    (["eval", "/nonexistent/run"], "no checkpoint found"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, argv, message):
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_train_eval_solve_round_trip(capsys, tmp_path, tiny_overrides):
    data = str(tmp_path / "data")
    args = ["train", "sudoku", *tiny_overrides, "train.steps=2", "--runs-dir", str(tmp_path / "runs"),
            "--data-root", data, "--name", "t", "--quiet"]
    rc, out, _ = run(capsys, *args)
    assert rc == 0 and "exact acc" in out
    rc, _, err = run(capsys, *args)  # same name again: refused, nothing overwritten
    assert rc == 2 and "already exists" in err

    rc, out, _ = run(capsys, "eval", str(tmp_path / "runs" / "t"), "--data-root", data, "--json")
    assert rc == 0 and '"exact_acc"' in out
    rc, out, _ = run(capsys, "eval", str(tmp_path / "runs" / "t"), "--data-root", data, "--threads", "1")
    header = next(ln for ln in out.splitlines() if ln.strip().startswith("sup step"))
    assert rc == 0 and all(c in header for c in ("exact acc", "cell acc", "blank acc"))  # each *_per_step a column
    assert sum(ln.split()[0].isdigit() for ln in out.splitlines()) == 3  # one row per supervision step (TINY: 3)

    splits, _ = load_puzzle_dataset(build_sudoku(SudokuDataConfig(n_train=64, n_test=16, min_blanks=20,
                                                                  max_blanks=25), data))
    split = splits["test"]
    puzzle = "".join(str(d) for d in decode_tokens(split.inputs[0]))
    rc, out, _ = run(capsys, "solve", str(tmp_path / "runs" / "t"), puzzle)
    # a 2-step model may well be wrong: its verdict and exit code agree (tests/test_solve.py checks the answers)
    assert rc == (0 if "valid: yes" in out else 1) and "supervision steps used" in out

    rc, _, err = run(capsys, "solve", str(tmp_path / "runs" / "t"), "12x" + "0" * 78)
    assert rc == 2 and "position" in err


def test_paper_preset_builds_and_trains_a_few_steps_on_cpu(capsys, tmp_path):
    rc, out, _ = run(capsys, "info", "sudoku-paper")
    assert rc == 0 and "effective depth 672" in out
    rc, out, _ = run(capsys, "train", "sudoku-paper", "data.source=generate", "data.n_train=16", "data.n_test=4",
                     "data.num_aug=1", "train.batch_size=4", "train.steps=2", "train.eval_interval=0",
                     "train.ckpt_interval=0", "model.n_sup_inference=2", "--runs-dir", str(tmp_path),
                     "--data-root", str(tmp_path / "data"), "--quiet")
    assert rc == 0


@pytest.mark.parametrize("how", [[], ["--sequential"]])
def test_demo_runs_end_to_end(capsys, tmp_path, how):
    rc, out, _ = run(capsys, "demo", *how, "--minutes", "0.02", "--runs-dir", str(tmp_path), "--data-root",
                     str(tmp_path / "data"), "--quiet", "data.n_train=32", "data.n_test=8", "model.n_embd=32",
                     "model.n_head=2", "train.batch_size=8")
    assert rc == 0
    assert "no recursion" in out and "with ACT halting" in out
    assert len(list(tmp_path.glob("*/report.md"))) == 1


def test_overrides_may_follow_options():
    from trmlab.cli import parse
    args = parse(["train", "sudoku", "model.n_loops=1", "--name", "x", "train.steps=3", "--quiet"])
    assert args.overrides == ["model.n_loops=1", "train.steps=3"] and args.name == "x"
    with pytest.raises(SystemExit):  # a stray word that is not key=value is still an error
        parse(["train", "sudoku", "--name", "x", "oops"])
    # the seeds' script style, and the other verbs' positional lists (study patterns, bench items)
    assert parse(["train", "lm-A", "--matrix_lr=0.001"]).overrides == ["matrix_lr=0.001"]
    assert parse(["study", "run", "exp01", "--dry-run", "train.steps=5"]).patterns == ["exp01", "train.steps=5"]
    assert parse(["bench", "sudoku", "--steps", "2", "train.threads=1"]).items == ["sudoku", "train.threads=1"]


@pytest.mark.parametrize("argv, message", [
    (["eval", "/nonexistent/run", "--n-sup", "-1"], "--n-sup -1: must be >= 1"),
    (["eval", "/nonexistent/run", "--n-sup", "0"], "--n-sup 0: must be >= 1"),
    (["eval", "/nonexistent/run", "--threads", "-2"], "--threads -2: must be >= 0"),
    (["eval", "/nonexistent/run", "--max-samples", "-5"], "--max-samples -5: must be >= 0"),
    (["solve", "/nonexistent/run", "t5.txt", "--n-sup", "-3"], "--n-sup -3: must be >= 1"),
])
def test_a_count_flag_below_its_minimum_is_a_one_line_error_naming_it(capsys, argv, message):
    rc, _, err = run(capsys, *argv)  # checked before the checkpoint is even looked for
    assert rc == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_eval_flags_are_checked_on_a_real_run_and_out_needs_a_task_that_writes_files(capsys, tmp_path,
                                                                                     tiny_overrides):
    data = str(tmp_path / "data")
    rc, _, _ = run(capsys, "train", "sudoku", *tiny_overrides, "train.steps=1", "--runs-dir", str(tmp_path / "runs"),
                   "--data-root", data, "--name", "t", "--quiet")
    run_dir = str(tmp_path / "runs" / "t")
    assert rc == 0
    for flags, message in ((["--n-sup", "-1"], "--n-sup -1"), (["--threads", "-2"], "--threads -2"),
                           (["--max-samples", "-5"], "--max-samples -5"), (["--out", "x"], "writes no files")):
        rc, out, err = run(capsys, "eval", run_dir, "--data-root", data, *flags)
        assert rc == 2 and message in err and err.count("\n") == 1 and "exact_acc" not in out
    rc, out, _ = run(capsys, "eval", run_dir, "--data-root", data, "--max-samples", "4", "--json")
    assert rc == 0 and '"eval_samples": 4' in out


def test_train_on_a_run_directory_acts_on_that_directory(capsys, tmp_path, tiny_overrides):
    import shutil
    common = ["--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data"), "--quiet"]
    assert main(["train", "sudoku", *tiny_overrides, "train.steps=2", "--name", "orig", *common]) == 0
    original = (tmp_path / "runs" / "orig" / "summary.json").read_text()
    shutil.copytree(tmp_path / "runs" / "orig", tmp_path / "elsewhere" / "copy")
    assert main(["train", str(tmp_path / "elsewhere" / "copy"), "train.steps=3", "--resume", *common]) == 0
    assert json.loads((tmp_path / "elsewhere" / "copy" / "summary.json").read_text())["steps"] == 3
    assert (tmp_path / "runs" / "orig" / "summary.json").read_text() == original   # the original is untouched
    capsys.readouterr()


def test_no_ema_evaluates_a_run_whose_ema_file_is_corrupt(capsys, tmp_path, tiny_overrides):
    common = ["--data-root", str(tmp_path / "data")]
    assert main(["train", "sudoku", *tiny_overrides, "train.steps=1", "--runs-dir", str(tmp_path / "runs"),
                 "--quiet", *common]) == 0
    run = tmp_path / "runs" / "sudoku"
    next(run.glob("checkpoints/*/ema.safetensors")).write_bytes(b"junk")
    capsys.readouterr()
    assert main(["eval", str(run), "--no-ema", "--json", *common]) == 0
    assert main(["eval", str(run), *common]) == 2   # the EMA weights themselves: a one-line error
