"""Nothing lost, no tracebacks: --overwrite deletes only a trmlab run, and only once the new run has started;
a checkpoint is used only when whole (else the newest whole one, with a note; else one line); bad run places,
damaged checkpoint files and torn metrics lines are one-line errors or notes. All through `trm` itself."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from trmlab.cli import main
from trmlab.train import checkpoint as ckpt_module
from trmlab.train.checkpoint import checkpoints
from trmlab.train.run_dir import check_is_run as _check_is_run

TINY = ["model.n_embd=32", "model.n_head=2", "model.n_layer=1", "model.n_loops=2", "model.T_recursion=2",
        "model.n_sup_train=3", "model.n_sup_inference=3", "train.batch_size=8", "train.warmup_steps=2",
        "data.n_train=64", "data.n_test=16", "data.min_blanks=20", "data.max_blanks=25", "train.log_interval=1",
        "train.eval_samples=4"]
FILES = ["model.safetensors", "ema.safetensors", "optim.safetensors", "optim.json", "state.safetensors",
         "state.json"]


def trm(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line(err: str, message: str) -> bool:
    return message in err and err.count("\n") == 1 and err.startswith("trm: error:") and "Traceback" not in err


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny run with two checkpoints (steps 1 and 2), and the same run trained straight to step 3 (what a resume
    from step 1 must reproduce bit for bit)."""
    root = tmp_path_factory.mktemp("made")
    data = root / "data"
    common = ["--runs-dir", root / "runs", "--data-root", data, "--quiet", *TINY, "train.ckpt_interval=1"]
    assert main([str(a) for a in ["train", "sudoku", "train.steps=2", "--name", "two", *common]]) == 0
    assert main([str(a) for a in ["train", "sudoku", "train.steps=3", "--name", "straight", *common]]) == 0
    return {"run": root / "runs" / "two", "straight": root / "runs" / "straight", "data": data}


@pytest.fixture
def run(made, tmp_path):
    """A private copy of the two-checkpoint run, to damage."""
    shutil.copytree(made["run"], tmp_path / "run")
    return tmp_path / "run"


def resume(capsys, run, data, *extra):
    return trm(capsys, "train", run, "train.steps=3", "--resume", "--data-root", data, "--quiet", *extra)


def final_weights(run):
    return load_file(checkpoints(run)[-1] / "model.safetensors"), load_file(checkpoints(run)[-1] / "optim.safetensors")


