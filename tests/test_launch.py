"""`trm train` on a multi-core CPU: one process per core when the batch splits, one line saying so."""

import json

import pytest

from trmlab import cli
from trmlab.config import load_config
from trmlab.errors import TrmError
from trmlab.train import launch
from trmlab.train.launch import choose_processes


@pytest.fixture
def cores(monkeypatch):
    monkeypatch.delenv("TRM_PROCESSES", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(launch.torch.cuda, "is_available", lambda: False)

    def set_cores(n):
        monkeypatch.setattr(launch, "cpu_cores", lambda: n)
    return set_cores


def _cfg(batch, accum=1, device="auto"):
    return load_config("sudoku", [f"train.batch_size={batch}", f"train.grad_accum={accum}", f"train.device={device}"])


def test_one_process_per_core_when_the_batch_splits(cores):
    cores(2)
    assert choose_processes(_cfg(64))[0] == 2
    cores(4)
    assert choose_processes(_cfg(64))[0] == 4
    assert choose_processes(_cfg(6))[0] == 3       # the most processes that split the batch evenly
    assert choose_processes(_cfg(8, accum=4))[0] == 2  # batch 8 = 2 processes x 4 micro-batches of 1


def test_one_process_when_nothing_splits_says_why(cores):
    cores(2)
    n, why = choose_processes(_cfg(7))
    assert n == 1 and "does not split" in why and "7" in why


def test_one_process_when_asked_on_one_core_under_torchrun_or_on_a_gpu(cores, monkeypatch):
    cores(1)
    assert choose_processes(_cfg(64)) == (1, "")
    cores(2)
    assert choose_processes(_cfg(64), requested=1) == (1, "")
    monkeypatch.setenv("TRM_PROCESSES", "1")
    assert choose_processes(_cfg(64))[0] == 1
    monkeypatch.delenv("TRM_PROCESSES")
    assert choose_processes(_cfg(64, device="cuda"))[0] == 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert choose_processes(_cfg(64))[0] == 1  # a worker never launches again


def test_processes_that_do_not_split_the_batch_are_refused(cores):
    cores(2)
    with pytest.raises(TrmError, match="does not split"):
        choose_processes(_cfg(8), requested=3)
    assert choose_processes(_cfg(8), requested=4)[0] == 4


def test_trm_train_runs_one_process_per_core(cores, tmp_path, tiny_overrides, capsys):
    cores(2)
    rc = cli.main(["train", "sudoku", *tiny_overrides, "train.steps=3", "train.ema_decay=0", "--name", "dp",
                   "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")])
    out = capsys.readouterr().out
    assert rc == 0
    assert "2 processes, one per core" in out
    state = json.loads(next((tmp_path / "runs" / "dp" / "checkpoints").glob("step_*/state.json")).read_text())
    assert state["world_size"] == 2 and state["step"] == 3
    assert (tmp_path / "runs" / "dp" / "summary.json").is_file()


def test_a_failing_worker_is_one_line_once(cores, tmp_path, tiny_overrides, capfd):
    cores(2)
    (tmp_path / "runs" / "dp").mkdir(parents=True)
    (tmp_path / "runs" / "dp" / "notes.txt").write_text("mine")
    rc = cli.main(["train", "sudoku", *tiny_overrides, "train.steps=2", "--name", "dp",
                   "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data")])
    err = capfd.readouterr().err
    assert rc == 2
    assert err.count("trm: error:") == 1 and "Traceback" not in err
    assert (tmp_path / "runs" / "dp" / "notes.txt").read_text() == "mine"


def test_the_launch_leaves_the_callers_signal_handlers(cores, tmp_path, tiny_overrides):
    import signal
    cores(2)
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    assert cli.main(["train", "sudoku", *tiny_overrides, "train.steps=1", "train.ema_decay=0", "--name", "h",
                     "--runs-dir", str(tmp_path / "runs"), "--data-root", str(tmp_path / "data"), "--quiet"]) == 0
    assert {s: signal.getsignal(s) for s in before} == before
