"""`trm study run --scale demo`: experiments carried onto the demo's own model and data, the three budgets,
seeds, the maze data-scaling study, seed-aware reports (tables, plots, the HTML as a browser shows it), bad input."""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from trmlab.config import load_config
from trmlab.errors import TrmError
from trmlab.studies import specs
from trmlab.studies.results import experiment_of, gather
from trmlab.studies.runner import plan

from test_errors import one_error_line


def _demo(exp_id: str, base: str = "", budget: str = "") -> dict:
    """The config a demo-scale run of ``exp_id`` trains, as `trm train` would load it."""
    (study, exp), = specs.select([exp_id])[0]
    target = base or study.base
    budget = specs.budget_of(study, "demo", budget)
    overrides = specs.resolve(exp, target, "demo", budget=budget, study_base=study.base)
    return load_config(specs.run_preset(target, "demo"), overrides).to_dict()


def test_demo_scale_carries_sizes_as_ratios_and_recursion_as_set():
    paper, demo = load_config("sudoku-paper").to_dict(), load_config("sudoku").to_dict()
    for (_, exp) in specs.select(["exp01"])[0]:
        width = int(dict(o.split("=") for o in exp.overrides)["model.n_embd"])
        got = _demo(exp.id, budget="steps")["model"]["n_embd"]
        assert got % 8 == 0 and abs(got - width / paper["model"]["n_embd"] * demo["model"]["n_embd"]) < 8
    # the values an experiment sets are carried also where they equal its own base (n=6, T=3, N_sup=16 are the
    # paper's, not the demo's n=1, T=2, N_sup=4)
    assert _demo("exp02a_03")["model"]["n_loops"] == paper["model"]["n_loops"] != demo["model"]["n_loops"]
    assert _demo("exp02b_03")["model"]["T_recursion"] == paper["model"]["T_recursion"]
    assert _demo("exp05_d")["model"]["n_sup_train"] == paper["model"]["n_sup_train"]
    # what the experiment does not touch stays the demo's (its data, core and width)
    cfg = _demo("exp02a_06")
    assert cfg["data"] == demo["data"] and cfg["model"]["core"] == demo["model"]["core"]
    assert cfg["model"]["n_embd"] == demo["model"]["n_embd"] and cfg["task"] == "sudoku"


def test_the_three_budgets():
    demo = load_config("sudoku").to_dict()["train"]
    base_steps = round(specs.DEMO_STEP_FRACTION * demo["steps"])
    cheap, costly = _demo("exp02a_01", budget="steps"), _demo("exp02a_06", budget="steps")
    assert cheap["train"]["steps"] == costly["train"]["steps"] == base_steps  # equal steps
    c1, c6 = _demo("exp02a_01", budget="compute"), _demo("exp02a_06", budget="compute")
    flops = lambda cfg: specs._step_flops(load_config("sudoku").to_dict(),  # noqa: E731
                                          [f"model.n_loops={cfg['model']['n_loops']}"])
    base_flops = base_steps * specs._step_flops(load_config("sudoku").to_dict(), [])
    for cfg in (c1, c6):  # equal training FLOPs, to within one step
        assert abs(cfg["train"]["steps"] * flops(cfg) - base_flops) <= flops(cfg)
    assert c6["train"]["steps"] < c1["train"]["steps"] < base_steps
    t = _demo("exp02a_06", budget="time")["train"]
    assert t["time_budget_s"] == specs.DEMO_MINUTES * 60 and t["steps"] > 1000 * base_steps
    # the batch study keeps its fixed-epoch ratios: a quarter of the batch, four times the steps
    assert _demo("exp06_a")["train"]["steps"] == 4 * base_steps
    assert _demo("exp06_a")["train"]["batch_size"] * 4 == demo["batch_size"]
    with pytest.raises(TrmError, match="--budget must be one of"):
        specs.demo_overrides(specs.select(["exp01a"])[0][0][1], "sudoku-paper", budget="hours")


def test_each_study_has_its_demo_budget_and_all_sudoku_studies_resolve():
    assert specs.get_study("model_size").demo_budget == "compute"
    assert specs.get_study("recursion_depth").demo_budget == "steps"
    for study, exp in specs.all_experiments([s for s in specs.STUDIES if s.base == specs.BASE_PRESET]):
        cfg = _demo(exp.id)
        assert cfg["task"] == "sudoku" and cfg["train"]["eval_interval"] == 0


