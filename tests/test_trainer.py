"""The training loop: exact resume, checkpoints, refusal to clobber runs, non-finite steps, EMA, both modes."""

import json

import pytest
import torch
from safetensors.torch import load_file

from trmlab.config import load_config
from trmlab.errors import TrmError
from trmlab.train.checkpoint import latest_checkpoint, load_checkpoint
from trmlab.train.supervision import supervision_weights
from trmlab.train.trainer import Trainer, train


def weights(run_dir):
    return load_file(latest_checkpoint(run_dir) / "model.safetensors")


@pytest.mark.parametrize("mode, optimizer, prefix", [("per_step", "adam_atan2", 2), ("summed", "adam_atan2", 0),
                                                     ("per_step", "adamw", 0)])
def test_resumed_run_equals_uninterrupted_run(tmp_path, data_root, tiny_overrides, mode, optimizer, prefix):
    extra = [f"train.supervision={mode}", "train.supervision_weight_base=3", "train.improvement_reward_scale=0.5",
             f"train.optimizer={optimizer}", f"model.puzzle_emb_len={prefix}"]  # prefix: + the sign-SGD table
    full = load_config("sudoku", tiny_overrides + extra + ["train.steps=6"])
    train(full, tmp_path / "full", data_root=data_root, quiet=True)

    first = load_config("sudoku", tiny_overrides + extra + ["train.steps=3"])
    train(first, tmp_path / "split", data_root=data_root, quiet=True)
    second = load_config("sudoku", tiny_overrides + extra + ["train.steps=6"])
    train(second, tmp_path / "split", data_root=data_root, quiet=True, resume=True)

    a, b = weights(tmp_path / "full"), weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = load_file(latest_checkpoint(tmp_path / "full") / "ema.safetensors")
    ema_b = load_file(latest_checkpoint(tmp_path / "split") / "ema.safetensors")
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    steps = [json.loads(l)["step"] for l in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
             if "eval" not in l]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 6  # no duplicated records


def test_run_writes_config_metrics_summary_and_checkpoint(tmp_path, data_root, tiny_overrides):
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=2"])
    summary = train(cfg, tmp_path / "run", data_root=data_root, quiet=True)
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "metrics.jsonl").exists()
    assert json.loads((run / "summary.json").read_text())["steps"] == 2
    ev = summary["eval"]
    assert len(ev["exact_acc_per_step"]) == cfg.model.n_sup_inference
    assert 0 <= ev["exact_acc"] <= 1 and 0 <= ev["cell_acc"] <= 1
    ckpt = load_checkpoint(run)
    assert ckpt.state["step"] == 2 and ckpt.ema is not None and ckpt.optimizers


def test_existing_run_directory_is_refused(tmp_path, data_root, tiny_overrides):
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=1"])
    train(cfg, tmp_path / "run", data_root=data_root, quiet=True)
    before = (tmp_path / "run" / "summary.json").read_text()
    with pytest.raises(TrmError, match="already exists"):
        Trainer(cfg, tmp_path / "run", data_root=data_root, quiet=True)
    assert (tmp_path / "run" / "summary.json").read_text() == before


