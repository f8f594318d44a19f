"""`trm study report`: one study's runs -> results table, fits, plots, and a Markdown + self-contained HTML report.

Everything is computed from the run directories alone (principle 3), so a report can be rebuilt at any time,
also while a study is still running: unfinished and corrupt runs are listed as such and left out of the analysis.
"""

from __future__ import annotations

import base64
import html
import json
import os
import platform
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from trmlab.studies.fits import PowerLawFit, fit_power_law
from trmlab.studies.plots import (Figure, direction, experiment_means, lower_is_better, metric_name, secondary_metric,
                                  study_figures)
from trmlab.studies.results import curves, eval_curves, gather, write_table

FIT_COLUMNS = ("params", "train_examples")  # the seed's two laws: the metric vs model size and vs data size


@dataclass
class Report:
    out_dir: Path
    table: pd.DataFrame
    problems: list[str]
    fits: dict = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def done(self) -> pd.DataFrame:
        """The finished runs: the only ones ranked, fitted and tabulated for halting."""
        return self.table[self.table["status"] == "done"] if len(self.table) else self.table


def _varying(df: pd.DataFrame) -> list[str]:
    """Config columns whose value differs between runs: what the study changed (and what tiny scale set)."""
    cols = [c for c in df.columns if c.startswith(("model.", "train.", "data.")) and c != "train.name"]
    return [c for c in cols if df[c].astype(str).nunique() > 1]


def compute_fits(done: pd.DataFrame) -> dict[str, dict[str, PowerLawFit]]:
    fits = {}
    second = secondary_metric(done)
    for x in FIT_COLUMNS:
        if x in done and done[x].nunique() >= 2:
            fits[x] = {m: fit_power_law(done[x], done[m]) for m in ("score", second) if m and m in done}
    return fits


def run_table(df: pd.DataFrame) -> pd.DataFrame:
    """The table of every run shown in the report (the CSV has every column)."""
    second = secondary_metric(df)
    cols = ["exp_id", "status", *_varying(df), "params", "effective_depth", "steps", "train_time_s", "s_per_step",
            "score", second, "exact_acc_act", "mean_steps_act", "compute_saved_act", "train_flops", "error"]
    cols = [c for i, c in enumerate(cols) if c and c in df and c not in cols[:i]]
    t = df[cols].copy()
    if "train_flops" in t:
        t["train_flops"] = t["train_flops"].map(lambda v: "" if pd.isna(v) else f"{float(v):.3g}")
    for c in t.columns:
        if pd.api.types.is_float_dtype(t[c]):
            t[c] = t[c].map(lambda v: "" if pd.isna(v) else (f"{v:.3g}" if abs(v) >= 1e4
                                                                  else f"{v:.4f}".rstrip("0").rstrip(".")))
    if "score" in t:  # name the headline column by its metric (exact_acc, val_loss) when every run shares it
        name = metric_name(df)
        t = t.rename(columns={"score": name if name not in t.columns else "score"})
    return t.fillna("")


def experiment_table(done: pd.DataFrame) -> pd.DataFrame:
    """One row per experiment, its seeds together: what it varies, the number of seeds, and mean ± sd of the
    headline metric, the finer accuracy, ACT's figures, steps and training time."""
    if not len(done):
        return pd.DataFrame()
    second = secondary_metric(done)
    varying = [c for c in _varying(done) if c != "train.seed"
               and done.groupby("exp_id")[c].nunique(dropna=False).max() == 1]  # set by the experiment, not the seed
    stats = [c for c in ("score", second, "exact_acc_act", "compute_saved_act", "steps", "train_time_s") if c and c in done]
    m = experiment_means(done, stats)
    first = done.groupby("exp_id", sort=False)[varying].first()   # as the config has them (ints stay ints)
    out = m[["exp_id", "seeds"]].join(first, on="exp_id")[["exp_id", *varying, "seeds"]]
    for c in stats:
        digits = 0 if c in ("steps", "train_time_s") else 3
        out[metric_name(done) if c == "score" else c] = [
            f"{v:.{digits}f}" + (f" ± {sd:.{digits}f}" if n > 1 else "") if pd.notna(v) else ""
            for v, sd, n in zip(m[c], m[f"{c}_sd"], m["seeds"])]
    return out.fillna("")


