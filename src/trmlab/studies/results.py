"""Every run under a directory as one table (CSV and parquet): its config, summary, final training record, and
derived compute. Analysis is a pure function of run directories; a corrupt or partial run is reported and skipped.
``score`` is each run's headline metric (its summary's ``metric``: exact_acc for puzzles, val_loss for LM) and
``lower_is_better`` its direction, which every ranking (Pareto fronts, best run) follows.

FLOPs come from the project's one FLOP model (``trmlab.eval.flops``), fed with each run's own config: its
seq_len and puzzle prefix as trained (filled from the data), batch, supervision mode, recursion schedule, and
the core / token-mixer / head parameter counts its summary records (older summaries: every parameter but the
puzzle-id table counted as a core matmul, which overcounts the embedding).
  train_flops     = steps x flops_per_step
  inference_flops = per answer with n_sup_inference steps (``_act``: x mean_steps_act steps instead)
A GRPO run (``trm latent rl``) written before config.yaml existed is read from its rl_config.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import yaml

from trmlab.config import ModelConfig, TrainConfig
from trmlab.eval.flops import inference_flops, step_flops
from trmlab.studies.runner import SEED_SUFFIX
from trmlab.studies.specs import flatten

MARKERS = ("config.yaml", "summary.json", "error.json", "metrics.jsonl", "rl_config.json")
SKIP_PARTS = {"checkpoints", "best", "logs", "submitit", "report"}


def find_runs(root: str | Path) -> list[Path]:
    root = Path(root)
    dirs = {p.parent for m in MARKERS for p in root.rglob(m)}
    return sorted(d for d in dirs if not SKIP_PARTS & set(d.relative_to(root).parts))


def experiment_of(run_name: str) -> str:
    """The experiment a run belongs to: ``exp02a_03-seed2`` is seed 2 of exp02a_03 (`trm study run --seeds`)."""
    return re.sub(re.escape(SEED_SUFFIX) + r"\d+$", "", run_name)


def read_metrics(path: Path) -> tuple[list[dict], int]:
    """(records, number of unreadable lines): a crash can leave a half-written last line."""
    records, bad = [], 0
    if not path.exists():
        return records, bad
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records, bad


def _section(row: dict, name: str, cls):
    """The run's ``name`` section as ``cls`` (its defaults for keys an older config lacks; not validated)."""
    obj = cls()
    for f in fields(obj):
        if f"{name}.{f.name}" in row:
            setattr(obj, f.name, row[f"{name}.{f.name}"])
    return obj


def flops(row: dict) -> dict:
    """Training and inference FLOPs of a run (module docstring); {} where its config or sizes are unknown."""
    m = _section(row, "model", ModelConfig)
    split = {k: row.get(k) or 0 for k in ("core_params", "head_params", "mixer_params")}
    if not split["core_params"]:   # a summary from before the split was recorded
        split = {"core_params": row.get("params_without_puzzle_emb") or row.get("params"), "head_params": 0}
    if not split["core_params"] or not m.seq_len:   # no config.yaml, or shapes never filled from the data
        return {}
    cfg = SimpleNamespace(model=m, train=_section(row, "train", TrainConfig))
    step = step_flops(cfg, **split)
    out = {"recursions_per_step": m.T_recursion * (m.n_loops + 1), "flops_per_step": step,
           "train_flops": step * (row.get("steps") or 0), "inference_flops": inference_flops(m, **split)}
    if row.get("mean_steps_act") is not None:
        out["inference_flops_act"] = inference_flops(m, **split, steps=row["mean_steps_act"])
    return out


def _data_size(row: dict) -> dict:
    """Training puzzles and rows (puzzles x (1 + augmentations)) as the data config describes them."""
    if "data.n_train" not in row:
        return {}
    generated = row.get("data.source", "generate") == "generate"
    puzzles = row["data.n_train"] if generated or not row.get("data.subsample_size") else row["data.subsample_size"]
    return {"train_puzzles": puzzles, "train_examples": puzzles * (1 + (row.get("data.num_aug") or 0))}


def lower_is_better(summary: dict, task: str | None) -> bool:
    """The headline metric's direction as the run recorded it (summary.json), else as its task declares it (runs
    written before the summary said), else higher is better."""
    if "lower_is_better" in summary:
        return bool(summary["lower_is_better"])
    from trmlab.errors import TrmError
    from trmlab.tasks import get_task
    try:
        t = get_task(task or "")
    except TrmError:
        return False
    return t.metric == summary.get("metric", t.metric) and bool(getattr(t, "lower_is_better", False))


def read_config(run_dir: Path) -> dict | None:
    """The run's config.yaml as a dict; a GRPO run from before config.yaml: its rl_config.json. None if neither."""
    if (run_dir / "config.yaml").exists():
        return yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    if (run_dir / "rl_config.json").exists():
        old = json.loads((run_dir / "rl_config.json").read_text())
        return {**old.get("config", {}), "rl": {**old.get("rl", {}), "phase2_run": old.get("phase2_run", "")}}
    return None