def test_resume_with_a_different_model_is_refused(tmp_path, data_root, tiny_overrides):
    train(load_config("sudoku", tiny_overrides + ["train.steps=1"]), tmp_path / "r", data_root=data_root, quiet=True)
    other = load_config("sudoku", tiny_overrides + ["train.steps=2", "model.n_loops=1"])
    with pytest.raises(TrmError, match=r"model.n_loops is 2 in the run, 1 given.*trm train .* --resume"):
        Trainer(other, tmp_path / "r", data_root=data_root, quiet=True, resume=True)


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_saves_after_the_step_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, data_root,
                                                                                     tiny_overrides, signum):
    import os
    import signal
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=5"])   # no ckpt_interval: only the final save
    train(cfg, tmp_path / "full", data_root=data_root, quiet=True)
    trainer = Trainer(cfg, tmp_path / "cut", data_root=data_root, quiet=True)
    step = trainer.train_step

    def step_then_ctrl_c():   # Ctrl-C arrives while step 2 is still running
        record = step()
        if trainer.step == 2:
            os.kill(os.getpid(), getattr(signal, signum))
        return record
    trainer.train_step = step_then_ctrl_c
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(tmp_path / "cut").state["step"] == 2 and not (tmp_path / "cut" / "summary.json").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the handlers are put back
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    train(cfg, tmp_path / "cut", data_root=data_root, quiet=True, resume=True)
    a, b = weights(tmp_path / "full"), weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_a_checkpoint_starts_over_without_duplicate_records(tmp_path, data_root, tiny_overrides):
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=2"])
    run = tmp_path / "r"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n{"step": 2, "loss": 8.0}\n')  # killed, no ckpt
    train(cfg, run, data_root=data_root, quiet=True, resume=True)
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if "eval" not in l]
    assert steps == [1, 2] and 9.0 not in [json.loads(l).get("loss") for l in (run / "metrics.jsonl").open()]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, data_root, tiny_overrides):
    train(load_config("sudoku", tiny_overrides + ["train.steps=1"]), tmp_path / "r", data_root=data_root, quiet=True)
    f = latest_checkpoint(tmp_path / "r") / "model.safetensors"
    f.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(TrmError, match="corrupt or unreadable"):
        load_checkpoint(tmp_path / "r")


def test_nonfinite_loss_is_skipped_and_logged(tmp_path, data_root, tiny_overrides, monkeypatch):
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=3"])
    trainer = Trainer(cfg, tmp_path / "r", data_root=data_root, quiet=True)
    real = trainer.task.losses
    calls = {"n": 0}

    def flaky(out, batch, c):
        loss, correct, m = real(out, batch, c)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 2 else loss), correct, m

    monkeypatch.setattr(trainer.task, "losses", flaky)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train_step()
    after_one = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    record = trainer.train_step()  # the NaN step: no update
    assert record.get("skipped_nonfinite")
    assert all(torch.equal(after_one[k], v) for k, v in trainer.model.state_dict().items())
    assert any(not torch.equal(before[k], after_one[k]) for k in before)
    summary = trainer.fit()
    assert summary["nonfinite_steps"] == 1 and summary["steps"] == 3


def test_per_step_mode_replaces_samples_after_n_sup_train_steps(tmp_path, data_root, tiny_overrides):
    cfg = load_config("sudoku", tiny_overrides + ["model.halting=none", "model.n_sup_train=2", "train.steps=4"])
    trainer = Trainer(cfg, tmp_path / "r", data_root=data_root, quiet=True)
    trainer.train_step()
    first_inputs = trainer.carry["inputs"].clone()
    assert trainer.carry["steps"].tolist() == [1] * 8 and not trainer.carry["halted"].any()
    trainer.train_step()
    assert torch.equal(trainer.carry["inputs"], first_inputs)  # same puzzles, second supervision step
    assert trainer.carry["halted"].all()
    trainer.train_step()
    assert trainer.carry["steps"].tolist() == [1] * 8  # all replaced by fresh puzzles
    assert not torch.equal(trainer.carry["inputs"], first_inputs)


def test_evaluation_uses_the_ema_weights(tmp_path, data_root, tiny_overrides):
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=2", "train.ema_decay=0.5"])
    trainer = Trainer(cfg, tmp_path / "r", data_root=data_root, quiet=True)
    trainer.train_step()
    trainer.train_step()
    assert trainer.eval_model() is trainer.ema.model
    p = next(trainer.model.parameters())
    q = next(trainer.ema.model.parameters())
    assert not torch.equal(p, q)


def test_summed_weights_grow_with_base():
    w = supervision_weights(4, 5.0)
    assert torch.isclose(w.sum(), torch.tensor(1.0)) and torch.isclose(w[-1] / w[0], torch.tensor(5.0))
    assert torch.allclose(supervision_weights(3, 1.0), torch.full((3,), 1 / 3))


