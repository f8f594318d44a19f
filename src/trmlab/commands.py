"""The core `trm` verbs: data, train, eval, solve, presets, info. Thin: parse, load config, call the library."""

from __future__ import annotations

import json
import os
from pathlib import Path

from trmlab.config import from_dict, list_presets, load_config, parse_overrides, preset_dict
from trmlab.errors import TrmError


def _preset_or_task(name: str, overrides: list[str]):
    """A preset by that name, else the task's defaults (``trm data build maze`` works without a preset)."""
    from trmlab.tasks import TASKS
    if name in TASKS and name not in list_presets():
        return from_dict(parse_overrides(overrides, {"task": name, "name": name}))
    return load_config(name, overrides)


# ---------------------------------------------------------------------------------------------- trm data
def data_arguments(p):
    p.add_argument("action", choices=["build"], help="build (or reuse) a dataset")
    p.add_argument("preset", help="a task (sudoku, maze, arc, lm) or a preset whose data section to build")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. n_train=5000 (data.n_train=5000)")
    p.add_argument("--data-root", default="data")


def data(args):
    cfg = _preset_or_task(args.preset, args.overrides)
    from trmlab.tasks import get_task
    path = get_task(cfg.task).build_data(cfg.data, args.data_root)
    meta_file = Path(path) / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    sizes = ", ".join(f"{k} {v:,}" for k, v in meta.get("splits", {}).items())
    print(f"{path}  ({sizes})" if sizes else str(path))
    skipped = meta.get("skipped_tasks") or meta.get("skipped_rows") or []
    if skipped:  # a bad ARC task or maze row was left out, not fatal: say how many and where the list is
        print(f"skipped {len(skipped)} bad {'task' if 'skipped_tasks' in meta else 'row'}"
              f"{'' if len(skipped) == 1 else 's'} (listed in {meta_file})")


# ---------------------------------------------------------------------------------------------- trm train
def run_options(p, name_help: str = "run name (default: the preset's name); the run lives in <runs-dir>/<name>"):
    """The options every command that writes a run shares (`trm train`, `trm latent`)."""
    p.add_argument("--name", help=name_help)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--data-root", default="data")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first")
    p.add_argument("--quiet", action="store_true")


def train_arguments(p):
    p.add_argument("preset", help="preset name (see `trm presets`), a YAML file, or a run directory")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. model.n_embd=256 train.steps=2000")
    run_options(p)
    p.add_argument("--processes", type=int, default=0,
                   help="data-parallel processes (default: one per core on a CPU when the batch splits evenly; "
                        "1 keeps one process)")


def run_dir_of(args, cfg, default: str = "run") -> Path:
    """Where a run goes: the run directory given as the preset (to --resume or --overwrite it, wherever it lives),
    unless --name names a new one; else <runs-dir>/<name>."""
    given = Path(args.preset)
    if not args.name and (given / "config.yaml").is_file():
        return given
    return Path(args.runs_dir) / (cfg.name or default)


def train(args):
    cfg = load_config(args.preset, args.overrides)
    if args.name:
        cfg.name = args.name
    run_dir = run_dir_of(args, cfg)
    from trmlab.train.launch import choose_processes, launch
    if args.processes < 0:
        raise TrmError(f"--processes {args.processes}: must be >= 0 (0 = one per core)")
    processes, why = choose_processes(cfg, args.processes)
    if why and not args.quiet:
        print(f"trm train: {why}")
    if processes > 1:
        from trmlab.tasks import get_task
        get_task(cfg.task).build_data(cfg.data, args.data_root)  # once, here: a bad source is one line, once
        return launch(args.argv, processes)
    from trmlab.train.trainer import train as run_training
    summary = run_training(cfg, run_dir, resume=args.resume, overwrite=args.overwrite,
                           data_root=args.data_root, quiet=args.quiet)
    if int(os.environ.get("RANK", 0)) == 0:  # one table, not one per data-parallel process
        print_eval(summary["eval"], title=f"{run_dir}: {summary['steps']} steps, {summary['train_time_s']:.0f} s")