# ---------------------------------------------------------------------------------------------- --overwrite
def test_overwrite_with_name_dot_refuses_to_delete_the_runs_directory(capsys, made, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(made["run"], runs / "other-run")
    (runs / "notes.txt").write_text("mine")
    rc, _, err = trm(capsys, "train", "sudoku", *TINY, "train.steps=1", "--runs-dir", runs, "--name", ".",
                     "--overwrite", "--data-root", made["data"], "--quiet")
    assert rc == 2 and one_line(err, "is not a trmlab run") and "nothing deleted" in err
    assert (runs / "notes.txt").read_text() == "mine" and (runs / "other-run" / "summary.json").is_file()


@pytest.mark.parametrize("contents", [{"notes.txt": "mine"}, {"config.yaml": "task: sudoku\n", "thesis.tex": "x"},
                                      {"metrics.jsonl": "", "checkpoints/my_weights.pt": "x"}])
def test_overwrite_of_a_directory_that_is_no_run_refuses_in_one_line(capsys, made, tmp_path, contents):
    target = tmp_path / "any" / "dir"
    for name, text in contents.items():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        (target / name).write_text(text)
    rc, _, err = trm(capsys, "train", "sudoku", *TINY, "train.steps=1", "--name", target, "--overwrite",
                     "--data-root", made["data"], "--quiet")
    assert rc == 2 and one_line(err, f"{target} is not a trmlab run")
    assert all((target / name).read_text() == text for name, text in contents.items())


def test_overwrite_replaces_a_run_with_the_files_tasks_trackers_and_studies_write(capsys, made, run):
    for extra in ("tokenizer.json", "submission.json", "arc_scores.json", "error.json", "halting.json",
                  ".tokenizer.json.tmp-12", "summary.json.tmp"):
        (run / extra).write_text("{}")
    for folder in ("pictures", "tensorboard", "wandb", "best/checkpoints/step_0000001"):
        (run / folder).mkdir(parents=True)
    rc, _, err = trm(capsys, "train", "sudoku", *TINY, "train.steps=1", "--name", run, "--overwrite",
                     "--data-root", made["data"], "--quiet")
    assert rc == 0, err
    assert json.loads((run / "summary.json").read_text())["steps"] == 1      # the new run, from scratch
    assert sorted(p.name for p in checkpoints(run)) == ["step_0000001"]
    assert not (run / "error.json").exists() and not (run / "pictures").exists()


def test_a_failed_study_run_holding_only_error_json_is_restarted(capsys, made, tmp_path):
    failed = tmp_path / "study" / "exp_01"   # what `trm study run --resume` restarts with --overwrite
    failed.mkdir(parents=True)
    (failed / "error.json").write_text('{"error": "boom"}')
    rc, _, err = trm(capsys, "train", "sudoku", *TINY, "train.steps=1", "--runs-dir", failed.parent, "--name",
                     "exp_01", "--overwrite", "--data-root", made["data"], "--quiet")
    assert rc == 0, err
    assert (failed / "summary.json").is_file() and not (failed / "error.json").exists()


def test_a_failing_start_leaves_the_old_run_as_it_was(capsys, made, run, tmp_path):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("question,answer\nnot-a-puzzle,nor-a-solution\n")
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    rc, _, err = trm(capsys, "train", "sudoku", *TINY, "train.steps=1", f"data.source={bad_csv}", "--name", run,
                     "--overwrite", "--data-root", tmp_path / "data", "--quiet")
    assert rc == 2 and err.startswith("trm: error:") and "Traceback" not in err
    assert {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_check_is_run_looks_inside_checkpoints():
    """The unit the CLI tests go through, on the one case they do not build: a foreign file beside step_N."""
    import tempfile
    from pathlib import Path
    from trmlab.errors import TrmError
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "checkpoints" / "step_0000001").mkdir(parents=True)
        _check_is_run(d)  # a run
        (d / "checkpoints" / "notes.txt").write_text("x")
        with pytest.raises(TrmError, match=r"checkpoints/notes.txt"):
            _check_is_run(d)


def test_latent_train_shares_the_overwrite_guard(capsys, tmp_path, monkeypatch):
    from trmlab.errors import TrmError
    from trmlab.tasks.latent import LatentTask

    def no_data_build(*args, **kwargs):   # refused before the data (and its offline LLM) would be built
        raise TrmError("the data build was reached")
    monkeypatch.setattr(LatentTask, "prepare", no_data_build)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "keep.txt").write_text("mine")
    rc, _, err = trm(capsys, "latent", "train", "latent-tiny", "--runs-dir", runs, "--name", ".", "--overwrite",
                     "--data-root", tmp_path / "data", "--quiet")
    assert rc == 2 and one_line(err, "is not a trmlab run") and (runs / "keep.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------- whole checkpoints
@pytest.mark.parametrize("damage", ["missing", "cut short"])
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_whole_one(capsys, made, run, name, damage):
    f = checkpoints(run)[-1] / name
    if damage == "missing":
        f.unlink()
    else:
        f.write_bytes(f.read_bytes()[:-3])
    rc, _, err = resume(capsys, run, made["data"])
    assert rc == 0, err
    notes = [ln for ln in err.splitlines() if ln.startswith("trm: note:")]
    assert len(notes) == 1 and f"step_0000002/{name}" in notes[0] and "step_0000001" in notes[0]
    # resumed from step 1 with its optimizer, RNG and EMA: the very weights of the run trained straight to step 3
    (w, o), (w_ref, o_ref) = final_weights(run), final_weights(made["straight"])
    assert all(torch.equal(w[k], w_ref[k]) for k in w_ref) and all(torch.equal(o[k], o_ref[k]) for k in o_ref)
    ema, ema_ref = (load_file(checkpoints(r)[-1] / "ema.safetensors") for r in (run, made["straight"]))
    assert all(torch.equal(ema[k], ema_ref[k]) for k in ema_ref)


@pytest.mark.parametrize("name, content", [("state.json", "{}"), ("state.json", "[]"), ("state.json", "garbage"),
                                           ("optim.json", "{}"), ("optim.json", "[]"), ("optim.json", "[{]"),
                                           ("state.safetensors", "garbage"), ("optim.safetensors", ""),
                                           ("ema.safetensors", None), ("optim.safetensors", None)])
def test_resume_with_no_whole_checkpoint_is_one_line_and_changes_nothing(capsys, made, run, name, content):
    for step in checkpoints(run):
        if content is None:
            (step / name).unlink()
        else:
            (step / name).write_text(content)
    before = (run / "metrics.jsonl").read_text()
    rc, _, err = resume(capsys, run, made["data"])
    assert rc == 2 and one_line(err, "no whole checkpoint to resume") and f"step_0000002/{name}" in err
    assert "--overwrite" in err and (run / "metrics.jsonl").read_text() == before


def test_optimizer_state_that_does_not_fit_is_one_line(capsys, made, run):
    for step in checkpoints(run):   # a consistent file, but of another optimizer: one state too many
        metas = json.loads((step / "optim.json").read_text())
        files = json.loads((step / "state.json").read_text())
        (step / "optim.json").write_text(json.dumps(metas * 2))
        files["files"]["optim.json"] = (step / "optim.json").stat().st_size
        (step / "state.json").write_text(json.dumps(files))
    rc, _, err = resume(capsys, run, made["data"])
    assert rc == 2 and one_line(err, "cannot resume") and "optimizer" in err


def test_resume_of_a_run_that_does_not_exist_says_so(capsys, made, tmp_path):
    rc, _, err = trm(capsys, "train", "sudoku", *TINY, "train.steps=1", "--runs-dir", tmp_path, "--name", "typo",
                     "--resume", "--data-root", made["data"], "--quiet")
    assert rc == 0 and f"there is no run at {tmp_path / 'typo'} yet" in err


def test_eval_and_solve_refuse_a_damaged_checkpoint_in_one_line(capsys, made, run):
    puzzle = "0" * 81
    for step in checkpoints(run):
        (step / "ema.safetensors").unlink()   # trained with an EMA: the raw weights are not what eval should score
    rc, _, err = trm(capsys, "eval", run, "--data-root", made["data"])
    assert rc == 2 and one_line(err, "ema.safetensors is missing")
    rc, out, err = trm(capsys, "eval", run, "--data-root", made["data"], "--no-ema", "--json")
    assert rc == 0 and '"exact_acc"' in out
    for content in ("[]", "{}", "\x00junk"):
        (checkpoints(run)[-1] / "state.json").write_text(content)
        (checkpoints(run)[0] / "model.safetensors").write_bytes(b"junk")
        for argv in (["eval", run, "--data-root", made["data"]], ["solve", run, puzzle],
                     ["eval", checkpoints(run)[-1], "--data-root", made["data"]]):
            rc, _, err = trm(capsys, *argv)
            assert rc == 2 and one_line(err, "is damaged" if argv[1] != run else "no whole checkpoint"), err


def test_eval_of_a_run_whose_newest_checkpoint_is_damaged_uses_the_older_one_and_says_so(capsys, made, run):
    (checkpoints(run)[-1] / "model.safetensors").write_bytes(b"junk")
    rc, out, err = trm(capsys, "eval", run, "--data-root", made["data"], "--json")
    assert rc == 0 and '"exact_acc"' in out and "using the newest whole checkpoint, step_0000001" in err


def test_checkpoint_files_and_directory_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(a))), real_replace(a, b)))
    sd = {"w": torch.ones(3)}
    opt = {"state": {0: {"step": 1, "exp_avg": torch.zeros(3)}}, "param_groups": [{"lr": 1.0, "params": [0]}]}
    final = ckpt_module.save_checkpoint(tmp_path, 5, sd, {"config": {"task": "sudoku"}}, sd, [opt],
                                        {"rng.torch": torch.get_rng_state()})
    replaced = events.index(("replace", str(tmp_path / "checkpoints" / ".tmp_step_0000005")))
    synced = {os.path.basename(p) for kind, p in events[:replaced] if kind == "fsync"}
    assert synced == set(FILES) | {".tmp_step_0000005"}
    assert ("fsync", str(tmp_path / "checkpoints")) in events[replaced:]
    assert ckpt_module.load_checkpoint(final).state["files"]["model.safetensors"] > 0


