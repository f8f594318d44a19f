"""LM runs compared (`trm compare`): recursive LMs beside the plain GPT baseline, on the same data and budget.

    trm compare runs/lm-tiny runs/gpt-tiny --plot runs/compare.png

One row per run: final-step val loss, perplexity, bits/byte against the corpus entropy bound, refinement,
parameters, effective depth, training tokens, wall time, tokens/s and FLOPs per token. Below the table, each
recursive run's refinement is printed next to the baseline's loss (a GPT run in the list), because the
improvement reward can make the first step worse on purpose: refinement only counts if the final loss beats
the baseline. ``--plot`` draws val loss against training tokens and against training FLOPs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from trmlab.config import from_dict
from trmlab.errors import TrmError


def load_run(path: str | Path) -> dict:
    """summary.json, the resolved config and the eval history of a finished LM run directory."""
    path = Path(path)
    try:
        summary = json.loads((path / "summary.json").read_text())
        cfg = from_dict(yaml.safe_load((path / "config.yaml").read_text()))
    except FileNotFoundError as e:
        raise TrmError(f"{path}: not a finished run ({Path(e.filename).name} missing)") from None
    if cfg.task != "lm":
        raise TrmError(f"{path}: a '{cfg.task}' run; compare is for language models (task lm)")
    history = []
    if (path / "metrics.jsonl").exists():
        for line in (path / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line) if line.strip() else {}
            if "eval" in rec:
                history.append((rec["step"], rec["eval"]["val_loss"]))
    if not history or history[-1][0] != summary["steps"]:
        history.append((summary["steps"], summary["eval"]["val_loss"]))
    return {"path": path, "name": path.name, "summary": summary, "cfg": cfg, "history": history,
            "flops": _flops(cfg)}


def _flops(cfg) -> float:
    """Training FLOPs per token (the one FLOP model, eval/flops.py) of the run's model, built on the meta device
    (no memory, no time)."""
    from trmlab.eval.flops import flops_per_token, matmul_params
    from trmlab.models.lm import build_lm
    with torch.device("meta"):
        model = build_lm(cfg.model)
    return flops_per_token(cfg, **matmul_params(model))


def tokens_per_step(cfg) -> int:
    return cfg.train.batch_size * cfg.model.seq_len


def rows(runs: list[dict]) -> list[dict]:
    out = []
    for r in runs:
        s, e, cfg = r["summary"], r["summary"]["eval"], r["cfg"]
        tokens = s["steps"] * tokens_per_step(cfg)
        out.append({"run": r["name"], "arch": cfg.model.arch, "params": s["params"],
                    "depth": s["effective_depth"], "tokens": tokens, "wall_s": s["train_time_s"],
                    "tokens_per_s": tokens / max(s["train_time_s"], 1e-9), "flops_per_token": r["flops"],
                    "val_loss": e["val_loss"], "ppl": e["ppl"], "bits_per_byte": e["bits_per_byte"],
                    "bound_bits_per_byte": e.get("entropy_bound_bits_per_byte"),
                    "gap_nats": e.get("gap_to_bound"), "refinement_pct": e["refinement_pct"],
                    "first_step_loss": e["first_step_loss"], "n_sup": e["n_sup_inference"]})
    return out


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


# (header, alignment): text left, numbers right; widths come from the content, so long values never shift a column
_COLUMNS = [("run", "<"), ("model", "<"), ("params", ">"), ("depth", ">"), ("tokens", ">"), ("wall s", ">"),
            ("tok/s", ">"), ("MFLOP/tok", ">"), ("val loss", ">"), ("ppl", ">"), ("bits/B", ">"), ("bound", ">"),
            ("gap nats", ">"), ("refine", ">")]


def _cells(r: dict) -> list[str]:
    refine = f"{r['refinement_pct']:.1f}%" if r["n_sup"] > 1 else "-"
    return [r["run"], r["arch"], f"{r['params']:,}", str(r["depth"]), f"{r['tokens']:,}", f"{r['wall_s']:.0f}",
            f"{r['tokens_per_s']:.0f}", f"{r['flops_per_token'] / 1e6:.1f}", f"{r['val_loss']:.4f}",
            f"{r['ppl']:.2f}", f"{r['bits_per_byte']:.3f}", _fmt(r["bound_bits_per_byte"], ".3f"),
            _fmt(r["gap_nats"], ".3f"), refine]


def table(runs: list[dict]) -> str:
    """One row per run; each row's bits/B sits next to its own run's bound (runs may use different corpora)."""
    grid = [[name for name, _ in _COLUMNS]] + [_cells(r) for r in rows(runs)]
    widths = [max(len(row[i]) for row in grid) for i in range(len(_COLUMNS))]
    return "\n".join(" ".join(f"{cell:{align}{w}}" for cell, (_, align), w in zip(row, _COLUMNS, widths))
                     for row in grid)


def _bounds(runs: list[dict]) -> dict[tuple[float, float], list[str]]:
    """The distinct corpus entropy bounds (nats/token, bits/byte) and the runs measured against each."""
    out: dict[tuple[float, float], list[str]] = {}
    for r in runs:
        e = r["summary"]["eval"]
        if e.get("entropy_bound") is not None:
            out.setdefault((e["entropy_bound"], e["entropy_bound_bits_per_byte"]), []).append(r["name"])
    return out


def verdicts(runs: list[dict]) -> list[str]:
    """Each recursive run's refinement next to the baseline's final loss; warnings when runs are not comparable."""
    from trmlab.tasks.lm import refinement_line
    notes = []
    if len({json.dumps(r["cfg"].to_dict()["data"], sort_keys=True) for r in runs}) > 1:
        notes.append("WARNING: the runs were trained on different data; their losses are not comparable")
    walls = [r["summary"]["train_time_s"] for r in runs]
    if max(walls) > 1.2 * min(walls):
        notes.append(f"note: wall times differ ({min(walls):.0f}-{max(walls):.0f} s); compare at equal time or tokens")
    bounds = _bounds(runs)
    for (nats, bits), names in bounds.items():
        # one shared bound needs no names; different corpora or tokenizers each get their own line
        whose = f" of {', '.join(names)}" if len(bounds) > 1 else ""
        notes.append(f"corpus entropy bound (val){whose}: {nats:.4f} nats/token = {_fmt(bits, '.4f')} bits/byte")
    baselines = [r for r in runs if r["cfg"].model.arch == "gpt"]
    base = min(baselines, key=lambda r: r["summary"]["eval"]["val_loss"]) if baselines else None
    for r in runs:
        if r["cfg"].model.arch == "gpt":
            continue
        b_loss = base["summary"]["eval"]["val_loss"] if base else None
        notes.append(f"{r['name']}: " + refinement_line(r["summary"]["eval"], b_loss,
                                                        f"baseline {base['name']}" if base else "baseline"))
        if base:
            better = r["summary"]["eval"]["val_loss"] < b_loss
            notes.append(f"  -> the recursive model is {'BETTER' if better else 'WORSE'} than the plain GPT "
                         f"{base['name']} at the final step")
    return notes


def plot(runs: list[dict], out: str | Path):
    import matplotlib
    import matplotlib.ticker
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    colors = {}
    for r in runs:
        steps, losses = zip(*r["history"])
        tokens = [s * tokens_per_step(r["cfg"]) for s in steps]
        (line,) = axes[0].plot(tokens, losses, marker=".", label=r["name"])
        axes[1].plot([t * r["flops"] for t in tokens], losses, marker=".", label=r["name"], color=line.get_color())
        colors[r["name"]] = line.get_color()
    bounds = _bounds(runs)
    for ax, xlabel in zip(axes, ("training tokens", "training FLOPs")):
        for (nats, _), names in bounds.items():
            # a shared bound in gray; otherwise each in the colour of the (first) run it belongs to
            shared = len(bounds) == 1
            ax.axhline(nats, color="gray" if shared else colors[names[0]], linestyle="--",
                       label="entropy bound" if shared else f"entropy bound ({', '.join(names)})")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val loss (nats/token, final step)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
