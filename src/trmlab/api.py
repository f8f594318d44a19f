"""The short path from Python: build a model, train a preset, load a checkpoint, solve a puzzle.

    import trmlab.api as trm
    cfg = trm.config("sudoku", "train.steps=200")
    summary = trm.train(cfg, "runs/my-sudoku")
    model, cfg = trm.load("runs/my-sudoku")
    answer, steps = model.predict(batch)
"""

from __future__ import annotations

from pathlib import Path

import torch

from trmlab.config import Config, from_dict, load_config
from trmlab.errors import TrmError
from trmlab.tasks import get_task
from trmlab.tasks import base as task_contract
from trmlab.train.checkpoint import load_checkpoint


def config(preset: str = "sudoku", *overrides: str) -> Config:
    return load_config(preset, list(overrides))


def fill_shapes(cfg: Config) -> Config:
    """Fill vocab_size / seq_len / num_puzzle_ids from what the task knows without building data."""
    task = get_task(cfg.task)
    known = {k: v for k, v in task.shapes(cfg).items() if not getattr(cfg.model, k)}  # what the config left open
    task_contract.fill_shapes(cfg, known, f"task {cfg.task}")
    return cfg


def build_model(cfg: Config) -> torch.nn.Module:
    """A freshly initialised model for ``cfg`` (no data needed when the task knows its shapes)."""
    fill_shapes(cfg)
    return get_task(cfg.task).build_model(cfg)


def load(path: str | Path, use_ema: bool = True, device: str = "cpu"):
    """(model, cfg) from a run directory or checkpoint; the EMA weights by default (the paper evaluates them)."""
    ckpt = load_checkpoint(path, with_optimizer=False, with_ema=use_ema)
    cfg = from_dict(ckpt.state["config"])
    model = get_task(cfg.task).build_model(cfg)
    weights = ckpt.ema if (use_ema and ckpt.ema is not None) else ckpt.model
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise TrmError(f"{ckpt.path}: weights do not match the saved config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), cfg


def train(cfg: Config, run_dir: str | Path, **kw) -> dict:
    from trmlab.train.trainer import train as _train
    return _train(cfg, run_dir, **kw)
