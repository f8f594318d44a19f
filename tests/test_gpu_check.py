"""`trm bench --gpu-check`: refused in one line without CUDA; its checks run (gloo, small model) on the CPU; and the
CUDA-marked tests it runs on a GPU machine."""

import pytest
import torch

from trmlab import cli
from trmlab.train import gpu_check

cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_check_without_cuda_is_one_line(monkeypatch, capsys):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert cli.main(["bench", "--gpu-check"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trm: error:") and "CUDA" in err and "\n" not in err


def test_every_check_runs_on_the_cpu_and_a_failure_is_a_row(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("planted")
    monkeypatch.setattr(gpu_check, "collective", broken)
    rows = gpu_check.run_gpu_check("cpu", small=True, compiled_too=False, echo=lambda *_: None)
    names = [r["check"] for r in rows]
    assert len(names) == 5 and any("bfloat16" in n for n in names) and any("FSDP2" in n for n in names)
    failed = [r for r in rows if not r["ok"]]
    assert [r["check"] for r in failed] == ["1-process gloo"] and "planted" in failed[0]["result"]
    assert all("ms/step" in r["result"] for r in rows if r["ok"])
    assert "FAIL" in gpu_check.table(rows)


@cuda
@needs_cuda
def test_a_training_step_on_cuda_matches_the_cpu(tmp_path, tiny_overrides):
    from trmlab.config import load_config
    from trmlab.train.trainer import Trainer
    losses = {}
    for device in ("cpu", "cuda"):
        cfg = load_config("sudoku", [*tiny_overrides, f"train.device={device}", "train.loss=softmax"])
        t = Trainer(cfg, tmp_path / device, data_root=tmp_path / "data", quiet=True)
        losses[device] = [t.train_step()["loss"] for _ in range(3)]
    assert losses["cuda"] == pytest.approx(losses["cpu"], rel=1e-3)


@cuda
@needs_cuda
def test_bf16_autocast_on_cuda_trains(tmp_path, tiny_overrides):
    from trmlab.config import load_config
    from trmlab.train.trainer import Trainer
    cfg = load_config("sudoku", [*tiny_overrides, "train.device=cuda", "train.dtype=bfloat16", "train.lr=1e-2",
                                 "train.loss=softmax"])
    t = Trainer(cfg, tmp_path / "bf16", data_root=tmp_path / "data", quiet=True)
    losses = [t.train_step()["loss"] for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


def test_the_checks_leave_no_process_group_behind(monkeypatch):
    import os

    import torch.distributed as dist
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert gpu_check.collective("cpu").startswith("gloo")
    assert not dist.is_initialized() and "WORLD_SIZE" not in os.environ
