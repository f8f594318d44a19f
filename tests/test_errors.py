"""Bad input and failing disks end in one `trm: error:` line and exit code 2, never a traceback (issue 16)."""

import errno
import os
import re
import signal

import pytest

from trmlab.cli import main

PROGRESS_BAR = re.compile(r"\d+%\|")  # tqdm's lines on stderr while data is generated


def one_error_line(capsys, *argv) -> str:
    """Run `trm argv...` in this process; assert exit 2 and a single `trm: error:` line on stderr; return it."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and not PROGRESS_BAR.search(line)]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("trm: error: "), err
    return lines[0]


# ------------------------------------------------------------------------------------------ presets
def test_a_directory_given_as_the_preset(capsys, tmp_path):
    line = one_error_line(capsys, "info", tmp_path)
    assert str(tmp_path) in line and "directory" in line


@pytest.mark.parametrize("chain", [["self.yaml"], ["a.yaml", "b.yaml"], ["a.yaml", "b.yaml", "c.yaml"]])
def test_a_base_chain_that_comes_back_to_itself(capsys, tmp_path, chain):
    for name, base in zip(chain, chain[1:] + chain[:1]):
        (tmp_path / name).write_text(f"task: sudoku\nbase: {tmp_path / base}\n")
    line = one_error_line(capsys, "info", tmp_path / chain[0])
    assert "comes back to itself" in line and all(name in line for name in chain)


def test_a_base_chain_without_a_cycle_still_merges(capsys, tmp_path):
    (tmp_path / "a.yaml").write_text("base: sudoku\nmodel: {n_embd: 64}\n")
    (tmp_path / "b.yaml").write_text(f"base: {tmp_path / 'a.yaml'}\nmodel: {{n_layer: 1}}\n")
    assert main(["info", str(tmp_path / "b.yaml")]) == 0
    assert "n_layer 1 x" in capsys.readouterr().out


def test_a_preset_that_is_not_utf8(capsys, tmp_path):
    (tmp_path / "latin1.yaml").write_bytes("task: sudoku\ndescription: caf\xe9\n".encode("latin-1"))
    line = one_error_line(capsys, "info", tmp_path / "latin1.yaml")
    assert "latin1.yaml" in line and "UTF-8" in line and "0xe9" in line


@pytest.mark.parametrize("text, where", [("task: [sudoku\n", "line 2"), ("task: sudoku\n  model: 3\n", "line 2"),
                                         ("model: {n_embd: 64\ntask: sudoku\n", "line 2")])
def test_malformed_yaml_names_the_line(capsys, tmp_path, text, where):
    (tmp_path / "bad.yaml").write_text(text)
    line = one_error_line(capsys, "info", tmp_path / "bad.yaml")
    assert "bad.yaml: invalid YAML" in line and where in line


def test_a_base_that_is_not_one_name(capsys, tmp_path):
    (tmp_path / "p.yaml").write_text("base: [sudoku, maze]\n")
    assert "base must be one preset" in one_error_line(capsys, "info", tmp_path / "p.yaml")


# ------------------------------------------------------------------------------------------ override keys
@pytest.mark.parametrize("key, first", [("n_trian", "data.n_train"), ("n_embed", "model.n_embd"),
                                        ("steps_", "train.steps"), ("trian.steps", "train?")])
def test_a_misspelt_key_suggests_the_closest_full_key_first(capsys, key, first):
    line = one_error_line(capsys, "info", "sudoku", f"{key}=5")
    assert line.split("did you mean ", 1)[1].startswith(first), line


# ------------------------------------------------------------------------------------------ signals
@pytest.mark.parametrize("signum, rc", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_training_exits_128_plus_its_number(capsys, monkeypatch, tmp_path, tiny_overrides, signum,
                                                            rc):
    from trmlab.train.trainer import Trainer
    step = Trainer.train_step

    def step_then_signal(self):   # the signal arrives while step 2 runs: the trainer saves after it, then stops
        record = step(self)
        if self.step == 2:
            os.kill(os.getpid(), signum)
        return record
    monkeypatch.setattr(Trainer, "train_step", step_then_signal)
    code = main(["train", "sudoku", *tiny_overrides, "train.steps=5", "--runs-dir", str(tmp_path / "runs"),
                 "--data-root", str(tmp_path / "data"), "--quiet"])
    err = capsys.readouterr().err
    assert code == rc and "--resume" in err and ("SIGTERM" in err) == (signum == signal.SIGTERM)
    assert (tmp_path / "runs" / "sudoku" / "checkpoints").is_dir()


# ------------------------------------------------------------------------------------------ verbs that fail to load
def _with_verb(monkeypatch, tmp_path, source: str):
    (tmp_path / "trm_test_verb.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    from trmlab import cli
    monkeypatch.setitem(cli.COMMANDS, "testverb", ("trm_test_verb:go", "a verb for this test"))


def test_a_missing_optional_dependency_leaves_the_verb_unavailable(capsys, monkeypatch, tmp_path):
    _with_verb(monkeypatch, tmp_path, "import trm_no_such_package\n")
    line = one_error_line(capsys, "testverb", "--any", "thing")
    assert "unavailable" in line and "trm_no_such_package" in line
    assert main(["presets"]) == 0   # the other verbs still work


def test_an_attribute_error_in_a_verb_module_is_raised_not_called_unavailable(monkeypatch, tmp_path):
    _with_verb(monkeypatch, tmp_path, "import trmlab\ntrmlab.no_such_attribute\n")
    with pytest.raises(AttributeError, match="no_such_attribute"):
        main(["testverb"])


def test_a_broken_import_of_trmlab_code_is_raised(monkeypatch, tmp_path):
    _with_verb(monkeypatch, tmp_path, "from trmlab.config import no_such_name\n")
    with pytest.raises(ImportError, match="no_such_name"):
        main(["testverb"])


# ------------------------------------------------------------------------------------------ files and disks
@pytest.mark.parametrize("under", ["", "sub/dir"])
def test_data_root_naming_a_file(capsys, tmp_path, under):
    (tmp_path / "f").write_text("not a directory")
    root = tmp_path / "f" / under if under else tmp_path / "f"
    line = one_error_line(capsys, "data", "build", "sudoku", "--data-root", root)
    assert str(tmp_path / "f") in line and "directory" in line
    assert (tmp_path / "f").read_text() == "not a directory"


@pytest.mark.parametrize("error", [PermissionError(errno.EACCES, "Permission denied", "/ro/data/x.tmp"),
                                   OSError(errno.ENOSPC, "No space left on device", "/full/data/x.tmp"),
                                   IsADirectoryError(errno.EISDIR, "Is a directory", "/d/metadata.json")])
def test_an_os_error_no_verb_caught_is_one_line_naming_the_path(capsys, monkeypatch, error):
    from trmlab.tasks.sudoku import SudokuTask

    def fail(*a, **k):
        raise error
    monkeypatch.setattr(SudokuTask, "build_data", fail)
    line = one_error_line(capsys, "data", "build", "sudoku")
    assert line == f"trm: error: {error.filename}: {error.strerror}"


def test_broken_pipe_and_ctrl_c_keep_their_exit_codes(monkeypatch, tmp_path):
    import sys
    from trmlab.cli import presets as commands
    monkeypatch.setattr(os, "dup2", lambda *a: None)   # the pipe case points stdout at /dev/null: not in pytest
    for exc, rc in ((BrokenPipeError(errno.EPIPE, "Broken pipe"), 0), (KeyboardInterrupt(), 130)):
        def fail(args, exc=exc):
            raise exc
        monkeypatch.setattr(commands, "presets", fail)
        with open(tmp_path / "out", "w") as out, open(tmp_path / "err", "w") as err:
            monkeypatch.setattr(sys, "stdout", out)
            monkeypatch.setattr(sys, "stderr", err)
            assert main(["presets"]) == rc
        assert "error" not in (tmp_path / "err").read_text()


# ------------------------------------------------------------------------------------------ bench and study run
@pytest.mark.parametrize("argv, words", [(["sudoku", "n_trian=5"], "data.n_train"),
                                         (["sudoku", "--T", "0", "2"], "--T"), (["sudoku", "--procs", "0"], "--procs")])
def test_bench_refuses_bad_input_before_measuring(capsys, tmp_path, monkeypatch, argv, words):
    import trmlab.train.benchmark as bench
    monkeypatch.setattr(bench, "launch", lambda *a, **k: pytest.fail("a case was launched"))
    line = one_error_line(capsys, "bench", *argv, "--doc", tmp_path / "bench.md")
    assert words in line and not (tmp_path / "bench.md").exists()


def test_study_run_with_a_bad_override_is_one_line_and_writes_nothing(capsys, tmp_path):
    runs = tmp_path / "runs"
    line = one_error_line(capsys, "study", "run", "exp01", "--scale", "tiny", "--base", "sudoku", "--runs-dir", runs,
                          "n_trian=5")
    assert "n_trian" in line and "data.n_train" in line and "every selected experiment" in line
    assert not runs.exists()


@pytest.mark.parametrize("flag, value", [("--jobs", "0"), ("--jobs", "-2"), ("--slurm-gpus", "-1")])
def test_study_run_refuses_counts_out_of_range(capsys, tmp_path, flag, value):
    line = one_error_line(capsys, "study", "run", "exp01", "--scale", "tiny", "--base", "sudoku", "--runs-dir",
                          tmp_path, "--dry-run", flag, value)
    assert line == f"trm: error: {flag} {value}: must be >= {1 if flag == '--jobs' else 0}"


def test_study_run_still_runs_the_valid_experiments_beside_invalid_ones(capsys, tmp_path):
    from trmlab.studies.runner import RunPlan
    from trmlab.cli.study import refuse_if_all_invalid
    ok, bad = RunPlan("s", "a", str(tmp_path / "a")), RunPlan("s", "b", str(tmp_path / "b"), action="invalid")
    refuse_if_all_invalid([ok, bad])   # no error: `a` runs, `b` is listed as invalid
    with pytest.raises(Exception, match="every selected experiment: b"):
        refuse_if_all_invalid([bad])


# ------------------------------------------------------------------------------------------ trm solve
@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory):
    from conftest import TINY
    root = tmp_path_factory.mktemp("solve")
    assert main(["train", "sudoku", *TINY, "train.steps=1", "--runs-dir", str(root / "runs"),
                 "--data-root", str(root / "data"), "--quiet"]) == 0
    return root / "runs" / "sudoku"


def test_solve_an_unsolvable_sudoku_says_it_has_no_solution(capsys, monkeypatch, sudoku_run):
    capsys.readouterr()
    # no two givens clash, yet r1c9 can hold nothing: its row has 1-8 and its column a 9
    puzzle = "12345678." + "........9" + "." * 63
    line = one_error_line(capsys, "solve", sudoku_run, puzzle)
    assert "no solution" in line and "clash" in line
    solvable = "12345678." + "." * 72
    assert main(["solve", str(sudoku_run), solvable]) in (0, 1)   # answered: valid or not, the model's grid
    assert "valid:" in capsys.readouterr().out


def test_solve_out_naming_a_file(capsys, tmp_path, sudoku_run):
    (tmp_path / "f").write_text("keep me")
    line = one_error_line(capsys, "solve", sudoku_run, "." * 81, "--out", tmp_path / "f")
    assert "--out" in line and str(tmp_path / "f") in line and (tmp_path / "f").read_text() == "keep me"


SMALL_SUDOKU = ["data.n_train=8", "data.n_test=4", "data.num_aug=0", "data.min_blanks=20", "data.max_blanks=25"]


def test_a_read_only_data_root_fails_before_generating(capsys, monkeypatch, tmp_path):
    from pathlib import Path
    import trmlab.data.sudoku as sudoku
    real_touch = Path.touch

    def read_only(self, *a, **k):
        if self.parent == tmp_path / "ro":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_touch(self, *a, **k)
    monkeypatch.setattr(Path, "touch", read_only)
    monkeypatch.setattr(sudoku, "generate_puzzle", lambda *a, **k: pytest.fail("generated before checking"))
    line = one_error_line(capsys, "data", "build", "sudoku", *SMALL_SUDOKU, "--data-root", tmp_path / "ro")
    assert f"data root {tmp_path / 'ro'}: cannot write there (Read-only file system)" in line


def test_a_full_disk_while_writing_a_dataset_leaves_no_partial_copy(capsys, monkeypatch, tmp_path):
    import trmlab.data.puzzles as puzzles

    def disk_full(path, arr):   # numpy's own words when the disk fills: no errno, no file name
        path.write_bytes(b"\x93NUMPY partial")
        raise OSError(f"{arr.nbytes} requested and 14 written")
    monkeypatch.setattr(puzzles.np, "save", disk_full)
    line = one_error_line(capsys, "data", "build", "sudoku", *SMALL_SUDOKU, "--data-root", tmp_path)
    assert "could not write the dataset" in line and "disk full" in line and "nothing was replaced" in line
    assert list(tmp_path.iterdir()) == []   # the half-written .tmp copy is gone, no dataset claims to be built


@pytest.mark.parametrize("out", ["pictures", "deeper/pictures", "maze.png"])
def test_solve_out_in_a_read_only_directory_fails_before_solving(capsys, monkeypatch, tmp_path, sudoku_run, out):
    import trmlab.api as api
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(ro) else real_access(p, mode))
    monkeypatch.setattr(api, "load", lambda *a, **k: pytest.fail("the model was loaded before --out was checked"))
    line = one_error_line(capsys, "solve", sudoku_run, "." * 81, "--out", ro / out)
    assert f"{ro} is read-only" in line


def test_solve_out_as_a_png_file_may_exist_already(monkeypatch, tmp_path, sudoku_run):
    (tmp_path / "old.png").write_bytes(b"an earlier picture")   # overwriting a picture is what --out x.png does
    monkeypatch.setattr("trmlab.api.load", lambda *a, **k: (_ for _ in ()).throw(SystemExit("loaded")))
    with pytest.raises(SystemExit, match="loaded"):
        main(["solve", str(sudoku_run), "." * 81, "--out", str(tmp_path / "old.png")])


def test_study_export_into_a_full_disk(capsys, monkeypatch, tmp_path):
    from pathlib import Path

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")   # as a write fails at close: no file name
    monkeypatch.setattr(Path, "write_text", full)
    line = one_error_line(capsys, "study", "export", "exp01", "--out", tmp_path / "cfgs")
    assert line == f"trm: error: --out {tmp_path / 'cfgs'}: cannot write the configs (No space left on device)"


def test_an_os_error_without_a_file_name_says_which_command(capsys, monkeypatch):
    from trmlab.cli import presets as commands
    monkeypatch.setattr(commands, "presets", lambda args: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    line = one_error_line(capsys, "presets")
    assert line == "trm: error: No space (while `trm presets` was reading or writing files)"


# ------------------------------------------------------------------------------------------ odd values
@pytest.mark.parametrize("override, words", [("model.n_embd=99999999999999999999", "out of range"),
                                             ("model.n_embd=1e400", "expected int"),
                                             ("name=[a, b]", "name: expected str"),
                                             ("data.source={a: 1}", "data.source: expected str")])
def test_values_no_config_can_hold(capsys, override, words):
    assert words in one_error_line(capsys, "info", "sudoku", override)


def test_an_empty_data_root(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--data-root is empty" in one_error_line(capsys, "data", "build", "sudoku", "--data-root", "")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error, words", [
    (RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                  "tried to allocate 853606400000 bytes. Error code 12 (Cannot allocate memory)"), "795.0 GiB"),
    (MemoryError("Unable to allocate 37.3 GiB for an array with shape (99999, 99999) and data type int32"),
     "Unable to allocate 37.3 GiB")])
def test_out_of_memory_is_one_line(capsys, monkeypatch, error, words):
    import trmlab.api as api
    monkeypatch.setattr(api, "build_model", lambda cfg: (_ for _ in ()).throw(error))
    line = one_error_line(capsys, "info", "sudoku")
    assert line.startswith("trm: error: out of memory (") and words in line


def test_other_runtime_errors_keep_their_traceback(monkeypatch):
    import trmlab.api as api
    monkeypatch.setattr(api, "build_model", lambda cfg: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["info", "sudoku"])


# ------------------------------------------------------------------------------------------ study files and reports
@pytest.mark.parametrize("text, words", [(b"experiments: [a, b]\n", "'experiments' must map"),
                                         (b"grid: [1, 2]\n", "'grid' must map"),
                                         (b"experiments: {a: [model.n_embd=64]}\nbase: [x]\n", "base must be one"),
                                         (b"name: caf\xe9\nexperiments: {a: [model.n_embd=64]}\n", "utf-8")])
def test_a_malformed_study_file(capsys, tmp_path, text, words):
    (tmp_path / "study.yaml").write_bytes(text)
    line = one_error_line(capsys, "study", "run", tmp_path / "study.yaml", "--dry-run", "--runs-dir", tmp_path / "r")
    assert "study.yaml" in line and words in line


def test_a_study_file_may_give_an_experiments_overrides_as_one_string(capsys, tmp_path):
    (tmp_path / "study.yaml").write_text("experiments:\n  wide: model.n_embd=64 model.n_head=2\n")
    assert main(["study", "run", str(tmp_path / "study.yaml"), "--base", "sudoku", "--dry-run",
                 "--runs-dir", str(tmp_path / "r")]) == 0
    assert "model.n_embd=64 model.n_head=2" in capsys.readouterr().out


def test_a_report_of_a_directory_without_runs(capsys, tmp_path):
    assert one_error_line(capsys, "study", "report", tmp_path) == f"trm: error: no runs at {tmp_path}"
    assert list(tmp_path.iterdir()) == []   # no empty report written


@pytest.mark.parametrize("argv", [["demo", "--minutes", "0"], ["demo", "--minutes", "nan"],
                                  ["eval", "some-run", "--threads", "100000"], ["generate", "r", "--threads", "-1"],
                                  ["latent", "train", "latent-tiny", "--threads", "5000"],
                                  ["info", "sudoku", "train.threads=100000"]])
def test_counts_that_would_run_forever_or_crash_the_process(capsys, monkeypatch, argv):
    import trmlab.cli.demo as demo
    monkeypatch.setattr(demo, "load_config", lambda *a, **k: pytest.fail("the demo went on to train"))
    line = one_error_line(capsys, *argv)
    assert ("--minutes" in line) if argv[0] == "demo" else ("threads" in line)