def best_run(done: pd.DataFrame) -> pd.Series | None:
    """The done run with the best headline metric, in the metric's direction (lowest val_loss, highest exact_acc)."""
    d = done[done["score"].notna()] if "score" in done else done.iloc[:0]
    if not len(d) or metric_name(d) == "score":  # no metric, or runs scored on different metrics: no ranking
        return None
    scores = d["score"].astype(float)
    return d.loc[scores.idxmin() if lower_is_better(d) else scores.idxmax()]


def _best_line(rep) -> str:
    done = rep.done
    best = best_run(done)
    if best is None:
        return ""
    scores = done["score"].dropna().astype(float)
    if len(scores) > 1 and scores.nunique() == 1:  # a tie names no winner
        return f"No best run by {metric_name(done)}: all {len(scores)} runs score {scores.iloc[0]:.4g}."
    m = experiment_means(done[done["score"].notna()], ["score"])
    if m["seeds"].max() > 1:  # with seeds, an experiment wins on its mean, not on its luckiest seed
        ranked = m.sort_values("score", ascending=lower_is_better(done))
        best, line = ranked.iloc[0], ""
        if len(ranked) > 1:  # a lead smaller than the seeds' spread is not a winner
            runner = ranked.iloc[1]
            if abs(best["score"] - runner["score"]) < max(best["score_sd"], runner["score_sd"]):
                line = (f" Its lead over {runner['exp_id']} ({runner['score']:.4g} ± {runner['score_sd']:.2g}) is "
                        "smaller than the spread over seeds: no clear winner.")
        return (f"Best experiment by {metric_name(done)} ({direction(lower_is_better(done))}, mean over seeds): "
                f"{best['exp_id']} ({best['score']:.4g} ± {best['score_sd']:.2g}, {best['seeds']} seeds).{line}")
    return (f"Best run by {metric_name(done)} ({direction(lower_is_better(done))}): {best['exp_id']} "
            f"({float(best['score']):.4g}).")


def halting_table(done: pd.DataFrame) -> pd.DataFrame:
    """Adaptive halting at inference: accuracy with all N_sup steps vs stopping at ACT's first 'halt'."""
    need = {"exact_acc", "exact_acc_act", "mean_steps_act", "n_sup_inference"}
    if not need <= set(done.columns):
        return pd.DataFrame()
    t = done[[c for c in ("exp_id", "train.seed", "n_sup_inference", "exact_acc", "exact_acc_act", "mean_steps_act")
              if c in done]].copy()
    t["compute_saved"] = 1 - t["mean_steps_act"] / t["n_sup_inference"]
    return t.round(4)


def _machine() -> str:
    import torch
    return (f"{platform.node() or 'host'}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
            f"torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")


def build_report(root: str | Path, out_dir: str | Path | None = None) -> Report:
    root = Path(root)
    out = Path(out_dir) if out_dir else root / "report"
    df, problems = gather(root)
    rep = Report(out, df, problems)
    rep.files = write_table(df, out) if len(df) else []
    info = {}
    if (root / "study.json").exists():
        try:
            info = json.loads((root / "study.json").read_text())
        except ValueError:
            problems.append(f"{root / 'study.json'}: corrupt, ignored")
    done = rep.done
    if len(done):
        rep.fits = compute_fits(done)
        run_curves = curves(root, list(done["run"]))
        rep.figures = study_figures(done, run_curves, out / "plots", info.get("x", ""), rep.fits,
                                    eval_curves(root, list(done["run"])))
    md = render_markdown(rep, info, root)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(render_html(rep, info, root))
    rep.files += [out / "report.md", out / "report.html"]
    return rep


def _fit_lines(rep: Report) -> list[str]:
    lines = []
    done = rep.done
    for x, per_metric in rep.fits.items():
        for col, fit in per_metric.items():
            y = metric_name(done) if col == "score" else col
            lines.append(f"{y} vs {x}: {fit.describe(y)}")
    return lines


def _intro(rep: Report, info: dict, root: Path) -> list[str]:
    df = rep.table
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    return [f"Runs under `{root}`: " + (", ".join(f"{v} {k}" for k, v in counts.items()) or "none") + ".",
            f"Base preset `{info.get('base', '?')}`, scale `{info.get('scale', '?')}`." if info else "",
            f"Machine: {_machine()}.", _best_line(rep),
            "FLOPs are estimates from parameters and recursion depth (see `trmlab/studies/results.py`)."]


