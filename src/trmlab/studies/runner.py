"""`trm study run`: each experiment is its own `trm train` process; finished runs are skipped, interrupted ones resumed.

A study's runs live in ``<runs_dir>/<study>/<exp_id>``, ordinary run directories whose ``summary.json`` (written last
by the trainer) marks them finished. A run that fails leaves ``error.json`` in its directory and one line on stdout,
and the study goes on. Runs execute here (``--jobs N`` processes at a time) or go to Slurm through submitit
(``--launcher slurm``; where there is no Slurm, submitit's local executor runs them), never a home-made queue.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from trmlab.errors import TrmError
from trmlab.studies.specs import (DEMO_MINUTES, DEMO_STEP_FRACTION, Experiment, Study, budget_of, resolve,
                                  run_preset, step_flops_of, study_dir)

SEED_SUFFIX = "-seed"   # <exp_id>-seed<k>: the run of seed k > 0 (seed 0 keeps the plain id)


@dataclass
class RunPlan:
    study: str
    exp_id: str
    run_dir: str
    argv: list[str] = field(default_factory=list)  # the `trm train` command
    action: str = "run"      # run | resume | restart | skip (done) | wait (unfinished, no --resume) | invalid
    error: str = ""          #   | same (the config of an earlier experiment on this base: ``error`` names it)

    @property
    def runnable(self) -> bool:
        return self.action in ("run", "resume", "restart")


def run_status(run_dir: str | Path) -> str:
    """done (summary.json readable) | failed (error.json) | interrupted (anything else there) | new."""
    d = Path(run_dir)
    try:
        json.loads((d / "summary.json").read_text())
        return "done"
    except (OSError, ValueError):
        pass
    if (d / "error.json").exists():
        return "failed"
    return "interrupted" if d.exists() and any(d.iterdir()) else "new"


def _has_checkpoint(run_dir: Path) -> bool:
    return any((run_dir / "checkpoints").glob("step_*/state.json"))


def run_name(exp_id: str, seed: int) -> str:
    return exp_id if seed == 0 else f"{exp_id}{SEED_SUFFIX}{seed}"


def plan(selection: list[tuple[Study, Experiment]], runs_dir: str | Path, scale: str = "full", base: str = "",
         extra: list[str] = (), resume: bool = False, data_root: str = "data", budget: str = "",
         seeds: int = 1) -> list[RunPlan]:
    """What `run` would do for each selected experiment and seed; bad overrides become ``invalid`` plans, not
    exceptions. Seed k > 0 adds ``train.seed=<k>`` (weights and batch order; the data stay the same) and runs as
    ``<exp_id>-seed<k>``. An experiment whose config on this base equals an earlier one's (exp04b's 1000 and 2000
    augmentations on a maze, which has 7) is planned as ``same`` and not run twice."""
    plans, seen = [], {}
    for study, exp in selection:
        root = Path(runs_dir) / study_dir(study, scale, budget)
        preset = base or study.base
        try:
            overrides = resolve(exp, preset, scale, list(extra), budget_of(study, scale, budget), study.base)
            start = run_preset(preset, scale)
        except TrmError as e:
            plans += [RunPlan(study.name, run_name(exp.id, k), str(root / run_name(exp.id, k)), action="invalid",
                              error=str(e)) for k in range(seeds)]
            continue
        key = (study.name, start, tuple(sorted(overrides)))
        for k in range(seeds):
            name = run_name(exp.id, k)
            p = RunPlan(study.name, name, str(root / name))
            if key in seen:
                p.action, p.error = "same", run_name(seen[key], k)
                plans.append(p)
                continue
            seed = [f"train.seed={k}"] if k else []
            p.argv = [sys.executable, "-m", "trmlab.cli", "train", start, *overrides, *seed, "--name", name,
                      "--runs-dir", str(root), "--data-root", str(data_root), "--quiet"]
            plans.append(_with_status(p, resume))
        seen.setdefault(key, exp.id)
    return plans


def _with_status(p: RunPlan, resume: bool) -> RunPlan:
    """The plan's action from what its run directory holds (done, unfinished, new)."""
    run_dir = Path(p.run_dir)
    status = run_status(run_dir)
    if status == "done":
        p.action = "skip"
    elif status != "new" and not resume:
        p.action = "wait"
    elif status != "new":  # resume from the last checkpoint; with none there is nothing to keep
        p.action = "resume" if _has_checkpoint(run_dir) else "restart"
        p.argv.append("--resume" if p.action == "resume" else "--overwrite")
    return p


