"""Data parallel (2 gloo processes = 1 process on the same global batch), resume, FSDP2, grad accumulation,
activation checkpointing, compile fallback, and the one-line errors of bad launches."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from trmlab.cli import main as cli_main
from trmlab.config import load_config
from trmlab.errors import TrmError
from trmlab.train import distributed
from trmlab.train.checkpoint import latest_checkpoint
from trmlab.train.trainer import Trainer, train

from conftest import TINY

# a puzzle-id prefix, so the sign-SGD table's all-gathered update is checked against one process as well
MODES = ["train.supervision_weight_base=3", "train.improvement_reward_scale=0.5", "model.puzzle_emb_len=2"]
STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def weights(run_dir, name="model"):
    return load_file(latest_checkpoint(run_dir) / f"{name}.safetensors")


def assert_close(a: dict, b: dict, atol=2e-5, exact=False):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-4, msg=k)


def cut_back(src, dst, step):
    """A copy of run ``src`` as a crash after the checkpoint of ``step`` leaves it (later checkpoints gone)."""
    shutil.copytree(src, dst)
    for c in (dst / "checkpoints").glob("step_*"):
        if int(c.name.split("_")[1]) > step:
            shutil.rmtree(c)
    (dst / "summary.json").unlink()


def _worker(rank, world, port, jobs):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    for job in jobs:
        if job[0] == "cut":  # simulate a crash: rank 0 rolls a finished run back to an earlier checkpoint
            if rank == 0:
                cut_back(*job[1:])
            torch.distributed.barrier()
            continue
        overrides, run_dir, data_root, resume = job
        train(load_config("sudoku", overrides), run_dir, data_root=data_root, quiet=True, resume=resume)
    torch.distributed.destroy_process_group()


def run_two_processes(jobs):
    """Train ``jobs`` in order, each in 2 gloo processes (one process group, started once for all of them)."""
    mp.spawn(_worker, args=(2, free_port(), jobs), nprocs=2, join=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One 2-process session: per_step (with grad_accum=2), summed, FSDP2 summed, and resumes of per_step and
    FSDP from a checkpoint in the middle of the run; the 1-process references train in this process."""
    root = tmp_path_factory.mktemp("dist")
    data = root / "data"
    base = TINY + [f"train.steps={STEPS}", "train.ckpt_interval=2", "train.keep_checkpoints=5",
                   "train.device=cpu"] + MODES
    cfg = {"per_step": base + ["train.supervision=per_step"], "summed": base + ["train.supervision=summed"]}
    for mode, overrides in cfg.items():  # also builds the dataset cache the workers then read
        train(load_config("sudoku", overrides), root / f"one_{mode}", data_root=data, quiet=True)
    jobs = [(cfg["per_step"] + ["train.grad_accum=2"], root / "two_per_step", data, False),
            (cfg["summed"], root / "two_summed", data, False),
            (cfg["summed"] + ["train.fsdp=true"], root / "two_fsdp", data, False),
            ("cut", root / "two_per_step", root / "resumed_per_step", 2),
            ("cut", root / "two_fsdp", root / "resumed_fsdp", 2),
            (cfg["per_step"] + ["train.grad_accum=2"], root / "resumed_per_step", data, True),
            (cfg["summed"] + ["train.fsdp=true"], root / "resumed_fsdp", data, True)]
    run_two_processes(jobs)
    return root