def test_data_scaling_on_the_maze_base(tmp_path):
    """exp04a counts training mazes (the maze task has no subsample_size); exp04b's views are capped at the 8 a
    maze has, and the experiments that become the same config are planned once."""
    maze, paper = load_config("maze").to_dict()["data"], load_config("sudoku-paper").to_dict()["data"]
    for n in (100, 1000, 5000):
        assert _demo(f"exp04a_{n}", base="maze")["data"]["n_train"] == round(n / paper["n_train"] * maze["n_train"])
    augs = {a: _demo(f"exp04b_{a:04d}", base="maze")["data"]["num_aug"] for a in (10, 100, 500, 1000, 2000)}
    assert augs[10] >= 1 and augs[1000] == augs[2000] == 7 and augs[10] <= augs[500] <= 7
    plans = plan(specs.select(["data_scaling"])[0], tmp_path, "demo", "maze")
    same = {p.exp_id: p.error for p in plans if p.action == "same"}
    assert same["exp04b_2000"] == "exp04b_1000" and not any(p.action == "invalid" for p in plans)
    assert all(p.argv[4] == "maze" for p in plans if p.runnable)
    # on Sudoku's own demo base every experiment is a distinct run
    assert not [p for p in plan(specs.select(["data_scaling"])[0], tmp_path, "demo") if p.action == "same"]


def test_seeds_are_runs_of_one_experiment(tmp_path):
    plans = plan(specs.select(["exp05_a"])[0], tmp_path, "demo", seeds=3)
    assert [p.exp_id for p in plans] == ["exp05_a", "exp05_a-seed1", "exp05_a-seed2"]
    seeds = [[a for a in p.argv if a.startswith("train.seed=")] for p in plans]
    assert seeds == [[], ["train.seed=1"], ["train.seed=2"]]
    assert {experiment_of(p.exp_id) for p in plans} == {"exp05_a"}
    assert experiment_of("exp02a_03-seed12") == "exp02a_03" and experiment_of("exp04a_100") == "exp04a_100"
    # a second budget of the same study lives beside it, not on top of it
    assert Path(plan(specs.select(["exp02a_01"])[0], tmp_path, "demo", budget="compute")[0].run_dir).parent.name \
        == "recursion_depth-compute"


def test_dry_run_prints_the_runs_and_the_estimated_wall_time(capsys, tmp_path):
    from trmlab.cli import main
    assert main(["study", "run", "adaptive_halting", "--scale", "demo", "--seeds", "2", "--jobs", "2",
                 "--dry-run", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    m = re.search(r"(\d+) runs, 2 at a time: about (\d+) min of wall time", out)
    assert m and int(m.group(1)) == 4 and out.count("trmlab.cli train sudoku ") == 4
    assert int(m.group(2)) >= 1 and not list(tmp_path.iterdir())  # a dry run writes nothing


@pytest.mark.parametrize("argv, says", [
    (["run", "no_such_study"], "no study or experiment matches 'no_such_study'"),
    (["run", "exp01", "exp99z"], "no study or experiment matches 'exp99z'"),
    (["run", "exp01", "--jobs", "0"], "--jobs 0: must be >= 1"),
    (["run", "exp01", "--seeds", "0"], "--seeds 0: must be >= 1"),
    (["run", "exp01", "--scale", "huge"], "--scale huge: must be one of tiny, demo, full"),
    (["run", "exp01", "--scale", "demo", "--base", "lm-tiny"], "--scale demo is defined for the Sudoku and maze"),
    (["run", "exp01", "--budget", "time"], "with --scale demo"),
    (["list", "exp99z"], "no study or experiment matches"),
    (["report", "model_size", "--scale", "demo"], "no runs at"),
])
def test_bad_study_input_is_one_line(capsys, tmp_path, argv, says):
    line = one_error_line(capsys, "study", *argv, *(["--dry-run"] if argv[0] == "run" else []),
                          "--runs-dir", tmp_path / "runs")
    assert says in line


# ------------------------------------------------------------------------------------------ reports with seeds
def _seed_run(d: Path, n_embd: int, seed: int, acc: float):
    d.mkdir(parents=True)
    cfg = load_config("sudoku", [f"model.n_embd={n_embd}", "model.seq_len=81", f"train.seed={seed}"]).to_dict()
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s, "exact_acc": acc * s / 10})
                                             + "\n" for s in range(1, 11)))
    params = 12 * n_embd ** 2
    (d / "summary.json").write_text(json.dumps({
        "steps": 10, "train_time_s": 1.0, "params": params, "params_without_puzzle_emb": params, "metric": "exact_acc",
        "eval": {"exact_acc": acc, "blank_acc": 0.5 + acc / 2, "exact_acc_per_step": [acc / 2, acc],
                 "exact_acc_act": acc, "mean_steps_act": 1.5, "n_sup_inference": 2}}))


