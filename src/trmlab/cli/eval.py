"""`trm eval <run|checkpoint>`: evaluate a run on held-out data (or `--puzzles FILE`), with the test-time
compute options of puzzle tasks; prints a per-supervision-step table."""

from __future__ import annotations

import json
from pathlib import Path

from trmlab.cli.common import check_flags, data_root, run_of, threads
from trmlab.errors import TrmError


def print_eval(metrics: dict, title: str = ""):
    """A per-supervision-step table of every ``*_per_step`` metric (one column each), then the scalar metrics; other
    lists and dicts (per-task ARC scores, ...) are left to ``--json``."""
    if title:
        print(title)
    per_step = {name.replace("_", " "): v for k, v in metrics.items()
                if (name := k.removesuffix("_per_step")) != k and isinstance(v, list) and v and isinstance(v[0], (int, float))}
    if per_step:
        width = {k: max(len(k), 8) for k in per_step}
        print(f"{'sup step':>8}  " + "  ".join(f"{k:>{width[k]}}" for k in per_step))
        for i in range(max(len(v) for v in per_step.values())):
            cells = [f"{v[i]:>{width[k]}.4f}" if i < len(v) else " " * width[k] for k, v in per_step.items()]
            print(f"{i + 1:>8}  " + "  ".join(cells))
    for k, v in metrics.items():
        if not isinstance(v, (list, dict)):
            print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")


def evaluate_arguments(p):
    p.add_argument("checkpoint", help="run directory or checkpoint directory")
    p.add_argument("--data", help="dataset directory to evaluate on (default: the run's own held-out split)")
    p.add_argument("--split", default="test")
    p.add_argument("--n-sup", type=int, help="supervision steps at inference, >= 1 (default: the config's)")
    p.add_argument("--max-samples", type=int, default=0, help="evaluate the first N puzzles (default 0: all)")
    p.add_argument("--no-ema", action="store_true", help="evaluate the raw weights instead of the EMA")
    data_root(p)
    p.add_argument("--json", action="store_true", help="print the metrics as JSON (ARC: with per-task scores)")
    threads(p, help="torch threads (default 0: torch's; 1 on a busy machine)")
    p.add_argument("--out", help="ARC: where submission.json, arc_scores.json and pictures/ go (default: the run "
                                 "directory, replacing the ones its training wrote)")
    p.add_argument("--puzzles", metavar="FILE", help="score every puzzle of a file instead, no dataset built: Sudoku "
                                                     "CSV or text (one puzzle a line), Maze-Hard CSV, ARC task JSON, "
                                                     "folder or ARC Prize challenges file")
    from trmlab.cli.test_time import add_arguments as test_time_arguments
    test_time_arguments(p)


def evaluate(args):
    import torch

    from trmlab.api import load
    from trmlab.cli.test_time import options_from_args
    from trmlab.tasks import get_task
    check_flags(args, "n_sup", "max_samples", "threads")
    options = options_from_args(args)  # bad test-time options are refused before anything loads
    if args.threads:
        torch.set_num_threads(args.threads)
    model, cfg = load(args.checkpoint, use_ema=not args.no_ema)
    if args.n_sup:
        cfg.model.n_sup_inference = args.n_sup
    task = get_task(cfg.task)
    # A task whose evaluation writes files (ARC: submission, per-task scores, pictures) writes them as training did.
    writes = task.writes_files
    if args.out and not writes:
        raise TrmError(f"--out {args.out}: the {cfg.task} evaluation writes no files")
    if not options.is_plain:
        return _evaluate_test_time(args, model, cfg, task, options)
    if args.puzzles:
        return _evaluate_puzzles(args, model, cfg)
    data = task.load(cfg, args.data) if args.data else task.prepare(cfg, args.data_root)
    if args.split not in data.splits:
        raise TrmError(f"split '{args.split}' not in the dataset (has {', '.join(data.splits)})")
    if args.halting_curve:
        return _halting_curve(args, model, cfg, task, data)
    out = {"out_dir": Path(args.out) if args.out else run_of(args.checkpoint)} if writes else {}
    metrics = task.evaluate(model, data, cfg, torch.device("cpu"), split=args.split, max_samples=args.max_samples,
                            **out, **_halting(args, model, cfg, task, data.splits.get("train")))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    shown = {k: v for k, v in metrics.items() if k != "written_to"}
    print_eval(shown, title=f"{args.checkpoint} on {args.data or 'its held-out split'} ({args.split})")
    if "written_to" in metrics:
        print(f"per-task scores, submission and pictures: {metrics['written_to']}/"
              f"{{arc_scores.json, submission.json, pictures/}} (--json prints the per-task scores)")


