"""Scaling studies: seed 004's specs, tiny scale, runner (skip / kill / resume / failures / submitit), results,
fits, Pareto fronts, reports, curriculum recursion, annealed ACT exploration, optional loggers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from trmlab.config import load_config
from trmlab.errors import TrmError
from trmlab.studies import specs
from trmlab.studies.fits import fit_power_law
from trmlab.studies.plots import pareto_front
from trmlab.studies.results import gather
from trmlab.studies.runner import execute, plan, run_status
from trmlab.train.curriculum import act_exploration, recursion_depth

SEED_004_COUNTS = {"model_size": 6, "recursion_depth": 11, "depth_vs_recursion": 5, "data_scaling": 11,
                   "supervision_steps": 6, "batch_size": 6, "precision": 3, "ema": 5, "optimizer": 5,
                   "lr_schedule": 5, "curriculum": 2, "adaptive_halting": 2}

# A study small enough for the test suite: 3 runs on the CPU preset, a few steps each.
FAST = ["model.n_head=2", "model.n_layer=1", "model.n_loops=1", "model.T_recursion=1", "model.n_sup_train=2",
        "model.n_sup_inference=2", "data.min_blanks=20", "data.max_blanks=25", "train.eval_samples=8"]


SEED_004 = [s for s in specs.STUDIES if s.base == specs.BASE_PRESET]  # the project's own (looped_lm) aside


def test_seed_004_ids_and_counts():
    assert {s.name: len(s.experiments) for s in SEED_004} == SEED_004_COUNTS
    ids = [e.id for _, e in specs.all_experiments(SEED_004)]
    assert len(ids) == len(set(ids)) == 67
    expected = ([f"exp01{c}" for c in "abcdef"] + [f"exp02a_{i:02d}" for i in range(1, 7)]
                + [f"exp02b_{i:02d}" for i in range(1, 6)] + [f"exp03{c}" for c in "abcde"]
                + [f"exp04a_{n}" for n in (100, 250, 500, 1000, 2000, 5000)]
                + [f"exp04b_{a:04d}" for a in (10, 100, 500, 1000, 2000)] + [f"exp05_{c}" for c in "abcdef"]
                + [f"exp06_{c}" for c in "abcdef"] + [f"exp07{c}" for c in "abc"] + [f"exp08{c}" for c in "abcde"]
                + [f"exp09{c}" for c in "abcde"] + [f"exp10{c}" for c in "abcde"]
                + ["contrib01_baseline", "contrib01_curriculum", "contrib02_baseline", "contrib02_adaptive"])
    assert ids == expected
    assert len(specs.arch_configs()) == 34


def test_selection_by_name_prefix_glob():
    ids = lambda pats: [e.id for _, e in specs.select(pats)[0]]  # noqa: E731
    assert ids(["exp02a"]) == [f"exp02a_{i:02d}" for i in range(1, 7)]
    assert len(ids(["recursion_depth"])) == 11 and len(ids(["exp02"])) == 11
    assert ids(["exp0[78]a"]) == ["exp07a", "exp08a"]
    assert ids(["baseline"]) == ["baseline"]
    chosen, unmatched = specs.select(["exp01a", "nope"])
    assert [e.id for _, e in chosen] == ["exp01a"] and unmatched == ["nope"]
    # an exact id selects only itself, although it is also a prefix of another id (exp04a_1000)
    assert ids(["exp04a_100"]) == ["exp04a_100"] and ids(["exp04b_0010"]) == ["exp04b_0010"]
    assert ids(["exp04a_10"]) == ["exp04a_100", "exp04a_1000"]  # not an id: still a prefix
    assert len(ids(["exp04a"])) == 6 and len(ids(["data_scaling"])) == 11


def test_study_cli_exact_id_runs_one_experiment(tmp_path, capsys):
    rc, out = _trm(capsys, "study", "run", "exp04a_100", "--scale", "tiny", "--base", "sudoku", "--dry-run",
                   "--runs-dir", str(tmp_path / "runs"))
    assert rc == 0 and out.count("trmlab.cli train") == 1 and "--name exp04a_100 " in out


def test_experiments_that_do_not_apply_to_the_base_fail_up_front(tmp_path, capsys):
    with pytest.raises(TrmError, match=r"exp04a_100.*data\.subsample_size.*task 'maze'") as e:
        specs.check_applies(specs.select(["data_scaling"])[0], "maze")
    assert "\n" not in str(e.value) and "exp04b" not in str(e.value)  # maze has num_aug: exp04b is not named
    with pytest.raises(TrmError, match=r"data\.n_train.*task 'lm'"):
        specs.check_applies(specs.select(["exp04a_250"])[0], "lm-tiny")
    specs.check_applies(specs.select(["data_scaling", "exp10"])[0], "sudoku")  # same task: applies
    specs.check_applies(specs.select(["exp10"])[0], "maze")  # train.* keys exist on every task
    runs = tmp_path / "runs"
    rc, out = _trm(capsys, "study", "run", "data_scaling", "--scale", "tiny", "--base", "maze",
                   "--runs-dir", str(runs), "--data-root", str(tmp_path / "data"))
    assert rc == 2 and "do not apply to maze" in out and "trmlab.cli train" not in out and not runs.exists()


def test_every_experiment_is_a_valid_config_at_both_scales():
    for _, exp in specs.all_experiments(SEED_004):
        full = specs.resolved_config(exp, "sudoku-paper", "full")
        tiny = specs.resolved_config(exp, "sudoku-paper", "tiny")
        assert tiny["train"]["steps"] < full["train"]["steps"] and tiny["model"]["n_embd"] < full["model"]["n_embd"]
        assert tiny["data"]["source"] == "generate" and tiny["train"]["eval_samples"] <= specs.TINY_EVAL


def test_relative_overrides_and_tiny_keep_the_ratios():
    base = load_config("sudoku-paper")
    a = load_config("sudoku-paper", specs.resolve(specs.select(["exp06_a"])[0][0][1]))
    f = load_config("sudoku-paper", specs.resolve(specs.select(["exp06_f"])[0][0][1]))
    assert a.train.batch_size == base.train.batch_size // 4 and f.train.batch_size == base.train.batch_size * 8
    assert a.train.lr == pytest.approx(base.train.lr / 2) and a.train.steps == base.train.steps * 4
    tiny = {e: load_config("sudoku-paper", specs.resolve(specs.select([e])[0][0][1], scale="tiny"))
            for e in ("exp06_a", "exp06_c", "exp06_f")}
    assert tiny["exp06_c"].train.steps == specs.TINY_STEPS and tiny["exp06_c"].train.batch_size == specs.TINY_BATCH
    assert tiny["exp06_a"].train.steps == 4 * specs.TINY_STEPS and tiny["exp06_f"].train.batch_size == 8 * 16
    widths = [load_config("sudoku", specs.resolve(e, "sudoku", "tiny")).model.n_embd
              for e in specs.get_study("model_size").experiments]
    assert widths == [d // specs.TINY_WIDTH_DIV for d in (256, 384, 512, 768, 1024, 1536)]
    # exp04a counts puzzles: a CSV/HF subsample size becomes the generated count at tiny scale
    data = [load_config("sudoku-paper", specs.resolve(e, scale="tiny")).data.n_train
            for e in specs.get_study("data_scaling").experiments[:6]]
    assert data == [max(16, n // 10) for n in (100, 250, 500, 1000, 2000, 5000)]
    # exp04b's augmentations keep their 10:100:500:1000:2000 ratios (none rounds down to 0) on both bases
    for base in ("sudoku-paper", "sudoku"):
        augs = [load_config(base, specs.resolve(e, base, "tiny")).data.num_aug
                for e in specs.get_study("data_scaling").experiments[6:]]
        assert augs[0] >= 1 and [a / augs[0] for a in augs] == [1, 10, 50, 100, 200]
    assert specs.tiny_overrides(load_config("sudoku", ["data.num_aug=3"]).to_dict(),
                                specs.base_dict("sudoku"))[-1] == "data.num_aug=1"


def test_bad_override_and_bad_relative_value_fail_in_one_line(tmp_path):
    exp = specs.Experiment("x1", ("model.not_a_key=3",))
    good = specs.Experiment("x2", ("model.n_loops=2",))
    study = specs.Study("s", "S", "", [exp, good], base="sudoku")
    plans = plan([(study, exp), (study, good)], tmp_path, "tiny")
    assert plans[0].action == "invalid" and "model.not_a_key" in plans[0].error and "\n" not in plans[0].error
    assert plans[1].action == "run"
    lines = []
    counts = execute(plans, dry_run=True, echo=lines.append)
    assert counts["invalid"] == 1 and "invalid config" in lines[0] and "trmlab.cli train sudoku" in lines[1]
    assert not (tmp_path / "s").exists()  # a dry run writes nothing
    with pytest.raises(TrmError, match=r"\*<number>"):
        specs.resolve(specs.Experiment("x3", ("train.lr=*abc",)), "sudoku")


def test_fit_recovers_known_parameters():
    x = np.geomspace(1e5, 3e7, 7)
    y = 0.9 - 5.0 * x ** -0.3 + np.random.default_rng(0).normal(0, 0.001, len(x))
    fit = fit_power_law(x, y)
    assert fit.meaningful and fit.r2 > 0.99
    assert fit.a == pytest.approx(0.9, abs=0.01) and fit.c == pytest.approx(0.3, abs=0.03)
    assert fit.b == pytest.approx(5.0, rel=0.25) and 0 < fit.c_err < 0.1


@pytest.mark.parametrize("x,y,why", [([1e5, 1e6, 1e7], [0.1, 0.5, 0.7], "at least 4"),
                                     ([1e5, 1e6, 1e7, 1e8], [0.3] * 4, "same"),
                                     ([1e5, 1e5, 1e6, 1e6], [0.1, 0.2, 0.5, 0.6], "distinct"),
                                     # a step (one point up, the rest at 0): the exponent runs to its bound
                                     ([2, 4, 6, 8, 10, 12], [0.014, 0, 0, 0, 0, 0], "bound")])
def test_fit_says_when_it_is_not_meaningful(x, y, why):
    fit = fit_power_law(x, y)
    assert not fit.meaningful and why in fit.verdict and "not meaningful" in fit.describe()


def test_pareto_front_on_a_known_set():
    # (cost, accuracy): (3, 0.5) is beaten by (2, 0.6); (5, 0.6) ties (2, 0.6) at a higher cost.
    pts = [(1, 0.2), (2, 0.6), (3, 0.5), (4, 0.8), (5, 0.6), (6, 0.9), (0.5, 0.1)]
    front = pareto_front([p[0] for p in pts], [p[1] for p in pts])
    assert [pts[i] for i in front] == [(0.5, 0.1), (1, 0.2), (2, 0.6), (4, 0.8), (6, 0.9)]
    # a loss: lower is better, so only runs no cheaper run beats on lower loss are on the front
    loss = [(1, 5.0), (2, 4.0), (3, 4.5), (4, 3.0), (5, 3.0)]
    front = pareto_front([p[0] for p in loss], [p[1] for p in loss], lower_is_better=True)
    assert [loss[i] for i in front] == [(1, 5.0), (2, 4.0), (4, 3.0)]


def _fake_run(d: Path, n_embd: int, acc: float, summary=True):
    d.mkdir(parents=True)
    cfg = load_config("sudoku", [f"model.n_embd={n_embd}", "model.seq_len=81"]).to_dict()
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s, "exact_acc": acc * s / 10})
                                             + "\n" for s in range(1, 11)))
    if summary:
        params = 12 * n_embd ** 2
        (d / "summary.json").write_text(json.dumps({
            "steps": 10, "train_time_s": 1.0 * n_embd, "s_per_step": 0.1, "params": params,
            "params_without_puzzle_emb": params, "effective_depth": 48, "metric": "exact_acc",
            "eval": {"exact_acc": acc, "cell_acc": 0.5 + acc / 2, "exact_acc_per_step": [acc / 2, acc],
                     "exact_acc_act": acc * 0.9, "mean_steps_act": 1.5, "n_sup_inference": 2}}))


def test_results_and_report_tolerate_corrupt_and_partial_runs(tmp_path):
    root = tmp_path / "model_size"
    for i, (w, acc) in enumerate([(32, 0.1), (64, 0.3), (128, 0.45), (256, 0.5)]):
        _fake_run(root / f"r{i}", w, acc)
    _fake_run(root / "partial", 48, 0.0, summary=False)
    _fake_run(root / "corrupt", 48, 0.2)
    (root / "corrupt" / "summary.json").write_text("{not json")
    with open(root / "r0" / "metrics.jsonl", "a") as f:
        f.write('{"step": 11, "lo')  # a crash mid-line
    df, problems = gather(root)
    status = dict(zip(df["exp_id"], df["status"]))
    assert status == {"r0": "done", "r1": "done", "r2": "done", "r3": "done", "partial": "interrupted",
                      "corrupt": "corrupt"}
    assert len(problems) == 3 and all("\n" not in p for p in problems)
    done = df[df.status == "done"].set_index("exp_id")
    assert done.loc["r1", "compute_saved_act"] == pytest.approx(0.25)
    assert done.loc["r1", "train_flops"] > done.loc["r0", "train_flops"] > 0
    from trmlab.studies.report import compute_fits, render_markdown, Report
    fits = compute_fits(df[df.status == "done"])
    md = render_markdown(Report(tmp_path, df, problems, fits), {"title": "model size"}, root)
    assert "| partial | interrupted" in md and "Adaptive halting" in md and "exact_acc vs params" in md
    assert "Best run by exact_acc (higher is better): r3 (0.5)" in md
    assert "summary.json is corrupt" in md and set(fits) == {"params"}


def test_curriculum_schedule_and_exploration_annealing():
    t = load_config("sudoku", ["train.curriculum=linear", "train.curriculum_steps=10", "train.curriculum_n_loops=1",
                               "train.curriculum_T_recursion=1", "model.n_loops=5", "model.T_recursion=3",
                               "train.act_exploration=0.3", "train.act_exploration_final=0.05", "train.steps=100"])
    depths = [recursion_depth(s, t.train, t.model) for s in range(12)]
    assert depths[0] == (1, 1) and depths[5] == (3, 2) and depths[10] == depths[11] == (5, 3)
    assert all(a <= b for a, b in zip(depths, depths[1:]))
    assert act_exploration(0, t.train) == pytest.approx(0.3) and act_exploration(100, t.train) == pytest.approx(0.05)
    t.train.curriculum = "step"
    assert recursion_depth(9, t.train, t.model) == (1, 1) and recursion_depth(10, t.train, t.model) == (5, 3)


def test_curriculum_sets_core_calls_per_step(tiny_overrides, data_root, tmp_path):
    from trmlab.train.trainer import Trainer
    cfg = load_config("sudoku", tiny_overrides + ["model.n_loops=3", "model.T_recursion=2", "train.steps=6",
                                                  "train.curriculum=linear", "train.curriculum_steps=4",
                                                  "train.curriculum_n_loops=1", "train.curriculum_T_recursion=1"])
    tr = Trainer(cfg, tmp_path / "run", data_root=data_root, quiet=True)
    calls = []
    for step in range(6):
        before = tr.model.core.n_calls
        tr.train_step()
        calls.append(tr.model.core.n_calls - before)
        n, T = recursion_depth(step, cfg.train, cfg.model)
        assert calls[-1] == T * (n + 1)
    assert calls[0] == 2 and calls[-1] == 2 * 4  # T(n+1): 1x2 at the start, 2x4 at full depth
    assert tr.model.cfg is cfg.model and cfg.model.n_loops == 3  # the run's config is untouched


def test_optional_logger_degrades_and_lion_trains(tiny_overrides, data_root, tmp_path, capsys):
    from trmlab.train.trainer import train
    cfg = load_config("sudoku", tiny_overrides + ["train.steps=3", "train.logger=wandb", "train.optimizer=lion",
                                                  "train.dtype=float16"])
    try:
        import wandb  # noqa: F401
        pytest.skip("wandb is installed here")
    except ImportError:
        pass
    summary = train(cfg, tmp_path / "run", data_root=data_root, quiet=True)
    assert summary["steps"] == 3 and "not installed" in capsys.readouterr().out
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") >= 3


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # spin-waiting threads crawl on a shared 2-core machine


def _study_file(tmp_path: Path) -> Path:
    f = tmp_path / "toy.yaml"
    f.write_text(yaml.safe_dump({"name": "toy", "base": "sudoku", "x": "params", "grid": {"model.n_embd": [8, 16, 24]}}))
    return f


def _trm(capsys, *args):
    """`trm ...` in this process (the runner still starts one `trm train` process per run): (exit code, stdout)."""
    from trmlab.cli import main
    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    return rc, out.out + out.err


def test_report_ranks_a_loss_lower_is_better(tmp_path):
    # Two LM runs: the cheaper one has the lower val_loss, so it alone is best and on the frontier.
    root = tmp_path / "lmdepth"
    for exp_id, n_loops, loss in (("lmdepth_01", 1, 4.0), ("lmdepth_02", 2, 5.0)):
        d = root / exp_id
        d.mkdir(parents=True)
        cfg = load_config("lm-tiny", [f"model.n_loops={n_loops}"]).to_dict()
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": loss + 1 / s}) + "\n"
                                                 for s in range(1, 4)))
        (d / "summary.json").write_text(json.dumps({"steps": 3, "train_time_s": 1.0, "params": 1000,
                                                    "params_without_puzzle_emb": 1000, "metric": "val_loss",
                                                    "eval": {"val_loss": loss}}))
    from trmlab.studies.report import best_run, build_report
    rep = build_report(root)
    done = rep.table.set_index("exp_id")
    assert done["lower_is_better"].all() and done.loc["lmdepth_02", "score"] == 5.0
    assert best_run(rep.table)["exp_id"] == "lmdepth_01"
    pareto = next(f for f in rep.figures if f.name == "pareto_train_flops")
    assert pareto.caption == "On the frontier (val_loss, lower is better): lmdepth_01."
    md = (root / "report" / "report.md").read_text()
    assert "Best run by val_loss (lower is better): lmdepth_01" in md and "| val_loss |" in md
    assert "## val_loss vs training FLOPs" in md  # the loss is named as such, never called accuracy
    assert [ln for ln in md.lower().splitlines() if "accuracy" in ln and "supervision steps" not in ln] == []


def test_study_list_run_kill_resume_report(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    study = _study_file(tmp_path)
    runs, data = tmp_path / "runs", tmp_path / "data"
    common = ["--runs-dir", str(runs), "--data-root", str(data)]
    overrides = FAST + ["train.steps=12", "train.ckpt_interval=2", "train.log_interval=1", "train.batch_size=8",
                        "data.n_train=16", "data.n_test=8"]
    rc, out = _trm(capsys, "study", "list", "exp01")
    assert rc == 0 and "exp01f" in out and "6 experiments" in out

    # run, and kill the whole study (runner and its `trm train`) as soon as the first run has a checkpoint
    proc = subprocess.Popen([sys.executable, "-m", "trmlab.cli", "study", "run", str(study), *overrides, *common],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=ENV)
    first = runs / "toy" / "toy_01"
    deadline = time.time() + 120
    while not any((first / "checkpoints").glob("step_*/state.json")) and time.time() < deadline:
        assert proc.poll() is None, proc.stdout.read().decode()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert run_status(first) == "interrupted"

    rc, out = _trm(capsys, "study", "run", str(study), *overrides, *common)  # no --resume: says so, runs the rest
    assert rc == 0 and "toy_01: unfinished" in out and "pass --resume" in out
    assert run_status(runs / "toy" / "toy_02") == "done"
    rc, out = _trm(capsys, "study", "run", str(study), *overrides, *common, "--resume")
    assert rc == 0, out
    assert "toy_01: resuming" in out and "toy_01: done" in out and out.count("done already") == 2
    steps = [json.loads(ln)["step"] for ln in (first / "metrics.jsonl").read_text().splitlines()
             if "eval" not in json.loads(ln)]
    assert steps == list(range(1, 13))  # every step logged once across the kill

    (runs / "toy" / "toy_03" / "summary.json").write_text("{broken")  # the report goes on without it
    rc, out = _trm(capsys, "study", "report", str(runs / "toy"))
    assert rc == 0 and "summary.json is corrupt" in out and "3 runs (2 done)" in out
    html = (runs / "toy" / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "summary.json is corrupt" in html
    table = pd.read_csv(runs / "toy" / "report" / "results.csv")
    assert set(table["status"]) == {"done", "corrupt"} and table["params"].notna().sum() == 2


def test_failed_run_is_recorded_and_the_study_goes_on_under_submitit(tmp_path, monkeypatch):
    """--launcher slurm hands runs to submitit; with no Slurm here its local executor runs them."""
    pytest.importorskip("submitit")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    good = specs.Experiment("ok", ("model.n_embd=16",))
    bad = specs.Experiment("boom", ("model.n_embd=16", "data.source=/nonexistent.csv"))
    study = specs.Study("s", "S", "", [bad, good], base="sudoku")
    extra = FAST + ["train.steps=2", "data.n_train=16", "data.n_test=8"]
    lines = []
    plans = plan([(study, bad), (study, good)], tmp_path / "runs", "full", extra=extra,
                 data_root=str(tmp_path / "data"))
    counts = execute(plans, launcher="slurm", slurm={"cluster": "local", "timeout_min": 10},
                     data_root=str(tmp_path / "data"), echo=lines.append)
    assert counts["submitted"] == 2 and counts["failed"] == 1 and counts["done"] == 1, lines
    assert sum("submitted as job" in ln for ln in lines) == 2
    err = json.loads((tmp_path / "runs" / "s" / "boom" / "error.json").read_text())
    assert err["returncode"] != 0 and err["error"] and any(ln.startswith("boom: FAILED") for ln in lines)
    assert run_status(tmp_path / "runs" / "s" / "ok") == "done"


def test_export_writes_runnable_yaml(tmp_path, capsys):
    rc, out = _trm(capsys, "study", "export", "--out", str(tmp_path / "cfg"))
    assert rc == 0 and "80 experiment configs" in out  # seed 004's 67 + its baseline + looped_lm's 12
    files = sorted((tmp_path / "cfg" / "experiments").glob("*.yaml"))
    deep = load_config(str(tmp_path / "cfg" / "experiments" / "exp20_pydoc_d128_gpt_deep.yaml"))
    assert deep.task == "lm" and deep.model.arch == "gpt" and deep.model.n_layer == 6 and deep.data.source == "pydoc"
    assert len(files) == 80 and len(list((tmp_path / "cfg" / "arch").glob("*.yaml"))) == 34
    cfg = load_config(str(tmp_path / "cfg" / "experiments" / "exp02a_04.yaml"))
    assert cfg.model.n_loops == 8 and cfg.name == "exp02a_04" and cfg.model.core == "mlp_mixer"


def test_an_older_grpo_run_is_read_from_its_rl_config_json(tmp_path):
    # GRPO runs from before config.yaml had an rl section kept their config in rl_config.json
    d = tmp_path / "rl" / "old"
    d.mkdir(parents=True)
    old = {"rl": {"mode": "think", "steps": 60}, "config": load_config("latent-tiny").to_dict(), "phase2_run": ""}
    (d / "rl_config.json").write_text(json.dumps(old))
    (d / "summary.json").write_text(json.dumps({"mode": "think", "steps": 60, "eval_acc": [[0, 0.9], [60, 0.8]]}))
    df, problems = gather(tmp_path / "rl")
    row = df.set_index("exp_id").loc["old"]
    assert row["status"] == "done" and row["task"] == "latent" and row["rl.mode"] == "think"
    assert row["model.n_embd"] == old["config"]["model"]["n_embd"] and problems == []
