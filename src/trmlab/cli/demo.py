"""`trm demo`: the main job. Builds a small Sudoku set, trains a small TRM on this CPU, and compares it on
held-out puzzles with the same-size model with recursion switched off (n_loops=1, T_recursion=1, n_sup=1),
trained for the same wall-clock time. Prints exact and cell accuracy per supervision step.

The two models train side by side, one process and one thread each (``--sequential``: one after the other with
all threads). On a 2-core machine that gives both the same hardware at the same moment, so a machine whose load
changes during the demo cannot favour either, and the whole demo takes one budget instead of two.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import ProcessPoolExecutor, wait
from pathlib import Path

from tqdm.auto import tqdm

from trmlab.cli.common import data_root, quiet, runs_dir
from trmlab.config import load_config, replace, save_config
from trmlab.errors import TrmError
from trmlab.tasks import get_task
from trmlab.train.trainer import train

NO_RECURSION = {"n_loops": 1, "T_recursion": 1, "n_sup_train": 1, "n_sup_inference": 1}


def demo_arguments(p):
    p.add_argument("overrides", nargs="*", help="key=value overrides of the `sudoku` preset")
    p.add_argument("--minutes", type=float, default=8.0, help="training time of each model (default 8)")
    p.add_argument("--sequential", action="store_true",
                   help="train the two models one after the other, each with all threads (default: side by side)")
    runs_dir(p, default="runs/demo")
    data_root(p)
    quiet(p)


def _row(name, s):
    e = s["eval"]
    return (f"{name:<14} {s['params']:>9,} {s['effective_depth']:>6} {s['steps']:>6} {s['train_time_s']:>6.0f}s "
            f"{e['exact_acc']:>9.3f} {e['blank_acc']:>9.3f}")


def report(trm: dict, base: dict) -> str:
    """The comparison table, as printed and as saved in report.md."""
    e = trm["eval"]
    lines = ["TRM per supervision step (held-out puzzles, EMA weights; blank acc = share of blank cells right):",
             f"{'sup step':>8} {'exact acc':>9} {'blank acc':>9}"]
    for k, (ex, fi) in enumerate(zip(e["exact_acc_per_step"], e["blank_acc_per_step"]), 1):
        lines.append(f"{k:>8} {ex:>9.3f} {fi:>9.3f}")
    lines.append(f"with ACT halting: exact acc {e['exact_acc_act']:.3f} using {e['mean_steps_act']:.2f} steps on average")
    lines += ["", f"{'model':<14} {'params':>9} {'depth':>6} {'steps':>6} {'time':>7} {'exact acc':>9} {'blank acc':>9}",
              _row("TRM", trm), _row("no recursion", base),
              "", f"held-out puzzles: {e['eval_samples']}; both models trained for the same time on the same data."]
    return "\n".join(lines)


def _train_one(cfg, run_dir: Path, data_root: str) -> dict:
    return train(cfg, run_dir, data_root=data_root, quiet=True)


def train_side_by_side(configs: list, out: Path, data_root: str, budget: float, quiet: bool) -> dict:
    """Train each config in its own single-threaded process at the same time; a bar shows the shared budget."""
    configs = [replace(c, train={"threads": 1}) for c in configs]
    with ProcessPoolExecutor(len(configs), mp_context=mp.get_context("spawn")) as pool:
        jobs = {pool.submit(_train_one, c, out / c.name, data_root): c.name for c in configs}
        with tqdm(total=round(budget), unit="s", desc="training both", disable=quiet, dynamic_ncols=True) as bar:
            t0 = time.monotonic()
            while not wait(jobs, timeout=1).done == set(jobs):
                bar.update(min(round(time.monotonic() - t0), bar.total) - bar.n)
        return {name: job.result() for job, name in jobs.items()}


def demo(args):
    if not args.minutes > 0:  # 0 would be no time budget at all (100,000 steps); nan compares false too
        raise TrmError(f"--minutes {args.minutes:g}: must be > 0")
    budget = args.minutes * 60
    cfg = load_config("sudoku", [f"train.time_budget_s={budget}", "train.steps=100000", *args.overrides])
    baseline = replace(cfg, model=NO_RECURSION, name="no-recursion")
    cfg.name = "trm"
    out = Path(args.runs_dir) / time.strftime("%Y%m%d-%H%M%S")
    side_by_side = not args.sequential and (os.cpu_count() or 1) >= 2
    how = "side by side, one core each" if side_by_side else "one after the other"
    print(f"trm demo: Sudoku with {cfg.data.min_blanks}-{cfg.data.max_blanks} blanks, "
          f"{cfg.data.n_train} training / {cfg.data.n_test} held-out puzzles; "
          f"{args.minutes:g} min of training per model, {how}; runs in {out}")
    get_task(cfg.task).prepare(cfg, args.data_root)  # build the data once, before two processes want it
    if side_by_side:
        summaries = train_side_by_side([cfg, baseline], out, args.data_root, budget, args.quiet)
    else:
        summaries = {c.name: train(c, out / c.name, data_root=args.data_root, quiet=args.quiet)
                     for c in (cfg, baseline)}
    text = report(summaries["trm"], summaries["no-recursion"])
    (out / "report.md").write_text("```\n" + text + "\n```\n")
    save_config(cfg, out / "trm.yaml")
    print()
    print(text)
    print(f"\nsaved: {out}/report.md; try `trm solve {out}/trm <81-char puzzle>`")