def _halting(args, model, cfg, task, train_split) -> dict:
    """{"halt_rule": the run's rule} for a task whose evaluation scores halting with one (Sudoku, Maze), else {}."""
    from trmlab.cli.test_time import halt_rule_from_args
    if not task.test_time:
        return {}
    return {"halt_rule": halt_rule_from_args(args, model, cfg, train_split, run_of(args.checkpoint))}


def _halting_curve(args, model, cfg, task, data):
    """`trm eval --halting-curve PNG`: every halting rule on the split, as a table and a plot (eval/halting.py)."""
    from trmlab.eval.halting import plot_curve, split_curve
    from trmlab.cli.test_time import halting_curve_lines
    calibrated = _halting(args, model, cfg, task, data.splits.get("train")).get("halt_rule")
    rows = split_curve(model, data.splits[args.split], cfg.model.n_sup_inference, max_samples=args.max_samples,
                       calibrated=calibrated)
    png = plot_curve(rows, args.halting_curve, title=f"{args.checkpoint} ({cfg.task}, {args.split}, "
                                                     f"{len(data.splits[args.split]) if not args.max_samples else args.max_samples} puzzles)")
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for line in halting_curve_lines(rows):
        print(line)
    print(f"plot: {png}")


def _evaluate_test_time(args, model, cfg, task, options):
    """`trm eval` with --samples / --views (eval/test_time.py): one result line of accuracy and compute."""
    from trmlab.cli.test_time import format_result, halt_rule_from_args
    from trmlab.eval.test_time import evaluate_test_time
    from trmlab.eval.views import VIEW_TASKS
    if cfg.task not in VIEW_TASKS:
        raise TrmError(f"--samples / --views: test-time compute is for {' and '.join(VIEW_TASKS)} runs; "
                       f"{cfg.task} votes over its dataset's own views")
    if args.puzzles:
        from trmlab.eval.puzzle_files import puzzle_kind
        kind, path = puzzle_kind(args.puzzles), Path(args.puzzles).expanduser()
        if kind not in (None, cfg.task) or not path.exists():
            raise TrmError(f"{args.puzzles}: " + (f"holds {kind} puzzles, but the run is a {cfg.task} run"
                                                  if path.exists() else "no such puzzle file"))
        data = task.read_puzzle_file(cfg, path, data_root=args.data_root)
        split, train = data.splits["test"], None
    else:
        data = task.load(cfg, args.data) if args.data else task.prepare(cfg, args.data_root)
        if args.split not in data.splits:
            raise TrmError(f"split '{args.split}' not in the dataset (has {', '.join(data.splits)})")
        split, train = data.splits[args.split], data.splits.get("train")
    rule = halt_rule_from_args(args, model, cfg, train, run_of(args.checkpoint))
    metrics = evaluate_test_time(model, cfg.task, split, cfg.model.n_sup_inference, rule, options,
                                 max_samples=args.max_samples)
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    print(f"{args.checkpoint} on {args.puzzles or args.data or 'its held-out split'} ({args.split})")
    for line in format_result(metrics):
        print(line)


def _evaluate_puzzles(args, model, cfg):
    """`trm eval <run> --puzzles FILE` (trmlab.eval.puzzle_files); ARC writes its files only with --out."""
    import torch

    from trmlab.eval.puzzle_files import evaluate_file, report_lines
    if args.data or args.split != "test":
        raise TrmError(f"--puzzles {args.puzzles}: scores the file's puzzles; drop --data / --split")
    from trmlab.tasks import get_task
    metrics = evaluate_file(model, cfg, args.puzzles, torch.device("cpu"), max_samples=args.max_samples,
                            out_dir=Path(args.out) if args.out else None, data_root=args.data_root,
                            **_halting(args, model, cfg, get_task(cfg.task), None))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return
    counted = f"{metrics['num_tasks']} tasks, {metrics['eval_samples']:,} views" if "num_tasks" in metrics else \
        f"{metrics['eval_samples']:,} puzzles"
    skipped = f", {metrics['skipped']} skipped" if metrics["skipped"] else ""
    print_eval({k: v for k, v in metrics.items() if k not in ("written_to", "skipped")},
               title=f"{args.checkpoint} on {args.puzzles} ({counted}{skipped})")
    for line in report_lines(metrics):
        print(line)
    if "written_to" in metrics:
        print(f"submission and scores: {metrics['written_to']}/{{submission.json, arc_scores.json, pictures/}}")