@pytest.fixture
def seeded_study(tmp_path) -> Path:
    """Four widths x 3 seeds. w64 has the single best run (0.9) but w128 the best mean."""
    root = tmp_path / "model_size"
    accs = {32: (0.10, 0.12, 0.14), 64: (0.90, 0.05, 0.10), 128: (0.50, 0.52, 0.54), 256: (0.40, 0.42, 0.44)}
    for w, runs in accs.items():
        for seed, acc in enumerate(runs):
            _seed_run(root / (f"w{w}" + (f"-seed{seed}" if seed else "")), w, seed, acc)
    (root / "study.json").write_text(json.dumps({"title": "model size", "x": "params", "fit": True}))
    return root


def test_report_averages_seeds_and_ranks_experiments_by_their_mean(seeded_study):
    from trmlab.studies.report import build_report, experiment_table
    df, _ = gather(seeded_study)
    assert sorted(df["exp_id"].unique()) == ["w128", "w256", "w32", "w64"] and len(df) == 12
    from trmlab.studies.results import curves
    runs = curves(seeded_study)  # training curves: one colour and one legend entry per experiment, not per seed
    assert sorted(runs["exp_id"].unique()) == ["w128", "w256", "w32", "w64"] and runs["run"].nunique() == 12
    table = experiment_table(df[df.status == "done"]).set_index("exp_id")
    assert table.loc["w128", "seeds"] == 3 and table.loc["w128", "exact_acc"] == "0.520 ± 0.020"
    assert table.loc["w128", "model.n_embd"] == 128  # what the experiment set, as set (not a mean)
    rep = build_report(seeded_study)
    md = (seeded_study / "report" / "report.md").read_text()
    assert "Best experiment by exact_acc (higher is better, mean over seeds): w128 (0.52 ± 0.02, 3 seeds)" in md
    assert "## Experiments (mean ± sd over seeds)" in md and "no clear winner" not in md  # 0.52 vs 0.42 ± 0.02
    # w64's mean (0.35 ± 0.48) against w32's (0.12 ± 0.02): a lead inside the spread is called no winner
    from trmlab.studies.report import _best_line
    from trmlab.studies.report import Report as _R
    two = df[df["exp_id"].isin(["w32", "w64"])]
    assert "Its lead over w32" in _best_line(_R(seeded_study, two, [])) and "no clear winner" in \
        _best_line(_R(seeded_study, two, []))
    fit = rep.fits["params"]["score"]
    assert fit.n == 12  # every seed is a point of the fit, so its uncertainty includes the seeds' spread


def test_report_as_a_reader_sees_it(seeded_study, tmp_path):
    """Markdown: every image by a relative path that exists. HTML: every image decodes as a PNG, no Markdown
    left raw; in headless Chromium (where installed) the page renders with its plots and tables."""
    from trmlab.studies.report import build_report
    rep = build_report(seeded_study)
    md = (rep.out_dir / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) >= 4 and all(not Path(p).is_absolute() and (rep.out_dir / p).is_file() for p in links)
    html = (rep.out_dir / "report.html").read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(images) == len(links)
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    text = re.sub(r"<[^>]+>", "", html)
    assert "](" not in text and "|---" not in text and "`" not in text and not re.search(r"^#+ ", text, re.M)
    assert html.count("<table") >= 2
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("no chromium here (apt-get install chromium): the screenshot half of this test")
    shot = tmp_path / "report.png"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1200,4000", f"--screenshot={shot}", (rep.out_dir / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    from PIL import Image
    img = Image.open(shot).convert("L")
    colours = img.getcolors(maxcolors=1 << 16)
    # a page of plots has many grey levels; a blank page or a row of broken-image icons has a handful
    assert img.size[0] >= 1000 and colours is not None and len(colours) > 50


def test_estimate_packs_the_longest_runs_first_into_the_free_lanes(monkeypatch):
    from types import SimpleNamespace
    from trmlab.studies import runner
    plans = [SimpleNamespace(runnable=True, s=s) for s in (300, 60, 600, 300)] + [SimpleNamespace(runnable=False, s=9e9)]
    monkeypatch.setattr(runner, "_run_seconds", lambda p: p.s)
    # two lanes: 600 | 300 + 300, then 60 joins the first lane to free: 660 s = 11 min of wall time, 21 run-minutes
    assert runner.estimate(plans, 2).startswith("4 runs, 2 at a time: about 11 min of wall time") \
        and "(21 run-minutes" in runner.estimate(plans, 2)
    assert "about 21 min of wall time" in runner.estimate(plans, 1)
    assert "about 10 min" in runner.estimate(plans, 4)  # one run per lane: the longest decides
    assert runner.estimate(plans[-1:], 2) == "nothing to run"
