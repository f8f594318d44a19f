"""The test-time compute options `trm eval` and `trm solve` share, and how their results print (the engine is
``eval/test_time.py``; docs/puzzles.md, "Test-time compute")."""

from __future__ import annotations

import sys

from trmlab.eval.halting import RULE_NAMES, HaltRule, rule_for_run
from trmlab.eval.test_time import SELECTIONS, InferenceOptions


def add_arguments(p, solve: bool = False):
    """The test-time options `trm eval` and `trm solve` share (docs/puzzles.md, "Test-time compute")."""
    g = p.add_argument_group("test-time compute (Sudoku, Maze; docs/puzzles.md)")
    g.add_argument("--samples", type=int, default=1, help="K chains per puzzle (and view), run as one batch "
                                                          "(default 1)")
    g.add_argument("--noise", type=float, default=0.0, help="Gaussian noise on chains 2..K's latent state z before "
                                                            "every supervision step, x RMS(z) (default 0)")
    g.add_argument("--select", choices=SELECTIONS, default="q",
                   help="which candidate answers: q (most confident halting head, default), vote (majority, ties "
                        "by confidence), first-halt, valid (first rule-checked answer: a diagnostic)")
    g.add_argument("--views", type=int, default=1, help="V augmented views per puzzle, each inverted, then "
                                                        "selected over with the chains (Sudoku, Maze; default 1)")
    g.add_argument("--halt", choices=RULE_NAMES, default="auto",
                   help="when a chain stops: auto (the run's calibrated rule, default), all, q, stable, unchanged, "
                        "threshold, threshold+stable")
    g.add_argument("--seed", type=int, default=0, help="seed of the noise and of the Sudoku views (default 0)")
    if not solve:
        g.add_argument("--calibrate-halting", action="store_true",
                       help="recalibrate the halting rule on held-out training views and store <run>/halting.json")
        g.add_argument("--halting-curve", metavar="PNG", help="print exact accuracy vs mean steps of every halting "
                                                              "rule on the split and plot it to PNG")


def options_from_args(args) -> InferenceOptions:
    return InferenceOptions(samples=args.samples, noise=args.noise, select=args.select, views=args.views,
                            seed=args.seed)


def halt_rule_from_args(args, model, cfg, train_split, run_dir, note=None) -> HaltRule:
    """The rule ``--halt`` names for this run (calibrating and storing it when ``auto`` finds none that fits)."""
    note = note or (lambda line: print(line, file=sys.stderr))  # stderr: `--json` output stays parseable
    return rule_for_run(args.halt, model, cfg.task, train_split, cfg.model.n_sup_inference, run_dir,
                        recalibrate=getattr(args, "calibrate_halting", False), note=note,
                        trained_to_halt=cfg.model.halting == "act")


def halting_curve_lines(rows: list[dict]) -> list[str]:
    """The halting curve as a table: one rule per line, the calibrated one marked."""
    lines = [f"{'rule':<18} {'sigmoid(q) >':>12} {'exact acc':>9} {'mean steps':>10}"]
    last = {}
    for r in rows:
        same = last.get(r["name"]) == (r["exact_acc"], r["mean_steps"])
        last[r["name"]] = (r["exact_acc"], r["mean_steps"])
        if same and not r.get("calibrated"):  # higher thresholds that change nothing: one row says it
            continue
        t = "" if r["threshold"] is None or r["name"] in ("q", "stable", "unchanged") else f"{r['threshold']:g}"
        mark = "  <- calibrated (the default)" if r.get("calibrated") else ""
        lines.append(f"{r['name']:<18} {t:>12} {r['exact_acc']:>9.4f} {r['mean_steps']:>10.3f}{mark}")
    return lines


def format_result(m: dict) -> list[str]:
    """A test-time result as text: accuracy and compute on the first line, the other selections after."""
    lines = [f"exact {m['exact_acc']:.4f} (select {m['select']}) | core applications per puzzle "
             f"{m['core_calls_per_puzzle']:,.1f} | samples {m['samples']}, noise {m['noise']:g}, views {m['views']}, "
             f"halt {m['halt']}, up to {m['n_sup_inference']} steps ({m['mean_steps']:.2f} on average per chain), "
             f"{m['eval_samples']:,} puzzles"]
    others = "  ".join(f"{how} {v:.4f}" for how, v in m["exact_acc_by_select"].items())
    extra = f" | any candidate right {m['any_candidate_acc']:.4f}"
    if "exact_acc_select_valid_diagnostic" in m:
        extra += f" | rule-checked (valid, diagnostic) {m['exact_acc_select_valid_diagnostic']:.4f}"
    lines.append(f"  by selection: {others}{extra}")
    return lines
