"""Study plots (matplotlib, Agg): the headline metric against params, data, recursion, effective depth, FLOPs and
wall time, Pareto frontiers, training curves overlaid, and accuracy vs supervision steps used with ACT halting.

The headline metric is the results' ``score`` column, named by its ``metric`` (exact_acc, val_loss, ...) and ranked
in its ``lower_is_better`` direction: a val_loss frontier keeps the runs no cheaper run beats on *lower* loss.

Every function takes the results table (done runs) and a folder, writes one PNG and returns a `Figure` record;
a plot whose x does not vary across the runs is skipped with the reason, never drawn as a single dot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from trmlab.studies.fits import PowerLawFit  # noqa: E402


@dataclass
class Figure:
    name: str
    title: str
    path: Path | None = None
    caption: str = ""
    skipped: str = ""


LABELS = {"params": "parameters (without puzzle-id table)", "train_examples": "training examples (puzzles x augmentations)",
          "recursions_per_step": "core recursions per supervision step, T x (n+1)",
          "effective_depth": "effective depth, n_layer x (n+1) x T x N_sup", "train_flops": "training FLOPs (estimate)",
          "train_time_s": "training wall time (s)", "model.n_sup_inference": "supervision steps N_sup"}
LOG_X = {"params", "train_examples", "train_flops", "train_time_s", "effective_depth"}


def pareto_front(x, y, lower_is_better: bool = False) -> list[int]:
    """Indices of the points no other point beats on both lower x and better y, in increasing x.

    Better is higher y, or lower y with ``lower_is_better`` (a loss).
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if lower_is_better:
        y = -y
    order = sorted(range(len(x)), key=lambda i: (x[i], -y[i]))
    front, best = [], -np.inf
    for i in order:
        if y[i] > best:
            front.append(i)
            best = y[i]
    return front


def metric_name(df: pd.DataFrame) -> str:
    """The headline metric's name (``score`` when the runs disagree or do not say)."""
    names = df["metric"].dropna().astype(str).unique() if "metric" in df else []
    return names[0] if len(names) == 1 else "score"


def lower_is_better(df: pd.DataFrame) -> bool:
    """The runs' headline direction, as the results table carries it (each run's summary, else its task)."""
    return bool("lower_is_better" in df and df["lower_is_better"].fillna(False).astype(bool).any())


def direction(lower: bool) -> str:
    return "lower is better" if lower else "higher is better"


def secondary_metric(df: pd.DataFrame) -> str | None:
    """A finer-grained accuracy to draw beside the headline one (tiny runs rarely solve whole puzzles)."""
    for c in ("blank_acc", "fill_acc", "cell_acc"):  # fill_acc: runs from before it was named blank_acc
        if c in df and df[c].notna().any():
            return c
    return None


