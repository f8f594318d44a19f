"""What a run writes as it goes: metrics.jsonl (always), an optional tracker beside it, and summary.json at the end.

Every writer of a run directory's logs (the trainer, GRPO's ``trm latent rl``) goes through here:
  MetricsLog       metrics.jsonl, one JSON record a line, appended as it comes, each also sent to the tracker
  make_logger      the trainer's: metrics.jsonl + the tracker ``train.logger`` names; a no-op on other processes
  write_summary    summary.json, the run's completion marker: written last, to a temporary name, then renamed

Trackers (wandb or tensorboard) are never required: ``train.logger=none`` (the default) or a missing package gives
the no-op one. One tracker run per experiment; a study groups its runs through the TRM_STUDY environment variable
set by `trm study run` (wandb group; tensorboard gets one log directory per run, so
``tensorboard --logdir runs/studies/<scale>/<study>`` shows the study).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from trmlab.atomic import write_text

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


class MetricsLog:
    """A run's metrics.jsonl: each record one JSON line, appended and closed at once (a crash loses at most the
    line being written, which every reader skips), and passed on to ``tracker``."""

    def __init__(self, path: str | Path, tracker=None):
        self.path, self.tracker = Path(path), tracker or NoLogger()

    def log(self, record: dict):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        self.tracker.log(record)

    def close(self):
        self.tracker.close()


def make_logger(cfg, run_dir, is_main: bool = True):
    """The trainer's logger: metrics.jsonl in ``run_dir`` and the tracker; a non-main process logs nothing."""
    if not is_main:
        return NoLogger()
    return MetricsLog(Path(run_dir) / "metrics.jsonl", make_tracker(cfg, run_dir))


def make_tracker(cfg, run_dir):
    kind = cfg.train.logger
    if kind == "none":
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


def write_summary(run_dir: str | Path, summary: dict):
    """summary.json, atomically: written to summary.json.tmp, flushed to disk, then renamed over (a reader never
    sees half of one, and a crash leaves the previous one or none)."""
    write_text(Path(run_dir) / "summary.json", json.dumps(summary, indent=2))
