"""`trm demo`: the main job. Builds a small Sudoku set, trains a small TRM on this CPU, and compares it on
held-out puzzles with the same-size model with recursion switched off (n_loops=1, T_recursion=1, n_sup=1),
trained for the same wall-clock time. Prints exact and cell accuracy per supervision step.
"""

from __future__ import annotations

import time
from pathlib import Path

from trmlab.config import load_config, replace, save_config
from trmlab.train.trainer import train

NO_RECURSION = {"n_loops": 1, "T_recursion": 1, "n_sup_train": 1, "n_sup_inference": 1}


def demo_arguments(p):
    p.add_argument("overrides", nargs="*", help="key=value overrides of the `sudoku` preset")
    p.add_argument("--minutes", type=float, default=4.0, help="training time of EACH model (default 4)")
    p.add_argument("--runs-dir", default="runs/demo")
    p.add_argument("--data-root", default="data")
    p.add_argument("--quiet", action="store_true")


def _row(name, s):
    e = s["eval"]
    return (f"{name:<14} {s['params']:>9,} {s['effective_depth']:>6} {s['steps']:>6} {s['train_time_s']:>6.0f}s "
            f"{e['exact_acc']:>9.3f} {e['fill_acc']:>9.3f}")


def report(trm: dict, base: dict) -> str:
    """The comparison table, as printed and as saved in report.md."""
    e = trm["eval"]
    lines = ["TRM per supervision step (held-out puzzles, EMA weights; blank acc = share of blank cells right):",
             f"{'sup step':>8} {'exact acc':>9} {'blank acc':>9}"]
    for k, (ex, fi) in enumerate(zip(e["exact_acc_per_step"], e["fill_acc_per_step"]), 1):
        lines.append(f"{k:>8} {ex:>9.3f} {fi:>9.3f}")
    lines.append(f"with ACT halting: exact acc {e['exact_acc_act']:.3f} using {e['mean_steps_act']:.2f} steps on average")
    lines += ["", f"{'model':<14} {'params':>9} {'depth':>6} {'steps':>6} {'time':>7} {'exact acc':>9} {'blank acc':>9}",
              _row("TRM", trm), _row("no recursion", base),
              "", f"held-out puzzles: {e['eval_samples']}; both models trained for the same time on the same data."]
    return "\n".join(lines)


def demo(args):
    budget = args.minutes * 60
    cfg = load_config("sudoku", [f"train.time_budget_s={budget}", "train.steps=100000", *args.overrides])
    baseline = replace(cfg, model=NO_RECURSION, name="no-recursion")
    cfg.name = "trm"
    out = Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    print(f"trm demo: Sudoku with {cfg.data.min_blanks}-{cfg.data.max_blanks} blanks, "
          f"{cfg.data.n_train} training / {cfg.data.n_test} held-out puzzles; "
          f"{args.minutes:g} min of training per model; runs in {out}")
    summaries = {}
    for c in (cfg, baseline):
        summaries[c.name] = train(c, out / c.name, data_root=args.data_root, quiet=args.quiet)
    text = report(summaries["trm"], summaries["no-recursion"])
    (out / "report.md").write_text("```\n" + text + "\n```\n")
    save_config(cfg, out / "trm.yaml")
    print()
    print(text)
    print(f"\nsaved: {out}/report.md; try `trm solve {out}/trm <81-char puzzle>`")
