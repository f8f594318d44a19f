"""`trm train <preset|file|run dir> [key=value ...]`: train through the one trainer (one process per core
on a multi-core CPU), then print the final evaluation."""

from __future__ import annotations

import os
from pathlib import Path

from trmlab.cli.common import run_options
from trmlab.cli.eval import print_eval
from trmlab.config import load_config
from trmlab.errors import TrmError


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