def print_eval(metrics: dict, title: str = ""):
    """A per-supervision-step table of every ``*_per_step`` metric (one column each), then the scalar metrics; other
    lists and dicts (per-task ARC scores, ...) are left to ``--json``."""
    if title:
        print(title)
    label = {"fill_acc": "blank acc"}  # fill_acc: the cells that were blank in the puzzle (the docs' "blank acc")
    per_step = {label.get(name, name.replace("_", " ")): v for k, v in metrics.items()
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


# ---------------------------------------------------------------------------------------------- trm eval
def evaluate_arguments(p):
    p.add_argument("checkpoint", help="run directory or checkpoint directory")
    p.add_argument("--data", help="dataset directory to evaluate on (default: the run's own held-out split)")
    p.add_argument("--split", default="test")
    p.add_argument("--n-sup", type=int, help="supervision steps at inference, >= 1 (default: the config's)")
    p.add_argument("--max-samples", type=int, default=0, help="evaluate the first N puzzles (default 0: all)")
    p.add_argument("--no-ema", action="store_true", help="evaluate the raw weights instead of the EMA")
    p.add_argument("--data-root", default="data")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON (ARC: with per-task scores)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default 0: torch's; 1 on a busy machine)")
    p.add_argument("--out", help="ARC: where submission.json, arc_scores.json and pictures/ go (default: the run "
                                 "directory, replacing the ones its training wrote)")
    p.add_argument("--puzzles", metavar="FILE", help="score every puzzle of a file instead, no dataset built: Sudoku "
                                                     "CSV or text (one puzzle a line), Maze-Hard CSV, ARC task JSON, "
                                                     "folder or ARC Prize challenges file")
    from trmlab.eval.test_time import add_arguments as test_time_arguments
    test_time_arguments(p)


FLAG_MINIMUM = {"n_sup": (1, "supervision steps at inference"), "max_samples": (0, "0 = every puzzle"),
                "threads": (0, "0 = torch's default")}


def check_flags(args, *names: str):
    """argparse takes any integer: a value below its flag's minimum is a one-line error, not a crash deep inside."""
    for name in names:
        value, (low, meaning) = getattr(args, name), FLAG_MINIMUM[name]
        if value is not None and value < low:
            raise TrmError(f"--{name.replace('_', '-')} {value}: must be >= {low} ({meaning})")


def run_of(checkpoint: str) -> Path:
    """The run a checkpoint argument belongs to: <run>/checkpoints/step_N -> <run> (<run>/best for the best one)."""
    p = Path(checkpoint)
    is_step_dir = (p / "model.safetensors").exists() and p.parent.name == "checkpoints"
    return p.parent.parent if is_step_dir else p


def evaluate(args):
    from trmlab.api import load
    from trmlab.tasks import get_task
    import inspect
    import torch
    from trmlab.eval.test_time import options_from_args
    check_flags(args, "n_sup", "max_samples", "threads")
    options = options_from_args(args)  # bad test-time options are refused before anything loads
    if args.threads:
        torch.set_num_threads(args.threads)
    model, cfg = load(args.checkpoint, use_ema=not args.no_ema)
    if args.n_sup:
        cfg.model.n_sup_inference = args.n_sup
    task = get_task(cfg.task)
    # A task whose evaluation writes files (ARC: submission, per-task scores, pictures) writes them as training did.
    writes = "out_dir" in inspect.signature(task.evaluate).parameters
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
    import inspect
    from trmlab.eval.test_time import halt_rule_from_args
    if "halt_rule" not in inspect.signature(task.evaluate).parameters:
        return {}
    return {"halt_rule": halt_rule_from_args(args, model, cfg, train_split, run_of(args.checkpoint))}


def _halting_curve(args, model, cfg, task, data):
    """`trm eval --halting-curve PNG`: every halting rule on the split, as a table and a plot (eval/halting.py)."""
    from trmlab.eval.halting import plot_curve, split_curve
    from trmlab.eval.test_time import halting_curve_lines
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
    from trmlab.eval.test_time import evaluate_test_time, format_result, halt_rule_from_args
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


# ---------------------------------------------------------------------------------------------- trm solve
def solve_arguments(p):
    p.add_argument("checkpoint", help="run directory or checkpoint directory")
    p.add_argument("puzzle", help="Sudoku: 81 characters ('.' or 0 = blank); Maze: a text file or grid; "
                                  "ARC: a task JSON file, or a directory of them (bad tasks are skipped and listed)")
    p.add_argument("--n-sup", type=int, help="supervision steps, >= 1 (default: the config's n_sup_inference)")
    p.add_argument("--out", default="", help="where to write pictures (ARC, Maze)")
    p.add_argument("--data-root", default="data", help="where the run's dataset was built (ARC: finds a task's "
                                                        "trained views and puzzle ids, by file name or content)")
    from trmlab.eval.test_time import add_arguments as test_time_arguments
    test_time_arguments(p, solve=True)


def solve(args):
    from trmlab.api import load
    from trmlab.eval.test_time import halt_rule_from_args, options_from_args
    from trmlab.tasks import get_task
    check_flags(args, "n_sup")
    options = options_from_args(args)
    model, cfg = load(args.checkpoint)
    task = get_task(cfg.task)
    if not hasattr(task, "solve"):
        raise TrmError(f"task '{cfg.task}' has no solver")
    if args.n_sup:
        cfg.model.n_sup_inference = args.n_sup
    import inspect
    params = inspect.signature(task.solve).parameters
    extra = {"data_root": args.data_root} if "data_root" in params else {}
    if "test_time" in params:  # Sudoku, Maze: the run's halting rule (halting.json) and the test-time options
        extra["test_time"] = (halt_rule_from_args(args, model, cfg, None, run_of(args.checkpoint)), options)
    elif not options.is_plain:
        raise TrmError(f"--samples / --views: test-time compute is for sudoku and maze runs, not {cfg.task}")
    return task.solve(model, cfg, args.puzzle, n_sup=cfg.model.n_sup_inference, out=args.out, **extra)


# ---------------------------------------------------------------------------------------------- presets, info
def presets_arguments(p):
    pass


def presets(args):
    for name in list_presets():
        d = preset_dict(name)
        print(f"{name:<18} {d.get('task', ''):<8} {d.get('description', '')}")


def info_arguments(p):
    p.add_argument("preset", help="preset name, YAML file or run directory")
    p.add_argument("overrides", nargs="*")
    p.add_argument("--data-root", default="data", help="LM: where the data is built (its tokenizer's real size "
                                                        "sets the embedding table)")


def info(args):
    from trmlab.api import build_model
    from trmlab.recursion import count_parameters, model_summary
    cfg = load_config(args.preset, args.overrides)
    vocab = _lm_vocab(cfg, args.preset, args.data_root) if cfg.task == "lm" else ""
    model = build_model(cfg)
    c = count_parameters(model)
    sizes = f"params {c['params']:,}"
    if c["puzzle_emb_params"]:   # only puzzle tasks with per-puzzle ids have the table the paper leaves out
        sizes += f" (without puzzle-embedding table {c['params_without_puzzle_emb']:,})"
    if cfg.task == "lm":
        from trmlab.tasks.lm import non_embedding_params
        sizes += f" (non-embedding {non_embedding_params(model):,}; {vocab})"
    depth = model_summary(model, cfg).split(" | ", 1)[1]   # the effective-depth part, worded in one place
    print(f"{cfg.name}: {sizes} | {depth}")


def _lm_vocab(cfg, preset: str, data_root: str) -> str:
    """Fill model.vocab_size with the real tokenizer's size when known, and say where the size came from:
    the embedding and head are most of a small LM, so a count from the configured size can be far off."""
    from trmlab.tasks.lm import built_vocab, padded_vocab
    m = cfg.model
    if m.vocab_size:   # a run's config.yaml holds the size its weights have; otherwise an override set it
        return f"vocab {m.vocab_size} as {'trained' if (Path(preset) / 'config.yaml').is_file() else 'configured'}"
    built = built_vocab(cfg, data_root)
    if built is None:
        m.vocab_size = padded_vocab(cfg.data.vocab_size)
        return f"vocab {m.vocab_size} from data.vocab_size; no tokenizer built in {data_root}/ yet, it may be smaller"
    n, tokenizer = built
    m.vocab_size = padded_vocab(n)
    return f"vocab {m.vocab_size} = the {n} tokens of {tokenizer}, padded"
