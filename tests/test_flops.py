"""The one FLOP model (eval/flops.py) against a count by hand, and the run contract that feeds it: the summary
records the core / head split and the metric's direction, and the study results count with the run's own shapes."""

from types import SimpleNamespace

import pytest

from trmlab.config import ModelConfig, TrainConfig, load_config
from trmlab.eval.flops import flops_per_token, inference_flops, matmul_params, sample_flops, step_flops
from trmlab.studies.results import flops, gather, lower_is_better
from trmlab.train.trainer import Trainer

from conftest import TINY


def tiny(arch="recursive", core="attention", supervision="summed"):
    m = ModelConfig(n_embd=8, n_head=2, n_layer=1, seq_len=4, puzzle_emb_len=1, n_loops=1, T_recursion=2,
                    n_sup_train=3, n_sup_inference=3, core=core, arch=arch)
    return SimpleNamespace(model=m, train=TrainConfig(batch_size=2, supervision=supervision))


def test_counts_match_a_hand_count():
    # ctx = 4 + 1 tokens through the core; attention 2 x 1 layer x 5 x 8 = 80 per token; a core call
    # 5 x (2 x 100 + 80) = 1400; the head 4 positions x 2 x 10 = 80. Two recursions of n+1 = 2 calls each:
    # training 3 x 2 x 1400 (backpropagated) + 2 x 1400 (no grad) + 3 x 80 = 11440; inference 4 x 1400 + 80.
    cfg = tiny()
    assert sample_flops(cfg.model, 100, 10, training=True) == 11440
    assert sample_flops(cfg.model, 100, 10, training=False) == 5680
    assert step_flops(cfg, 100, 10) == 2 * 3 * 11440                  # summed: batch x all 3 supervision steps
    assert step_flops(tiny(supervision="per_step"), 100, 10) == 2 * 11440   # one supervision step per sample
    assert flops_per_token(cfg, 100, 10) == 2 * 3 * 11440 / (2 * 4)   # over the seq_len positions, not the prefix
    assert inference_flops(cfg.model, 100, 10) == 3 * 5680 and inference_flops(cfg.model, 100, 10, 1.5) == 8520
    # a plain GPT runs its blocks once, whatever n_sup says
    assert step_flops(tiny(arch="gpt"), 100, 10) == 2 * (3 * 1400 + 3 * 80)
    # an MLP-mixer core: no attention term; its 40 token-mixing weights act once per channel (2 x 8 each), the
    # other 60 once per token (2 x 5 each): a call is 600 + 640
    assert sample_flops(tiny(core="mlp_mixer").model, 100, 10, False, mixer_params=40) == 4 * (600 + 640) + 80


def test_the_model_is_the_counted_flops_of_a_mixer_training_step(tmp_path, data_root):
    # Sudoku's MLP-mixer core has no attention, whose counting conventions differ: there the model must agree
    # with torch's FlopCounterMode over a real training step (norms and activations are not matmuls either way)
    from trmlab.train.benchmark import count_step
    cfg = load_config("sudoku", TINY)
    trainer = Trainer(cfg, tmp_path / "r", data_root=data_root, quiet=True)
    counted, _ = count_step(trainer)
    assert step_flops(cfg, **matmul_params(trainer.model)) == pytest.approx(counted, rel=2e-3)


def test_matmul_params_split_a_built_model():
    cfg = load_config("lm-tiny", ["model.vocab_size=128", "model.n_embd=16", "model.n_head=2", "model.n_kv_head=1"])
    from trmlab.models.lm import build_lm
    model = build_lm(cfg.model)
    split = matmul_params(model)
    assert split["core_params"] == sum(p.numel() for p in model.core.parameters())
    assert 0 < split["mixer_params"] == sum(p.numel() for b in model.core.blocks for p in b.mixer.parameters())
    assert split["head_params"] == model.head.weight.numel() == 128 * 16


def test_the_summary_feeds_the_results_with_the_runs_own_shapes(tmp_path, data_root):
    cfg = load_config("sudoku", TINY + ["train.steps=2"])
    trainer = Trainer(cfg, tmp_path / "runs" / "r", data_root=data_root, quiet=True)
    summary = trainer.fit()
    assert summary["lower_is_better"] is False and summary["metric"] == "exact_acc"
    assert summary["core_params"] == sum(p.numel() for p in trainer.model.core.parameters()) > 0
    df, problems = gather(tmp_path / "runs")
    row = df.set_index("exp_id").loc["r"]
    assert row["flops_per_step"] == step_flops(cfg, **matmul_params(trainer.model))
    assert row["train_flops"] == 2 * row["flops_per_step"] and not row["lower_is_better"]


def test_results_never_assume_a_sudoku_length():
    row = {"params": 1000, "steps": 10, **{f"model.{k}": v for k, v in
           {"seq_len": 30, "n_loops": 1, "T_recursion": 1, "n_layer": 1, "core": "mlp_mixer"}.items()}}
    longer = {**row, "model.seq_len": 60}
    assert flops(longer)["flops_per_step"] == 2 * flops(row)["flops_per_step"] > 0
    assert flops({**row, "model.seq_len": 0}) == {}   # shapes never filled: unknown, not 81 tokens


def test_direction_is_the_summarys_then_the_tasks():
    assert lower_is_better({"lower_is_better": True, "metric": "exact_acc"}, "sudoku") is True
    assert lower_is_better({"metric": "val_loss"}, "lm") is True          # an older LM run: its task's word
    assert lower_is_better({"metric": "exact_acc"}, "sudoku") is False
    assert lower_is_better({"metric": "val_loss"}, "no-such-task") is False
