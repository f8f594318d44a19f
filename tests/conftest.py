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