@pytest.mark.parametrize("mode", ["per_step", "summed"])
def test_two_processes_equal_one_process_on_the_same_global_batch(runs, mode):
    one, two = runs / f"one_{mode}", runs / f"two_{mode}"
    assert json.loads((two / "summary.json").read_text())["world_size"] == 2
    assert_close(weights(one), weights(two))
    assert_close(weights(one, "ema"), weights(two, "ema"))
    if mode == "per_step":  # the checkpoint holds the global ACT carry, gathered in rank order
        a, b = (load_file(latest_checkpoint(r) / "state.safetensors") for r in (one, two))
        assert a["carry.halted"].dtype == b["carry.halted"].dtype == torch.bool
        for k in ("carry.inputs", "carry.steps", "carry.halted"):
            assert torch.equal(a[k], b[k]), k
        torch.testing.assert_close(a["carry.y"], b["carry.y"], atol=1e-4, rtol=1e-4)
    logged = [json.loads(ln)["loss"] for ln in (one / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    logged2 = [json.loads(ln)["loss"] for ln in (two / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert logged == pytest.approx(logged2, rel=1e-4)  # rank 0 logs the global loss, not its shard's


def test_fsdp2_equals_one_process_and_checkpoints_full_tensors(runs):
    assert_close(weights(runs / "one_summed"), weights(runs / "two_fsdp"))
    assert_close(weights(runs / "one_summed", "ema"), weights(runs / "two_fsdp", "ema"))


@pytest.mark.parametrize("run", ["per_step", "fsdp"])
def test_two_process_run_resumed_after_a_crash_equals_the_uninterrupted_run(runs, run):
    full, resumed = runs / f"two_{run}", runs / f"resumed_{run}"
    assert_close(weights(full), weights(resumed), exact=True)
    assert_close(weights(full, "ema"), weights(resumed, "ema"), exact=True)
    steps = [json.loads(ln)["step"] for ln in (resumed / "metrics.jsonl").read_text().splitlines() if '"loss"' in ln]
    assert steps == list(range(1, STEPS + 1))


def test_per_step_resume_with_another_world_size_is_refused(runs, tmp_path):
    cut_back(runs / "two_per_step", tmp_path / "r", 2)
    cfg = load_config("sudoku", TINY + [f"train.steps={STEPS}", "train.ckpt_interval=2", "train.keep_checkpoints=5",
                                        "train.device=cpu", "train.supervision=per_step",
                                        "train.grad_accum=2"] + MODES)
    with pytest.raises(TrmError, match="saved with 2 processes, now 1"):
        Trainer(cfg, tmp_path / "r", data_root=runs / "data", quiet=True, resume=True)


# ---------------------------------------------------------------------------------------- single process
def test_grad_accumulation_equals_the_whole_batch(tmp_path, data_root, tiny_overrides):
    for accum in (1, 4):
        cfg = load_config("sudoku", tiny_overrides + ["train.steps=3", "train.supervision=summed",
                                                      f"train.grad_accum={accum}"] + MODES)
        train(cfg, tmp_path / f"a{accum}", data_root=data_root, quiet=True)
    assert_close(weights(tmp_path / "a1"), weights(tmp_path / "a4"))


def test_activation_checkpointing_recomputes_only_the_grad_recursion(tmp_path, data_root, tiny_overrides,
                                                                    monkeypatch):
    over = tiny_overrides + ["train.steps=2", "train.supervision=summed"]
    train(load_config("sudoku", over), tmp_path / "plain", data_root=data_root, quiet=True)
    calls = []
    real = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = load_config("sudoku", over + ["train.activation_checkpointing=true"])
    trainer = Trainer(cfg, tmp_path / "ckpt", data_root=data_root, quiet=True)
    assert type(trainer.model.core.blocks[0]).__name__ == "CheckpointedBlock"
    trainer.fit()
    m = cfg.model  # per supervision step only the last recursion carries grad: (n_loops + 1) core calls
    assert len(calls) == 2 * m.n_sup_train * (m.n_loops + 1) * m.n_layer
    assert_close(weights(tmp_path / "plain"), weights(tmp_path / "ckpt"), atol=1e-6)


def test_compile_failure_falls_back_to_eager_with_one_line(tmp_path, data_root, tiny_overrides, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no C++ compiler found\nlong details")
    monkeypatch.setattr(torch, "compile", broken)
    lines = []
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=1", "train.compile=true"])
    trainer = Trainer(cfg, tmp_path / "r", data_root=data_root, quiet=True)
    assert not distributed.compile_blocks(trainer.model, lines.append)
    assert len(lines) == 1 and "running eager" in lines[0] and "no C++ compiler found" in lines[0]
    assert trainer.fit()["steps"] == 1


# ---------------------------------------------------------------------------------------- bad launches
needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CUDA-less error")


@needs_no_cuda
@pytest.mark.parametrize("world", ["1", "2"])
def test_nccl_without_cuda_is_a_one_line_error(monkeypatch, capsys, tmp_path, world):
    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    assert cli_main(["train", "sudoku", "train.device=cuda", "--runs-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "CUDA is not available" in err


def test_indivisible_batch_is_a_one_line_error(capsys, tmp_path, data_root, tiny_overrides):
    rc = cli_main(["train", "sudoku", *tiny_overrides, "train.grad_accum=3", "--runs-dir", str(tmp_path),
                   "--data-root", str(data_root), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "divisible" in err
    with pytest.raises(TrmError, match=r"2 x 1 = 2"):  # more processes than the batch splits into
        distributed.check_batch(3, distributed.Dist(world_size=2))
    distributed.check_batch(8, distributed.Dist(world_size=2), grad_accum=4)


def test_fsdp_needs_several_processes(tmp_path, data_root, tiny_overrides):
    with pytest.raises(TrmError, match="several processes"):
        Trainer(load_config("sudoku", tiny_overrides + ["train.fsdp=true"]), tmp_path / "r", data_root=data_root)


def test_launch_env_without_rank_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(TrmError, match="torchrun"):
        distributed.setup("cpu")


# ---------------------------------------------------------------------------------------- the real launcher
@pytest.mark.slow
def test_torchrun_run_killed_after_a_checkpoint_resumes_to_the_same_weights(tmp_path, data_root):
    """``torchrun -m trmlab train``, SIGKILL of the whole process group once a checkpoint exists, ``--resume``."""
    over = TINY + ["train.steps=40", "train.ckpt_interval=5", "train.device=cpu", "train.supervision=per_step"]

    def launch(name, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "trmlab", "train", "sudoku", *over, "--name", name,
               "--runs-dir", str(tmp_path), "--data-root", str(data_root), "--quiet", *extra]
        return subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})

    assert launch("full").wait(timeout=600) == 0
    p = launch("killed")
    deadline = time.time() + 600
    while latest_checkpoint(tmp_path / "killed") is None or latest_checkpoint(tmp_path / "killed").name < "step_0000010":
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (tmp_path / "killed" / "summary.json").exists()
    assert launch("killed", "--resume").wait(timeout=600) == 0
    assert_close(weights(tmp_path / "full"), weights(tmp_path / "killed"), exact=True)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["per_step", "summed"])
def test_compiled_training_equals_eager(tmp_path, data_root, mode):
    over = TINY + ["train.steps=3", f"train.supervision={mode}", "train.activation_checkpointing=true"]
    for compiled in (False, True):
        cfg = load_config("sudoku", over + [f"train.compile={compiled}"])
        trainer = Trainer(cfg, tmp_path / f"c{compiled}", data_root=data_root, quiet=True)
        if compiled:
            assert hasattr(trainer.model.core.blocks[0].forward, "_torchdynamo_orig_callable")
        trainer.fit()
    assert_close(weights(tmp_path / "cFalse"), weights(tmp_path / "cTrue"), atol=1e-4)


def test_compile_auto_compiles_only_runs_long_enough_to_pay_for_it():
    cpu, mps = torch.device("cpu"), torch.device("mps")

    def train(*over):
        return load_config("sudoku", list(over)).train

    assert distributed.wants_compile(train("train.steps=200"), cpu)
    assert not distributed.wants_compile(train("train.steps=199"), cpu)
    assert not distributed.wants_compile(train("train.steps=100000", "train.time_budget_s=60"), cpu)  # a short demo
    assert distributed.wants_compile(train("train.steps=100000", "train.time_budget_s=480"), cpu)
    assert not distributed.wants_compile(train("train.steps=5000"), mps)
    assert distributed.wants_compile(train("train.steps=3", "train.compile=true"), cpu)
    assert not distributed.wants_compile(train("train.steps=5000", "train.compile=false"), cpu)
    assert train("train.compile=False").compile == "false"  # configs saved when compile was a bool still load