def read_run(run_dir: Path, root: Path) -> tuple[dict, list[str]]:
    """One row for ``run_dir`` and the problems found in it."""
    problems = []
    rel = run_dir.relative_to(root)
    row = {"run": str(rel) if str(rel) != "." else run_dir.name, "exp_id": experiment_of(run_dir.name),
           "study": rel.parts[-2] if len(rel.parts) > 1 else root.name}
    try:
        cfg = read_config(run_dir)
        if cfg is not None:
            row["task"] = cfg.get("task")
            row.update(flatten({k: cfg.get(k) for k in ("model", "train", "data", "rl")}))
    except (OSError, ValueError, yaml.YAMLError):
        problems.append(f"{row['run']}: config.yaml is corrupt")
    records, bad = read_metrics(run_dir / "metrics.jsonl")
    if bad:
        problems.append(f"{row['run']}: {bad} unreadable line(s) in metrics.jsonl skipped")
    train = [r for r in records if "eval" not in r]
    if train:
        last = train[-1]
        row.update({"last_step": last.get("step"), "final_train_loss": last.get("loss"),
                    "final_train_exact_acc": last.get("exact_acc")})
    status = "interrupted"
    if (run_dir / "summary.json").exists():
        try:
            s = json.loads((run_dir / "summary.json").read_text())
            ev = s.pop("eval", {}) or {}
            row.update({k: v for k, v in s.items() if not isinstance(v, (dict, list))})
            row.update({k: v for k, v in ev.items() if not isinstance(v, (dict, list))})
            row.update({k: json.dumps(v) for k, v in ev.items() if isinstance(v, list)})
            row["metric"] = s.get("metric", "exact_acc")
            row["score"] = ev.get(row["metric"])
            row["lower_is_better"] = lower_is_better(s, row.get("task"))
            status = "done"
        except (OSError, ValueError, AttributeError):
            problems.append(f"{row['run']}: summary.json is corrupt; run skipped")
            status = "corrupt"
    if status != "done" and (run_dir / "error.json").exists():
        try:
            row["error"] = json.loads((run_dir / "error.json").read_text()).get("error", "")
        except ValueError:
            row["error"] = "error.json unreadable"
        status = "failed"
    if status == "interrupted":
        problems.append(f"{row['run']}: no summary.json (interrupted or running); left out of the analysis")
    row["status"] = status
    if status == "done":
        row.update(_data_size(row))
        row.update(flops(row))
        if row.get("mean_steps_act") is not None and row.get("n_sup_inference"):
            row["compute_saved_act"] = 1 - row["mean_steps_act"] / row["n_sup_inference"]
    return row, problems


def gather(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """(table of every run under ``root``, one-line problems); runs that are not done have status != 'done'."""
    root = Path(root)
    rows, problems = [], []
    for d in find_runs(root):
        row, probs = read_run(d, root)
        rows.append(row)
        problems += probs
    df = pd.DataFrame(rows)
    if len(df):
        front = [c for c in ("study", "exp_id", "train.seed", "status", "score", "metric", "lower_is_better", "params", "effective_depth", "steps",
                             "train_time_s") if c in df]
        df = df[front + [c for c in df.columns if c not in front]]
    return df, problems


def _run_records(root: str | Path, runs: list[str] | None):
    """(run path relative to ``root``, experiment id, metrics.jsonl records) for every run, or those in ``runs``."""
    root = Path(root)
    for d in find_runs(root):
        rel = str(d.relative_to(root)) if d != root else d.name
        if runs is None or rel in runs:
            yield rel, experiment_of(d.name), read_metrics(d / "metrics.jsonl")[0]


def curves(root: str | Path, runs: list[str] | None = None) -> pd.DataFrame:
    """Training records of every run (or of ``runs``) as one long table: run, exp_id, step, loss, ..."""
    frames = []
    for rel, exp, records in _run_records(root, runs):
        train = [r for r in records if "eval" not in r and "step" in r]
        if train:
            frames.append(pd.DataFrame(train).assign(run=rel, exp_id=exp))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def eval_curves(root: str | Path, runs: list[str] | None = None) -> pd.DataFrame:
    """The evaluations during training (metrics.jsonl's ``eval`` records) as one long table: run, exp_id, step,
    and each numeric metric (val_loss, exact_acc, ...)."""
    rows = []
    for rel, exp, records in _run_records(root, runs):
        for r in records:
            if isinstance(r.get("eval"), dict) and "step" in r:
                numbers = {k: v for k, v in r["eval"].items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)}
                rows.append({"run": rel, "exp_id": exp, "step": r["step"], **numbers})
    return pd.DataFrame(rows)


def write_table(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """results.csv always; results.parquet when a parquet engine is installed."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "results.csv"]
    df.to_csv(paths[0], index=False)
    try:
        # Mixed-type object columns (a key set in some runs only) are stored as text so parquet accepts them.
        safe = df.copy()
        for c in safe.columns[safe.dtypes == object]:
            safe[c] = safe[c].map(lambda v: None if v is None or (isinstance(v, float) and pd.isna(v)) else str(v))
        safe.to_parquet(out_dir / "results.parquet", index=False)
        paths.append(out_dir / "results.parquet")
    except ImportError:
        print("results.parquet skipped: install pyarrow for parquet output")
    return paths