def write_error(run_dir: str | Path, record: dict):
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / "error.json").write_text(json.dumps({**record, "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2))


def _last_error_line(log: Path) -> str:
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()] if log.exists() else []
    errors = [ln for ln in lines if ln.startswith("trm: error:") or "Error" in ln.split(":")[0]]
    return (errors or lines or ["no output"])[-1][:300]


def run_plan(p: RunPlan, env: dict | None = None) -> tuple[int, str]:
    """Run one planned experiment to completion (a subprocess); returns (exit code, one-line outcome).

    A module-level function of plain data, so submitit can pickle it onto a cluster node.
    """
    run_dir = Path(p.run_dir)
    log = run_dir.parent / "logs" / f"{p.exp_id}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"$ {shlex.join(p.argv)}\n")
        f.flush()
        rc = subprocess.run(p.argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}).returncode
    if rc != 0:
        msg = _last_error_line(log)
        write_error(run_dir, {"study": p.study, "exp_id": p.exp_id, "returncode": rc, "error": msg,
                              "command": shlex.join(p.argv), "log": str(log)})
        return rc, f"{p.exp_id}: FAILED (exit {rc}): {msg}"
    (run_dir / "error.json").unlink(missing_ok=True)  # an earlier failure of this run is history now
    try:
        s = json.loads((run_dir / "summary.json").read_text())
        metric = s.get("metric", "exact_acc")
        value = s.get("eval", {}).get(metric, float("nan"))
        return 0, (f"{p.exp_id}: done  {metric} {value:.4f}  {s.get('steps')} steps  "
                   f"{s.get('train_time_s', 0):.0f} s train, {time.time() - t0:.0f} s wall")
    except (OSError, ValueError, TypeError):
        return 0, f"{p.exp_id}: finished, but its summary.json is unreadable"


def config_of(p: RunPlan):
    """The Config a planned run's `trm train` command loads (parsed by the parser `trm train` uses)."""
    from trmlab.cli.train import train_arguments
    from trmlab.config import load_config
    parser = argparse.ArgumentParser()
    train_arguments(parser)
    args = parser.parse_args(p.argv[4:])
    return load_config(args.preset, args.overrides)


def prebuild_data(plans: list[RunPlan], data_root: str, echo=print):
    """Build each distinct dataset once before parallel runs, so two processes never write the same one."""
    from trmlab.tasks import get_task
    seen = set()
    for p in plans:
        if not p.runnable:
            continue
        cfg = config_of(p)
        key = (cfg.task, repr(cfg.data))
        if key in seen:
            continue
        seen.add(key)
        try:
            get_task(cfg.task).build_data(cfg.data, data_root)
        except Exception as e:  # the run itself will fail and record this
            echo(f"data for {p.exp_id}: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def _child_env(study: str, jobs: int) -> dict:
    env = {"TRM_STUDY": study, "WANDB_RUN_GROUP": study}
    if jobs > 1:  # the jobs share the cores: each run is one process (trm train would take one per core)
        env["TRM_PROCESSES"] = "1"
    if "OMP_NUM_THREADS" not in os.environ:  # N processes share the cores instead of oversubscribing them
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // max(jobs, 1)))
    return env


# A training step's FLOP rate (by the FLOP model) over the single-thread fp32 matmul rate of the same machine, for
# the demo preset on one thread: 0.40 on the 2-core Xeon (76 of 192 GFLOP/s), 0.58 on the 2-core AMD EPYC (its
# 0.7 s step, 35 GFLOP/s, of 60). Machines differ 3x in matmul speed, far more than in this ratio, so the estimate
# measures the matmul here.
MATMUL_EFFICIENCY = 0.5
EVAL_FRACTION = 0.1     # evaluation and data loading on top of training, measured on the same runs


@functools.cache
def process_rate() -> float:
    """FLOP/s one single-threaded training process gets on this machine: its measured single-thread fp32 matmul
    rate (0.2 s of 512 x 512 products) x MATMUL_EFFICIENCY."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a = torch.randn(512, 512)
        a @ a
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < 0.2:
            a @ a
            n += 1
    finally:
        torch.set_num_threads(threads)
    return MATMUL_EFFICIENCY * n * 2 * 512 ** 3 / elapsed


def _run_seconds(p: RunPlan) -> float:
    """Estimated wall time of one planned run: its time budget, or its steps x its step's FLOPs at this machine's
    rate."""
    cfg = config_of(p)
    if cfg.train.time_budget_s:
        return cfg.train.time_budget_s * (1 + EVAL_FRACTION)
    return cfg.train.steps * step_flops_of(cfg) / process_rate() * (1 + EVAL_FRACTION)


def estimate(plans: list[RunPlan], jobs: int) -> str:
    """One line: how many runs, and the estimated wall time with ``jobs`` at a time (longest runs first)."""
    todo = [p for p in plans if p.runnable]
    if not todo:
        return "nothing to run"
    try:
        secs = sorted((_run_seconds(p) for p in todo), reverse=True)
    except Exception as e:  # an estimate must never stop a dry run
        return f"{len(todo)} runs; no time estimate ({str(e).splitlines()[0][:80] if str(e) else type(e).__name__})"
    lanes = [0.0] * max(1, jobs)
    for t in secs:   # greedy: each run to the lane that frees first
        lanes[lanes.index(min(lanes))] += t
    return (f"{len(todo)} runs, {jobs} at a time: about {max(lanes) / 60:.0f} min of wall time on this machine "
            f"({sum(secs) / 60:.0f} run-minutes; estimated from the FLOP model at {process_rate() / 1e9:.0f} "
            f"GFLOP/s per single-threaded process: {MATMUL_EFFICIENCY:g} x this machine's matmul rate, measured now)")


def write_study_info(plans: list[RunPlan], studies: dict[str, Study], scale: str, base: str, budget: str = ""):
    """<runs_dir>/<study>/study.json: what the report needs to know about the study (its x, whether to fit)."""
    for name in {p.study for p in plans}:
        s = studies[name]
        root = Path(next(p.run_dir for p in plans if p.study == name)).parent
        root.mkdir(parents=True, exist_ok=True)
        info = {"name": s.name, "title": s.title, "question": s.question, "x": s.x, "fit": s.fit,
                "base": base or s.base, "scale": scale, "experiments": [e.id for e in s.experiments]}
        if scale == "demo":
            info["budget"] = budget_of(s, scale, budget)
            info["budget_per_run"] = {
                "time": f"{DEMO_MINUTES:g} min of training",
                "steps": f"{DEMO_STEP_FRACTION:.2g} x the demo preset's optimizer steps (x the experiment's own ratio)",
                "compute": f"the training FLOPs of {DEMO_STEP_FRACTION:.2g} x the demo preset's steps of the demo "
                           "preset itself"}[info["budget"]]
        (root / "study.json").write_text(json.dumps(info, indent=2))


def execute(plans: list[RunPlan], jobs: int = 1, launcher: str = "local", dry_run: bool = False,
            data_root: str = "data", slurm: dict | None = None, wait: bool = True, echo=print) -> dict:
    """Run the plans; one line per experiment. Returns counts per outcome (done, failed, skipped, ...)."""
    counts = {"done": 0, "failed": 0, "skipped": 0, "unfinished": 0, "invalid": 0, "submitted": 0}
    todo = []
    for p in plans:
        if p.action == "invalid":
            counts["invalid"] += 1
            echo(f"{p.exp_id}: invalid config: {p.error}")
            if not dry_run:
                write_error(p.run_dir, {"study": p.study, "exp_id": p.exp_id, "returncode": 2, "error": p.error})
        elif p.action == "skip":
            counts["skipped"] += 1
            echo(f"{p.exp_id}: done already (summary.json), skipped")
        elif p.action == "same":
            counts["skipped"] += 1
            echo(f"{p.exp_id}: the same config as {p.error} on this base, not run again")
        elif p.action == "wait":
            counts["unfinished"] += 1
            echo(f"{p.exp_id}: unfinished run in {p.run_dir}; pass --resume to continue it")
        elif dry_run:
            echo(shlex.join(p.argv))
        else:
            todo.append(p)
    if dry_run or not todo:
        return counts
    if jobs > 1 or launcher == "slurm":
        prebuild_data(todo, data_root, echo)
    if launcher == "slurm":
        return _submitit(todo, counts, slurm or {}, wait, echo)

    def one(p):
        if p.action != "run":
            echo(f"{p.exp_id}: {'resuming from its last checkpoint' if p.action == 'resume' else 'starting over'}")
        rc, msg = run_plan(p, _child_env(p.study, jobs))
        echo(msg)
        return rc

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for rc in pool.map(one, todo):
            counts["done" if rc == 0 else "failed"] += 1
    return counts


def _submitit(todo: list[RunPlan], counts: dict, slurm: dict, wait: bool, echo) -> dict:
    try:
        import submitit
    except ImportError:
        raise TrmError("--launcher slurm needs submitit (pip install 'trmlab[study]')") from None
    folder = Path(todo[0].run_dir).parent.parent / "submitit"
    cluster = slurm.pop("cluster", None)  # None: Slurm when sbatch is there, else submitit's local executor
    executor = submitit.AutoExecutor(folder=str(folder), cluster=cluster)
    params = {"timeout_min": int(slurm.pop("timeout_min", 24 * 60)), "name": "trm-study"}
    params.update({k: v for k, v in slurm.items() if v not in (None, "")})
    executor.update_parameters(**params)
    echo(f"submitit: {executor.cluster} executor, logs in {folder}")
    jobs = []
    with executor.batch():
        for p in todo:
            jobs.append((p, executor.submit(run_plan, p, _child_env(p.study, 1))))
    for p, job in jobs:
        echo(f"{p.exp_id}: submitted as job {job.job_id}")
    counts["submitted"] = len(jobs)
    if not wait:
        return counts
    for p, job in jobs:
        try:
            rc, msg = job.result()
        except Exception as e:  # the job itself died (node failure, timeout): record it like a failed run
            rc, msg = 1, f"{p.exp_id}: FAILED in the scheduler: {str(e).strip().splitlines()[-1][:300]}"
            write_error(p.run_dir, {"study": p.study, "exp_id": p.exp_id, "returncode": rc, "error": msg})
        echo(msg)
        counts["done" if rc == 0 else "failed"] += 1
    return counts