# ---------------------------------------------------------------------------------------------- bad places, torn logs
def test_a_torn_last_metrics_line_is_dropped_with_a_note(capsys, made, run):
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 0.5, "l')   # a crash in the middle of a write
    rc, _, err = resume(capsys, run, made["data"])
    assert rc == 0 and "dropped 1 unreadable line" in err
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]


@pytest.mark.parametrize("where", ["name", "runs-dir", "data-root"])
def test_a_run_place_naming_a_file_is_one_line(capsys, tmp_path, where):
    f = tmp_path / "a_file"
    f.write_text("mine")
    places = {"name": ["--runs-dir", tmp_path, "--name", "a_file"], "runs-dir": ["--runs-dir", f, "--name", "x"],
              "data-root": ["--runs-dir", tmp_path / "runs", "--data-root", f]}
    argv = ["train", "sudoku", *TINY, "train.steps=1", "--quiet", *places[where]]
    rc, _, err = trm(capsys, *argv, *([] if where == "data-root" else ["--data-root", tmp_path / "data"]))
    assert rc == 2 and one_line(err, f"{f} is a file") and f.read_text() == "mine"
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()   # refused before any work


@pytest.mark.parametrize("how", ["chmod", "read-only file system"])
def test_a_read_only_runs_dir_is_one_line(capsys, made, tmp_path, monkeypatch, how):
    runs = tmp_path / "runs"
    runs.mkdir()
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root writes through permissions; the read-only file system case covers the check")
        runs.chmod(0o555)
    else:  # what access(2) answers for a directory on a read-only mount (EROFS), for any user
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p) == str(runs) and mode & os.W_OK
                            else real(p, mode, **kw))
    rc, _, err = trm(capsys, "train", "sudoku", *TINY, "train.steps=1", "--runs-dir", runs, "--name", "x",
                     "--data-root", made["data"], "--quiet")
    runs.chmod(0o755)
    assert rc == 2 and one_line(err, "is not writable")


