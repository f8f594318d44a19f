"""Optional experiment trackers beside metrics.jsonl (always written): wandb or tensorboard, never required.

``make_logger(cfg, run_dir)`` returns an object with ``log(record)`` and ``close()``. ``train.logger=none`` (the
default), a missing package or a non-main process gives the no-op one. One tracker run per experiment; a study
groups its runs through the TRM_STUDY environment variable set by `trm study run` (wandb group; tensorboard
gets one log directory per run, so ``tensorboard --logdir runs/studies/<scale>/<study>`` shows the study).
"""

from __future__ import annotations

import os

_warned: set = set()


def _once(msg: str):
    if msg not in _warned:
        _warned.add(msg)
        print(msg)


def _scalars(record: dict, prefix: str = "") -> dict:
    """Flatten {"loss": .., "eval": {"exact_acc": ..}} into scalar tags: loss, eval/exact_acc."""
    out = {}
    for k, v in record.items():
        if isinstance(v, dict):
            out.update(_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step":
            out[prefix + k] = v
    return out


class NoLogger:
    def log(self, record: dict):
        pass

    def close(self):
        pass


class WandbLogger:
    def __init__(self, wandb, cfg, run_dir):
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "trmlab"), group=os.environ.get("TRM_STUDY"),
                              name=cfg.name or None, dir=str(run_dir), config=cfg.to_dict(), resume="allow",
                              id=os.environ.get("WANDB_RUN_ID"))

    def log(self, record: dict):
        self.run.log(_scalars(record), step=int(record.get("step", 0)))

    def close(self):
        self.run.finish()


class TensorboardLogger:
    def __init__(self, writer_cls, run_dir):
        self.writer = writer_cls(log_dir=str(run_dir / "tensorboard"))

    def log(self, record: dict):
        for tag, value in _scalars(record).items():
            self.writer.add_scalar(tag, value, int(record.get("step", 0)))

    def close(self):
        self.writer.close()


def make_logger(cfg, run_dir, is_main: bool = True):
    kind = cfg.train.logger
    if kind == "none" or not is_main:
        return NoLogger()
    try:
        if kind == "wandb":
            import wandb
            return WandbLogger(wandb, cfg, run_dir)
        from torch.utils.tensorboard import SummaryWriter
        return TensorboardLogger(SummaryWriter, run_dir)
    except ImportError:
        _once(f"train.logger={kind}: the package is not installed (pip install {kind}); logging to metrics.jsonl only")
        return NoLogger()