def experiment_means(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """One row per experiment (its seeds' runs together, in run order): the mean of each numeric column of
    ``cols`` as ``<col>``, its sample standard deviation as ``<col>_sd`` (0 for one seed), and ``seeds``."""
    cols = [c for c in dict.fromkeys(cols) if c in df]
    g = df.groupby("exp_id", sort=False)
    out = pd.DataFrame({"seeds": g.size()})
    for c in cols:
        if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            out[c] = g[c].mean()
            out[f"{c}_sd"] = g[c].std(ddof=1).fillna(0.0)
        else:
            out[c] = g[c].first()
    return out.reset_index()


def _save(fig, out_dir: Path, name: str) -> Path:
    path = out_dir / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _annotate(ax, xs, ys, labels):
    for x, y, t in zip(xs, ys, labels):
        ax.annotate(str(t), (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7, alpha=0.8)


def accuracy_vs(df: pd.DataFrame, x: str, out_dir: Path, fits: dict[str, PowerLawFit] | None = None,
                name: str = "") -> Figure:
    """Headline metric (and the secondary accuracy) against column ``x``; numeric or categorical x."""
    name = name or f"acc_vs_{x.replace('.', '_')}"
    metric = metric_name(df)
    title = f"{metric} vs {LABELS.get(x, x)}"
    if x not in df or df[x].notna().sum() == 0:
        return Figure(name, title, skipped=f"no '{x}' column in the results")
    d = df[df[x].notna() & df["score"].notna()]
    if d[x].nunique() < 2:
        return Figure(name, title, skipped=f"'{x}' takes one value across the runs")
    numeric = pd.api.types.is_numeric_dtype(d[x]) and not pd.api.types.is_bool_dtype(d[x])
    second = secondary_metric(d)
    second = second if second and second != metric else None
    # one point per experiment: the mean over its seeds, with their standard deviation; each seed's run faint
    m = experiment_means(d, [x, "score"] + ([second] if second else []))
    cats = list(dict.fromkeys(d[x].astype(str))) if not numeric else []
    pos = (lambda v: v.astype(float).to_numpy()) if numeric else \
        (lambda v: np.array([cats.index(str(c)) for c in v], dtype=float))
    if numeric:
        m = m.sort_values(x)
    xs, seeds = pos(m[x]), int(m["seeds"].max())
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    spread = f" (mean ± sd of {seeds} seeds)" if seeds > 1 else ""
    for col, fmt in (("score", "o-"), (second, "s--")):
        if not col:
            continue
        ax.errorbar(xs, m[col], yerr=m[f"{col}_sd"] if seeds > 1 else None, fmt=fmt if numeric else fmt[0],
                    capsize=3, alpha=1 if col == "score" else 0.7, label=f"{metric if col == 'score' else col}{spread}")
        if seeds > 1:
            ax.plot(pos(d[x]), d[col], ".", color="gray", alpha=0.4)
    _annotate(ax, xs, m["score"], m["exp_id"])
    caption = ""
    for col, fit in (fits or {}).items():
        if fit.meaningful:
            grid = np.geomspace(xs.min(), xs.max(), 100)
            ax.plot(grid, fit.predict(grid), ":", color="k" if col == "score" else "gray",
                    label=f"fit ({metric if col == 'score' else col})")
        caption += f"{metric if col == 'score' else col}: {fit.describe()}. "
    if numeric and x in LOG_X and xs.min() > 0:
        ax.set_xscale("log")
    if not numeric:
        ax.set_xticks(range(len(cats)), cats)
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(f"held-out {metric} ({direction(lower_is_better(d))})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return Figure(name, title, _save(fig, out_dir, name), caption.strip())


def pareto(df: pd.DataFrame, x: str, out_dir: Path) -> Figure:
    name, title = f"pareto_{x}", f"Pareto frontier: {metric_name(df)} vs {LABELS.get(x, x)}"
    d = df[df[x].notna() & df["score"].notna()] if x in df and "score" in df else df.iloc[:0]
    if len(d) < 2 or d[x].nunique() < 2:
        return Figure(name, title, skipped=f"fewer than two runs with distinct '{x}'")
    col, metric, lower = "score", metric_name(d), lower_is_better(d)
    if d["score"].nunique() < 2 and secondary_metric(d):  # every run ties on the headline: rank by the finer one
        col = metric = secondary_metric(d)
        lower = False  # blank_acc / cell_acc
    d = experiment_means(d, [x, col])   # experiments, not seeds, are what a frontier ranks
    xs, ys = d[x].astype(float).to_numpy(), d[col].astype(float).to_numpy()
    front = pareto_front(xs, ys, lower)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.scatter(xs, ys, color="tab:gray", label="runs")
    ax.step(xs[front], ys[front], "o-", where="post", color="tab:red", label="frontier")
    _annotate(ax, xs, ys, d["exp_id"])
    ax.set_xscale("log")
    ax.set_xlabel(LABELS.get(x, x))
    ax.set_ylabel(f"{metric} ({direction(lower)})")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ids = ", ".join(d["exp_id"].iloc[front])
    return Figure(name, title, _save(fig, out_dir, name), f"On the frontier ({metric}, {direction(lower)}): {ids}.")


def training_curves(curves: pd.DataFrame, out_dir: Path) -> Figure:
    name, title = "training_curves", "training curves (per supervision step, carried batch)"
    if curves.empty:
        return Figure(name, title, skipped="no training records in metrics.jsonl")
    cols = [c for c in ("loss", "exact_acc", "cell_acc") if c in curves]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.2 * len(cols), 3.8), squeeze=False)
    colors = {e: f"C{i % 10}" for i, e in enumerate(dict.fromkeys(curves["exp_id"]))}  # one colour per experiment
    for ax, col in zip(axes[0], cols):
        labelled = set()
        for run, g in curves.groupby("run", sort=False):
            g, exp = g.sort_values("step"), g["exp_id"].iloc[0]
            ax.plot(g["step"], g[col].rolling(5, min_periods=1).mean(), color=colors[exp], lw=1.2,
                    label=None if exp in labelled else exp)
            labelled.add(exp)
        ax.set_xlabel("step")
        ax.set_ylabel(f"train {col} (5-record mean)")
        if col == "loss" and (curves[col] > 0).all():
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return Figure(name, title, _save(fig, out_dir, name))


PANEL_COLUMNS = ("data.source", "model.n_embd")  # val curves: one row of panels per corpus and width studied


def with_tokens_and_flops(evals: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """``evals`` with the tokens seen (steps x batch x context x grad_accum) and training FLOPs at each step."""
    per_run = df.set_index("run")
    tokens = per_run["train.batch_size"] * per_run["model.seq_len"] * per_run.get("train.grad_accum", 1)
    e = evals.copy()
    e["tokens"] = e["step"] * e["run"].map(tokens)
    e["flops"] = e["step"] * e["run"].map(per_run["flops_per_step"]) if "flops_per_step" in per_run else np.nan
    return e


def val_curves(evals: pd.DataFrame, df: pd.DataFrame, out_dir: Path) -> Figure:
    """Validation loss during training against tokens seen and against training FLOPs (the FLOP model's count per
    step x steps): the mean over seeds per experiment, the seeds' range shaded; one row per corpus and width."""
    name, title = "val_loss_curves", "validation loss vs tokens and vs training FLOPs (mean over seeds)"
    if evals.empty or "val_loss" not in evals or evals["step"].nunique() < 2:
        return Figure(name, title, skipped="fewer than two evaluations of val_loss during training")
    e, per_run = with_tokens_and_flops(evals.dropna(subset=["val_loss"]), df), df.set_index("run")
    varying = [c for c in PANEL_COLUMNS if c in per_run and per_run[c].nunique() > 1]
    for c in varying:
        e[c] = e["run"].map(per_run[c])
    panels = list(e.groupby(varying, sort=True)) if varying else [((), e)]
    fig, axes = plt.subplots(len(panels), 2, figsize=(10, 3.3 * len(panels)), squeeze=False)
    colors = {x: f"C{i % 10}" for i, x in enumerate(dict.fromkeys(df["exp_id"]))}
    for row, (key, g) in zip(axes, panels):
        label = ", ".join(f"{c.split('.')[-1]} {v}" for c, v in zip(varying, key if isinstance(key, tuple) else (key,)))
        for ax, x in zip(row, ("tokens", "flops")):
            for exp, ge in g.groupby("exp_id", sort=False):
                stats = ge.groupby("step").agg(x=(x, "mean"), mean=("val_loss", "mean"), lo=("val_loss", "min"),
                                               hi=("val_loss", "max"), n=("run", "nunique"))
                ax.plot(stats["x"], stats["mean"], color=colors[exp], lw=1.4,
                        label=exp + (f" ({stats['n'].max()} seeds)" if stats["n"].max() > 1 else ""))
                ax.fill_between(stats["x"], stats["lo"], stats["hi"], color=colors[exp], alpha=0.15, lw=0)
            ax.set_xlabel("tokens seen" if x == "tokens" else "training FLOPs (estimate)")
            ax.set_ylabel("val loss (nats/token)")
            ax.set_title(label, fontsize=9)
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return Figure(name, title, _save(fig, out_dir, name))


def halting(df: pd.DataFrame, out_dir: Path) -> Figure:
    """Accuracy after k fixed supervision steps (lines) and with ACT halting at its mean steps used (stars)."""
    name, title = "acc_vs_supervision_steps", "accuracy vs supervision steps used (fixed k, and ACT halting)"
    if "exact_acc_per_step" not in df or df["exact_acc_per_step"].isna().all():
        return Figure(name, title, skipped="no per-step accuracies in the summaries")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for exp, g in df[df["exact_acc_per_step"].notna()].groupby("exp_id", sort=False):  # mean over seeds
        curves = [json.loads(v) for v in g["exact_acc_per_step"]]
        per_step = np.mean([c for c in curves if len(c) == len(curves[0])], axis=0)
        line, = ax.plot(range(1, len(per_step) + 1), per_step, lw=1, alpha=0.8,
                        label=exp + (f" ({len(g)} seeds)" if len(g) > 1 else ""))
        if "mean_steps_act" in g and g["mean_steps_act"].notna().any():
            ax.plot([g["mean_steps_act"].mean()], [g["exact_acc_act"].mean()], "*", ms=11, color=line.get_color())
    ax.set_xlabel("supervision steps (mean steps used, for the ACT stars)")
    ax.set_ylabel("exact accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    saved = (1 - df["mean_steps_act"] / df["n_sup_inference"]).mean() if "mean_steps_act" in df else float("nan")
    return Figure(name, title, _save(fig, out_dir, name),
                  f"Stars: ACT stops each puzzle at its first q > 0; mean compute saved {saved:.1%}.")


def study_figures(df: pd.DataFrame, curves: pd.DataFrame, out_dir: str | Path, x: str = "",
                  fits: dict[str, dict[str, PowerLawFit]] | None = None,
                  evals: pd.DataFrame | None = None) -> list[Figure]:
    """Every figure for one study's done runs; ``fits`` maps an x column to its fits per metric."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fits = fits or {}
    d = df[df["status"] == "done"] if "status" in df else df
    figs = []
    xs = [x] if x and x not in ("params", "train_examples", "recursions_per_step", "effective_depth") else []
    for col in xs + ["params", "train_examples", "recursions_per_step", "effective_depth", "train_flops",
                     "train_time_s"]:
        figs.append(accuracy_vs(d, col, out_dir, fits.get(col)))
    figs += [pareto(d, "params", out_dir), pareto(d, "train_flops", out_dir), training_curves(curves, out_dir),
             halting(d, out_dir)]
    if evals is not None and "val_loss" in evals:
        figs.append(val_curves(evals, d, out_dir))
    return figs