def test_a_file_altered_after_the_save_is_caught_by_its_size_even_when_it_parses(capsys, made, run):
    f = checkpoints(run)[-1] / "optim.json"
    f.write_text(json.dumps(json.loads(f.read_text()) * 2))   # valid JSON, but not what the save wrote
    rc, _, err = resume(capsys, run, made["data"])
    assert rc == 0 and "step_0000002/optim.json: corrupt or unreadable" in err and "bytes" in err


def test_a_checkpoint_write_that_fails_is_one_line_and_leaves_the_previous_one(capsys, made, tmp_path, monkeypatch):
    from safetensors import SafetensorError
    real, calls = ckpt_module.save_file, []

    def disk_fills_up(tensors, path, *a, **kw):   # what safetensors raises on a full disk
        calls.append(path)
        if "step_0000002" in str(path):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real(tensors, path, *a, **kw)
    monkeypatch.setattr(ckpt_module, "save_file", disk_fills_up)
    rc, _, err = trm(capsys, "train", "sudoku", *TINY, "train.steps=2", "train.ckpt_interval=1", "--runs-dir",
                     tmp_path, "--name", "full", "--data-root", made["data"], "--quiet")
    assert rc == 2 and one_line(err, "cannot write the checkpoint (Error while serializing: I/O error: No space")
    assert [p.name for p in (tmp_path / "full" / "checkpoints").iterdir()] == ["step_0000001"]
    monkeypatch.setattr(ckpt_module, "save_file", real)
    rc, _, err = resume(capsys, tmp_path / "full", made["data"])
    assert rc == 0 and "trm: note" not in err
