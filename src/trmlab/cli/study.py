"""`trm study {list,run,export,report}`: seed 004's scaling studies from the command line (thin over trmlab.studies).

    trm study list                                    # 12 studies, 67 experiments, their overrides
    trm study run model_size --scale tiny --base sudoku --jobs 2   # or a pattern: exp01, exp02a, 'exp0[56]*'
    trm study run exp01 --scale tiny --base sudoku --resume        # after an interruption: finish what is left
    trm study report model_size --scale tiny --base sudoku         # table + fits + plots + report.{md,html}
    trm study export --out configs/                   # every experiment as a YAML file for `trm train <file>`

Runs live in ``runs/studies/<scale>[-<base>]/<study>/<exp_id>``. Arguments with '=' are extra overrides applied to
every experiment (``train.steps=50``); a study can also be a YAML file (see docs/studies.md).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from trmlab.cli.common import data_root, runs_dir
from trmlab.errors import TrmError
from trmlab.studies import specs


def study_arguments(p):
    sub = p.add_subparsers(dest="action", metavar="{list,run,export,report}")
    sub.required = True

    def common(q, runs=True):
        q.add_argument("--scale", default="full", metavar="{tiny,demo,full}",
                       help="tiny: every experiment shrunk to run on a CPU in minutes; demo: on the demo's own model "
                            "and data (Sudoku and maze studies), long enough to learn; full: as the seed specifies")
        q.add_argument("--budget", default="", metavar="{steps,compute,time}",
                       help=f"--scale demo: each run {specs.DEMO_STEP_FRACTION:.2g} x the demo preset's optimizer "
                            "steps, or the training FLOPs of that many baseline steps, or "
                            f"{specs.DEMO_MINUTES:g} minutes (default: the study's own; `trm study list --scale demo`)")
        q.add_argument("--base", default="", help="run the studies on this preset instead of their own (sudoku-paper)")
        if runs:
            runs_dir(q, default="", help="default: runs/studies/<scale>[-<base>]")

    q = sub.add_parser("list", help="studies, experiments and (where runs exist) their status")
    q.add_argument("patterns", nargs="*", help="study names, experiment ids, prefixes (exp02a) or globs")
    common(q)

    q = sub.add_parser("run", help="run experiments as separate `trm train` processes; finished ones are skipped")
    q.add_argument("patterns", nargs="+", help="study names, ids, prefixes, globs, study YAML files, key=value")
    common(q)
    q.add_argument("--jobs", type=int, default=None,
                   help="runs at a time (local launcher; default: one per core, one thread each)")
    q.add_argument("--seeds", type=int, default=1, help="runs per experiment (train.seed 0..N-1; default 1)")
    q.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    q.add_argument("--resume", action="store_true", help="continue interrupted or failed runs")
    data_root(q)
    q.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="slurm: submit through submitit (its local executor where there is no Slurm)")
    q.add_argument("--slurm-partition", default="")
    q.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per job")
    q.add_argument("--slurm-cpus", type=int, default=0, help="CPUs per job")
    q.add_argument("--slurm-timeout-min", type=int, default=24 * 60)
    q.add_argument("--no-wait", action="store_true", help="slurm: submit and return")

    q = sub.add_parser("export", help="write experiment configs (and the architecture configs) as YAML files")
    q.add_argument("patterns", nargs="*")
    q.add_argument("--out", default="study_configs")
    common(q, runs=False)

    q = sub.add_parser("report", help="results table, fits, plots and a Markdown + HTML report of a study's runs")
    q.add_argument("study", help="a study name, an id pattern of one study, or a directory of runs")
    common(q)
    q.add_argument("--out", default="", help="default: <study runs>/report")


def study_runs_dir(args) -> Path:
    if args.runs_dir:
        return Path(args.runs_dir)
    return Path("runs/studies") / (args.scale + (f"-{args.base}" if args.base else ""))


def _select(patterns: list[str]):
    """(selection, studies by name) from names/patterns and study files; TrmError when nothing matches."""
    files = [p for p in patterns if p.endswith((".yaml", ".yml"))]
    selection, by_name = [], {s.name: s for s in specs.STUDIES}
    for f in files:
        s = specs.load_study_file(f)
        by_name[s.name] = s
        selection += [(s, e) for e in s.experiments]
    names = [p for p in patterns if p not in files]
    if names or not files:
        chosen, unmatched = specs.select(names or ["*"])
        if unmatched:  # a typo would otherwise run (or list) only part of what was meant
            raise TrmError(f"no study or experiment matches {', '.join(repr(p) for p in unmatched)}; studies: "
                           f"{', '.join(s.name for s in specs.STUDIES)} (ids: `trm study list`)")
        selection += chosen
        by_name.update({s.name: s for s, _ in chosen})
    if not selection:  # a study file whose grid lists no values
        raise TrmError(f"nothing selected by {' '.join(patterns)}; see `trm study list`")
    return selection, by_name


def _split(items: list[str]) -> tuple[list[str], list[str]]:
    return [i for i in items if "=" not in i], [i for i in items if "=" in i]


def check_scale(args):
    """--scale and --budget as one line each (argparse's choices would print its usage block too)."""
    if args.scale not in specs.SCALES:
        raise TrmError(f"--scale {args.scale}: must be one of {', '.join(specs.SCALES)}")
    if args.budget and (args.budget not in specs.BUDGETS or args.scale != "demo"):
        raise TrmError(f"--budget {args.budget}: must be one of {', '.join(specs.BUDGETS)}, with --scale demo")


def study(args):
    check_scale(args)
    return {"list": _list, "run": _run, "export": _export, "report": _report}[args.action](args)


def _list(args):
    from trmlab.studies.runner import run_status
    selection, _ = _select(args.patterns)
    root = study_runs_dir(args)
    show_status = root.exists()
    current = None
    for s, e in selection:
        if s.name != current:
            current = s.name
            n = sum(1 for ss, _ in selection if ss.name == s.name)
            budget = f" [demo budget: {specs.budget_of(s, 'demo', args.budget)}]" if args.scale == "demo" else ""
            print(f"\n{s.name} ({n}): {s.title}. {s.question}{budget}")
        status = f"{run_status(root / specs.study_dir(s, args.scale, args.budget) / e.id):<12}" if show_status else ""
        note = f"  # {e.note}" if e.note else ""
        print(f"  {e.id:<22}{status}{' '.join(e.overrides) or '(the base preset)'}{note}")
    n_std = sum(1 for s, _ in selection if s.name != "baseline")
    n_studies = len({s.name for s, _ in selection} - {"baseline"})
    print(f"\n{n_studies} studies, {n_std} experiments" + (" + the baseline" if n_std < len(selection) else "")
          + (f"; status from {root}" if show_status else ""))


def check_counts(args):
    """argparse takes any integer: --jobs 0 would start nothing and report nothing done."""
    for flag, value, low in (("--jobs", args.jobs, 1), ("--seeds", args.seeds, 1), ("--slurm-gpus", args.slurm_gpus, 0),
                             ("--slurm-cpus", args.slurm_cpus, 0), ("--slurm-timeout-min", args.slurm_timeout_min, 1)):
        if value < low:
            raise TrmError(f"{flag} {value}: must be >= {low}")


def refuse_if_all_invalid(plans):
    """When no selected experiment has a valid config (a bad extra override, as a rule), nothing would run: one
    line, exit 2. A few invalid ones among valid ones are listed by ``execute`` and the rest run."""
    invalid = [p for p in plans if p.action == "invalid"]
    if not plans or len(invalid) < len(plans):
        return
    errors = sorted({p.error for p in invalid})
    ids = ", ".join(p.exp_id for p in invalid[:3]) + (f" and {len(invalid) - 3} more" if len(invalid) > 3 else "")
    if len(errors) == 1:
        raise TrmError(f"{errors[0]} (in every selected experiment: {ids})")
    raise TrmError(f"no selected experiment has a valid config ({ids}); the first: {invalid[0].error}")


def default_jobs(args) -> int:
    """One run per core at tiny and demo scale (each one thread: one process per core beats threads here);
    one at a time at full scale, where each run takes the whole machine."""
    import os
    return (os.cpu_count() or 1) if args.scale in ("tiny", "demo") and args.launcher == "local" else 1


def _run(args):
    from trmlab.studies.runner import estimate, execute, plan, write_study_info
    args.jobs = default_jobs(args) if args.jobs is None else args.jobs
    check_counts(args)
    patterns, extra = _split(args.patterns)
    selection, by_name = _select(patterns)
    if args.scale == "demo":  # demo scale carries each experiment over to its task's own keys
        for base in {args.base or s.base for s, _ in selection}:
            specs.demo_preset(base)  # a task without a demo preset: one line before anything is planned
    else:
        specs.check_applies(selection, args.base)
    root = study_runs_dir(args)
    plans = plan(selection, root, args.scale, args.base, extra, args.resume, args.data_root, args.budget,
                 args.seeds)
    refuse_if_all_invalid(plans)
    if args.dry_run:
        print(estimate(plans, args.jobs))
    else:
        write_study_info(plans, by_name, args.scale, args.base, args.budget)
    slurm = {"slurm_partition": args.slurm_partition, "gpus_per_node": args.slurm_gpus or None,
             "cpus_per_task": args.slurm_cpus or None, "timeout_min": args.slurm_timeout_min}
    counts = execute(plans, jobs=args.jobs, launcher=args.launcher, dry_run=args.dry_run, data_root=args.data_root,
                     slurm=slurm, wait=not args.no_wait)
    print(", ".join(f"{v} {k}" for k, v in counts.items() if v) + f"  ({root})")
    return 1 if counts["failed"] or counts["invalid"] else 0


def _export(args):
    selection, _ = _select(args.patterns)
    if args.scale != "demo":
        specs.check_applies(selection, args.base)
    out = Path(args.out)
    try:
        n, arch = _write_configs(selection, args, out)
    except OSError as e:  # a read-only or full --out: Path.write_text's error names no file when the disk fills
        raise TrmError(f"--out {out}: cannot write the configs ({e.strerror or e})") from None
    print(f"{n} experiment configs in {out / 'experiments'}, {len(arch)} architecture configs in {out / 'arch'}; "
          f"run one with: trm train {out / 'experiments'}/<id>.yaml")


def _write_configs(selection, args, out: Path) -> tuple[int, dict]:
    (out / "experiments").mkdir(parents=True, exist_ok=True)
    n = 0
    for s, e in selection:
        try:
            cfg = specs.resolved_config(e, args.base or s.base, args.scale,
                                        budget=specs.budget_of(s, args.scale, args.budget), study_base=s.base)
        except TrmError as err:
            print(f"{e.id}: invalid config: {err}")
            continue
        header = f"# {s.name}/{e.id}: {' '.join(e.overrides) or 'baseline'} (scale {args.scale})\n"
        (out / "experiments" / f"{e.id}.yaml").write_text(header + yaml.safe_dump(cfg, sort_keys=False))
        n += 1
    arch = specs.arch_configs(args.base or specs.BASE_PRESET)
    (out / "arch").mkdir(exist_ok=True)
    for name, d in arch.items():
        (out / "arch" / f"{name}.yaml").write_text(yaml.safe_dump(d, sort_keys=False))
    return n, arch


def _report(args):
    from trmlab.studies.report import build_report
    root = Path(args.study)
    if not root.is_dir():
        selection, _ = _select([args.study])
        names = sorted({s.name for s, _ in selection})
        if len(names) != 1:
            raise TrmError(f"'{args.study}' spans studies {', '.join(names)}; report one of them")
        root = study_runs_dir(args) / specs.study_dir(selection[0][0], args.scale, args.budget)
    from trmlab.studies.results import find_runs
    if not root.is_dir() or not find_runs(root):
        hint = "" if root == Path(args.study) else f"; run the study first (trm study run {args.study} ...)"
        raise TrmError(f"no runs at {root}{hint}")
    try:
        rep = build_report(root, args.out or None)
    except OSError as e:  # a read-only or full report directory
        where = e.filename or args.out or root / "report"
        raise TrmError(f"{where}: cannot write the report ({e.strerror or e})") from None
    for p in rep.problems:
        print(p)
    done = int((rep.table["status"] == "done").sum()) if len(rep.table) else 0
    print(f"{len(rep.table)} runs ({done} done) -> {rep.out_dir}/report.md, report.html, results.csv")
    from trmlab.studies.report import _best_line, _fit_lines
    if _best_line(rep):
        print(_best_line(rep))
    for line in _fit_lines(rep):
        print(f"fit {line}")
    for f in rep.figures:
        print(f"  {f.path}" if f.path else f"  ({f.name} skipped: {f.skipped})")
