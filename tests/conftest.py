"""Shared fixtures: a tiny Sudoku config that trains in seconds, and single-threaded torch for stable timings."""

import os

import pytest
import torch

torch.set_num_threads(1)
# `trm train` runs one process per core by default; the suite tests one process (tests/test_launch.py the launch)
os.environ.setdefault("TRM_PROCESSES", "1")

TINY = ["model.n_embd=32", "model.n_head=2", "model.n_layer=1", "model.n_loops=2", "model.T_recursion=2",
        "model.n_sup_train=3", "model.n_sup_inference=3", "train.batch_size=8", "train.warmup_steps=2",
        "data.n_train=64", "data.n_test=16", "data.min_blanks=20", "data.max_blanks=25", "train.log_interval=1"]


@pytest.fixture
def tiny_overrides():
    return list(TINY)


@pytest.fixture
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


def train_tiny_run(tmp_path_factory, preset: str, overrides: list[str]):
    """A briefly trained run of ``preset`` (for tests that evaluate a real run): its summary, directory, the held-out
    split it was built with and the scratch folder."""
    from types import SimpleNamespace

    from trmlab.config import load_config
    from trmlab.tasks import get_task
    from trmlab.train.trainer import train
    tmp = tmp_path_factory.mktemp(f"{preset}-run")
    cfg = load_config(preset, overrides)
    summary = train(cfg, tmp / "run", data_root=tmp / "data", quiet=True)
    test = get_task(cfg.task).prepare(cfg, tmp / "data").splits["test"]
    return SimpleNamespace(summary=summary, run=tmp / "run", test=test, tmp=tmp)