def render_markdown(rep: Report, info: dict, root: Path) -> str:
    title = info.get("title") or root.name
    out = [f"# Study report: {title}", ""]
    if info.get("question"):
        out += [f"*{info['question']}*", ""]
    out += [ln for ln in _intro(rep, info, root) if ln] + [""]
    if rep.problems:
        out += ["## Problems", ""] + [f"- {p}" for p in rep.problems] + [""]
    et = experiment_table(rep.done) if len(rep.table) else pd.DataFrame()
    if len(et) and et["seeds"].max() > 1:
        out += ["## Experiments (mean ± sd over seeds)", "", _md_table(et), ""]
    if len(rep.table):
        out += ["## Runs", "", _md_table(run_table(rep.table)), ""]
    if rep.fits:
        out += ["## Scaling-law fits: y = a - b * x^(-c)", ""] + [f"- {ln}" for ln in _fit_lines(rep)] + [""]
    ht = halting_table(rep.done) if len(rep.table) else pd.DataFrame()
    if len(ht):
        out += ["## Adaptive halting at inference", "",
                "`exact_acc`: all N_sup steps; `exact_acc_act`: each puzzle answered at the first step its Q-head "
                "says halt; `compute_saved` = 1 - mean_steps_act / N_sup.", "", _md_table(ht), ""]
    for fig in rep.figures:
        if fig.path:
            out += [f"## {fig.title}", "", f"![{fig.title}](plots/{fig.path.name})", ""]
            out += [fig.caption, ""] if fig.caption else []
    skipped = [f"- {f.title}: {f.skipped}" for f in rep.figures if f.skipped]
    if skipped:
        out += ["## Plots not drawn", ""] + skipped + [""]
    return "\n".join(out)


def _md_table(t: pd.DataFrame) -> str:
    cells = [[str(c) for c in t.columns]] + [[str(v) for v in row] for row in t.itertuples(index=False)]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells[1:]])


def _inline(text: str) -> str:
    """One line of the Markdown report as HTML: escaped, with its `code` spans as <code> (not raw backticks)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _wide(table_html: str) -> str:
    """A table that scrolls sideways inside the page instead of running off its edge."""
    return f"<div class='wide'>{table_html}</div>"


def render_html(rep: Report, info: dict, root: Path) -> str:
    """One file: the plots are embedded as base64 PNG, so the report can be mailed or archived alone."""
    esc = html.escape
    title = info.get("title") or root.name
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
             "img{max-width:100%}.problem{color:#a00}.wide{overflow-x:auto}</style></head><body>",
             f"<h1>Study report: {esc(title)}</h1>"]
    if info.get("question"):
        parts.append(f"<p><em>{esc(info['question'])}</em></p>")
    parts += [f"<p>{_inline(ln)}</p>" for ln in _intro(rep, info, root) if ln]
    if rep.problems:
        parts.append("<h2>Problems</h2><ul>" + "".join(f"<li class='problem'>{esc(p)}</li>" for p in rep.problems)
                     + "</ul>")
    et = experiment_table(rep.done) if len(rep.table) else pd.DataFrame()
    if len(et) and et["seeds"].max() > 1:
        parts += ["<h2>Experiments (mean ± sd over seeds)</h2>", _wide(et.to_html(index=False, escape=True))]
    if len(rep.table):
        parts += ["<h2>Runs</h2>", _wide(run_table(rep.table).to_html(index=False, escape=True))]
    if rep.fits:
        parts.append("<h2>Scaling-law fits: y = a - b &middot; x<sup>-c</sup></h2><ul>"
                     + "".join(f"<li>{esc(ln)}</li>" for ln in _fit_lines(rep)) + "</ul>")
    ht = halting_table(rep.done) if len(rep.table) else pd.DataFrame()
    if len(ht):
        parts += ["<h2>Adaptive halting at inference</h2>",
                  "<p>compute_saved = 1 - mean_steps_act / N_sup (ACT answers at the first step its Q-head says halt)"
                  "</p>", _wide(ht.to_html(index=False))]
    for fig in rep.figures:
        if fig.path:
            data = base64.b64encode(fig.path.read_bytes()).decode()
            parts += [f"<h2>{esc(fig.title)}</h2>", f"<img alt='{esc(fig.title)}' src='data:image/png;base64,{data}'>"]
            if fig.caption:
                parts.append(f"<p>{esc(fig.caption)}</p>")
    skipped = [f for f in rep.figures if f.skipped]
    if skipped:
        parts.append("<h2>Plots not drawn</h2><ul>" + "".join(f"<li>{esc(f.title)}: {esc(f.skipped)}</li>"
                                                               for f in skipped) + "</ul>")
    return "\n".join(parts + ["</body></html>"])
