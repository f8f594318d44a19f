"""`trm demo` compares what it says it compares: the second model has recursion switched off (and nothing else
changed), and each row of the report shows the figures of its own run."""

import json

import pytest

from trmlab.cli import main
from trmlab.config import load_config

TINY_DEMO = ["--minutes", "0.02", "--quiet", "data.n_train=32", "data.n_test=8", "model.n_embd=32",
             "model.n_head=2", "train.batch_size=8"]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    # --sequential: the same configs and report as side by side, without starting two processes
    assert main(["demo", "--sequential", "--runs-dir", str(root / "runs"), "--data-root", str(root / "data"),
                 *TINY_DEMO]) == 0
    (out,) = (root / "runs").iterdir()
    return out


def test_the_baseline_is_the_same_model_with_recursion_switched_off(demo_dir):
    trm, base = load_config(str(demo_dir / "trm")), load_config(str(demo_dir / "no-recursion"))
    assert (trm.model.n_loops, trm.model.T_recursion, trm.model.n_sup_train) != (1, 1, 1)
    assert (base.model.n_loops, base.model.T_recursion, base.model.n_sup_train, base.model.n_sup_inference) == \
        (1, 1, 1, 1)
    differing = {k for k, v in vars(trm.model).items() if getattr(base.model, k) != v}
    assert differing and differing <= {"n_loops", "T_recursion", "n_sup_train", "n_sup_inference"}  # nothing else
    assert trm.data == base.data and trm.train.time_budget_s == base.train.time_budget_s
    summaries = {name: json.loads((demo_dir / name / "summary.json").read_text()) for name in ("trm", "no-recursion")}
    assert summaries["trm"]["params"] == summaries["no-recursion"]["params"]
    assert summaries["no-recursion"]["effective_depth"] < summaries["trm"]["effective_depth"]


def test_each_report_row_shows_its_own_run(demo_dir):
    report = (demo_dir / "report.md").read_text()
    rows = {}
    for line in report.splitlines():
        for name in ("TRM", "no recursion"):
            if line.startswith(name + " ") and line[len(name):].split()[0].replace(",", "").isdigit():
                rows[name] = line[len(name):].split()
    assert set(rows) == {"TRM", "no recursion"}
    for name, run in (("TRM", "trm"), ("no recursion", "no-recursion")):
        s = json.loads((demo_dir / run / "summary.json").read_text())
        params, depth, steps, _, exact, blank = rows[name]
        assert (int(params.replace(",", "")), int(depth), int(steps)) == (s["params"], s["effective_depth"],
                                                                          s["steps"]), name
        assert (float(exact), float(blank)) == (round(s["eval"]["exact_acc"], 3), round(s["eval"]["blank_acc"], 3))
    # the per-step table above is the TRM's: one row per supervision step of its evaluation
    trm_steps = json.loads((demo_dir / "trm" / "summary.json").read_text())["eval"]["n_sup_inference"]
    assert trm_steps > 1 and f"\n{trm_steps:>8} " in report and f"\n{trm_steps + 1:>8} " not in report