def test_ema_decay_warms_up_then_holds():
    from trmlab.train.ema import EMA
    ema = EMA(torch.nn.Linear(2, 2), 0.999)
    assert ema.decay_at(0) == pytest.approx(0.1)
    assert ema.decay_at(90) == pytest.approx(0.91)
    assert ema.decay_at(100_000) == 0.999


def test_adamw_is_fused_where_pytorch_has_the_kernel():
    from trmlab.train.optim import adamw
    p = torch.nn.Parameter(torch.randn(4, 4))
    assert adamw([{"params": [p]}], (0.9, 0.95)).defaults["fused"]


def test_epochs_set_steps_as_the_paper_counts_them(tmp_path, data_root, tiny_overrides):
    # Sudoku: one augmented view of each of the 64 base puzzles per epoch, whatever the number of views
    cfg = load_config("sudoku", tiny_overrides + ["train.epochs=0.5", "train.steps=999", "data.num_aug=3"])
    summary = train(cfg, tmp_path / "run", data_root=data_root, quiet=True)
    assert summary["steps"] == int(0.5 * 64 / 8)
    assert load_config(str(tmp_path / "run")).train.steps == summary["steps"]  # the saved config says so too


def test_epoch_examples_count_an_arc_view_by_its_demo_pairs():
    import numpy as np

    from trmlab.data.puzzles import PuzzleSplit
    from trmlab.tasks.arc import ArcTask
    from trmlab.tasks.puzzle import PuzzleData, PuzzleTask
    ids = np.array([1, 1, 2, 2, 3, 3, 3, 3])        # 3 views (puzzle ids) of 2 tasks: 8 demo pairs in all
    pairs = np.array([0, 1, 0, 1, 2, 3, 2, 3])      # ARC groups: one per (task, pair)
    rows = np.zeros((8, 4), dtype=np.uint8)
    split = PuzzleSplit(rows, rows, ids.astype(np.int32), pairs.astype(np.int32))
    meta = {"num_puzzle_ids": 4, "puzzles": [None, "a|v0", "a|v1", "b|v0"]}
    data = PuzzleData(None, {"train": split}, meta)
    assert ArcTask().epoch_examples(data) == pytest.approx(2 * 8 / 3)   # tasks x mean pairs per view
    sudoku_like = PuzzleData(None, {"train": PuzzleSplit(rows, rows, np.zeros(8, np.int32), pairs.astype(np.int32))},
                             {"num_puzzle_ids": 1})
    assert PuzzleTask().epoch_examples(sudoku_like) == pytest.approx(4)  # no ids: one row per view, 4 base puzzles


def test_ctrl_c_during_the_final_evaluation_keeps_the_trained_steps(tmp_path, data_root, tiny_overrides):
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=3"])
    trainer = Trainer(cfg, tmp_path / "r", data_root=data_root, quiet=True)

    def interrupted_evaluation():
        raise KeyboardInterrupt
    trainer.evaluate = interrupted_evaluation
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(tmp_path / "r").state["step"] == 3   # saved before the evaluation began


def test_resume_with_more_steps_records_them_in_the_run_config(tmp_path, data_root, tiny_overrides):
    train(load_config("sudoku", tiny_overrides + ["train.steps=2"]), tmp_path / "r", data_root=data_root, quiet=True)
    train(load_config("sudoku", tiny_overrides + ["train.steps=4"]), tmp_path / "r", data_root=data_root, quiet=True,
          resume=True)
    assert load_config(str(tmp_path / "r")).train.steps == 4


def test_a_run_that_fails_to_start_leaves_no_directory(tmp_path, data_root, tiny_overrides):
    cfg = load_config("sudoku", tiny_overrides + ["data.source=" + str(tmp_path / "missing.csv")])
    with pytest.raises(TrmError):
        Trainer(cfg, tmp_path / "r", data_root=data_root, quiet=True)
    assert not (tmp_path / "r").exists()
