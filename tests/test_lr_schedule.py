"""The learning-rate schedule: linear warmup, then constant, cosine or linear decay, applied to every group."""

import json
import math
from types import SimpleNamespace

import pytest

from trmlab.config import load_config
from trmlab.train.optim import lr_factor
from trmlab.train.trainer import Trainer


def schedule(kind, steps=10, warmup=2, min_ratio=0.1):
    return SimpleNamespace(schedule=kind, steps=steps, warmup_steps=warmup, min_lr_ratio=min_ratio)


def test_warmup_rises_linearly_then_each_schedule_has_its_shape():
    for kind in ("constant", "cosine", "linear"):
        t = schedule(kind)
        assert [lr_factor(s, t) for s in (0, 1)] == [0.5, 1.0]  # (step + 1) / warmup
    assert [lr_factor(s, schedule("constant")) for s in (2, 5, 9, 50)] == [1.0] * 4
    cosine, linear = schedule("cosine"), schedule("linear")
    # progress = (step - warmup) / (steps - warmup): 0 at step 2, 1/2 at step 6, 1 at step 10
    assert lr_factor(2, cosine) == pytest.approx(1.0) and lr_factor(10, cosine) == pytest.approx(0.1)
    assert lr_factor(6, cosine) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_factor(6, linear) == pytest.approx(0.1 + 0.9 * 0.5) and lr_factor(10, linear) == pytest.approx(0.1)
    assert lr_factor(4, cosine) > lr_factor(6, cosine) > lr_factor(8, cosine)


def test_the_trainer_sets_each_group_to_its_base_lr_times_the_schedule(tmp_path, data_root, tiny_overrides):
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=6", "train.warmup_steps=2", "train.schedule=linear",
                                                  "train.min_lr_ratio=0.25", "train.lr=0.01",
                                                  "train.embedding_lr=0.002"])
    trainer = Trainer(cfg, tmp_path / "r", data_root=data_root, quiet=True)
    seen, step = [], trainer.train_step

    def step_and_record():  # the LRs each optimizer group stepped with
        record = step()
        seen.append({g["name"]: g["lr"] for opt in trainer.optimizers for g in opt.param_groups})
        return record
    trainer.train_step = step_and_record
    trainer.fit()
    factors = [lr_factor(s, cfg.train) for s in range(6)]
    assert factors[0] == 0.5 and factors[-1] < 1.0  # warming up at the start, decaying at the end
    assert len(seen) == 6
    for groups, f in zip(seen, factors):
        assert groups["matrix"] == pytest.approx(0.01 * f) and groups["embed"] == pytest.approx(0.002 * f)
    logged = [json.loads(ln)["lr"] for ln in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
              if '"lr"' in ln]
    assert logged == pytest.approx([0.01 * f for f in factors])
