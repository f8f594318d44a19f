"""Config system: presets, overrides, aliases, and one-line errors for bad keys, types and choices."""

import pytest

from trmlab.config import load_config, replace, save_config
from trmlab.errors import TrmError


def test_overrides_aliases_and_bare_keys():
    cfg = load_config("sudoku", ["L_cycles=5", "H_cycles=4", "halt_max_steps=7", "lr=3e-4", "n_embd=64",
                                 "global_batch_size=32", "mlp_t=true"])
    m, t = cfg.model, cfg.train
    assert (m.n_loops, m.T_recursion, m.n_sup_train, m.n_sup_inference) == (5, 4, 7, 7)
    assert t.lr == pytest.approx(3e-4) and m.n_embd == 64 and t.batch_size == 32
    assert m.core == "mlp_mixer"


def test_unknown_key_names_close_matches():
    with pytest.raises(TrmError, match=r"unknown config key 'model.n_lops'.*model.n_loops"):
        load_config("sudoku", ["model.n_lops=3"])


@pytest.mark.parametrize("override, message", [
    ("model.n_loops=abc", "model.n_loops: expected int"),
    ("model.n_loops=1.5", "model.n_loops: expected int"),
    ("model.core=transformer", "not one of attention, mlp_mixer"),
    ("train.ema_decay=1.5", "ema_decay"),
    ("model.n_loops=0", "must be >= 1"),
    ("train.supervision_weight_base=-3", "supervision_weight_base must be > 0"),
    ("model.mlp_ratio=0", "mlp_ratio"),
    ("train.lr=-1e-4", "train.lr must be >= 0"),
    ("train.warmup_steps=-5", "warmup_steps must be >= 0"),
    ("train.grad_clip=-1", "grad_clip must be >= 0"),
    ("train.beta2=1.0", "beta2 must be in"),
    ("train.lr=nan", "train.lr must be a finite number"),
    ("nonsense", "not key=value"),
])
def test_bad_values_fail_with_one_line(override, message):
    with pytest.raises(TrmError, match=message) as e:
        load_config("sudoku", [override])
    assert "\n" not in str(e.value)


def test_aliases_with_section_and_seed_script_names():
    cfg = load_config("sudoku", ["model.L_cycles=5", "n_sup=3", "model.mlp_t=false", "matrix_lr=2e-3", "depth=3"])
    m = cfg.model
    assert (m.n_loops, m.n_sup_train, m.n_sup_inference, m.core, m.n_layer) == (5, 3, 3, "attention", 3)
    assert cfg.train.lr == pytest.approx(2e-3)
    with pytest.raises(TrmError, match=r"did you mean L_cycles \(= model.n_loops\)"):
        load_config("sudoku", ["model.Lcycles=2"])


def test_config_file_without_task_or_base_is_an_error(tmp_path):
    f = tmp_path / "mine.yaml"
    f.write_text("model:\n  n_embd: 64\n")
    with pytest.raises(TrmError, match="names neither a task"):
        load_config(str(f))
    f.write_text("base: sudoku\nmodel:\n  n_embd: 64\n")
    assert load_config(str(f)).model.n_embd == 64


def test_unknown_preset_suggests_names():
    with pytest.raises(TrmError, match="did you mean sudoku"):
        load_config("sudok")


def test_saved_config_reloads_identically(tmp_path):
    cfg = load_config("sudoku", ["model.n_loops=2", "data.n_train=123"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(str(tmp_path / "config.yaml"))
    assert again.model == cfg.model and again.data == cfg.data and again.train == cfg.train


def test_replace_changes_only_what_it_names():
    cfg = load_config("sudoku")
    base = replace(cfg, model={"n_loops": 1, "T_recursion": 1})
    assert (base.model.n_loops, base.model.T_recursion) == (1, 1)
    assert base.model.n_embd == cfg.model.n_embd and base.train == cfg.train
