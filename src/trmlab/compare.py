"""`trm compare <run> <run> ...`: recursive LMs beside the plain GPT baseline, on the same data and budget.

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
    """Training FLOPs per token, counted on a model built on the meta device (no memory, no time)."""
    from trmlab.models.lm import build_lm, flops_per_token
    with torch.device("meta"):
        model = build_lm(cfg.model)
    return flops_per_token(model, cfg, training=True)


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


def table(runs: list[dict]) -> str:
    header = (f"{'run':<18} {'model':<9} {'params':>10} {'depth':>5} {'tokens':>10} {'wall s':>7} {'tok/s':>7} "
              f"{'MFLOP/tok':>9} {'val loss':>8} {'ppl':>7} {'bits/B':>6} {'bound':>6} {'gap':>6} {'refine':>7}")
    lines = [header]
    for r in rows(runs):
        refine = f"{r['refinement_pct']:.1f}%" if r["n_sup"] > 1 else "-"
        lines.append(f"{r['run']:<18} {r['arch']:<9} {r['params']:>10,} {r['depth']:>5} {r['tokens']:>10,} "
                     f"{r['wall_s']:>7.0f} {r['tokens_per_s']:>7.0f} {r['flops_per_token'] / 1e6:>9.1f} "
                     f"{r['val_loss']:>8.4f} {r['ppl']:>7.2f} {r['bits_per_byte']:>6.3f} "
                     f"{_fmt(r['bound_bits_per_byte'], '6.3f')} {_fmt(r['gap_nats'], '6.3f')} {refine:>7}")
    return "\n".join(lines)


def verdicts(runs: list[dict]) -> list[str]:
    """Each recursive run's refinement next to the baseline's final loss; warnings when runs are not comparable."""
    from trmlab.tasks.lm import refinement_line
    notes = []
    if len({json.dumps(r["cfg"].to_dict()["data"], sort_keys=True) for r in runs}) > 1:
        notes.append("WARNING: the runs were trained on different data; their losses are not comparable")
    walls = [r["summary"]["train_time_s"] for r in runs]
    if max(walls) > 1.2 * min(walls):
        notes.append(f"note: wall times differ ({min(walls):.0f}-{max(walls):.0f} s); compare at equal time or tokens")
    bound = next((r["summary"]["eval"].get("entropy_bound") for r in runs), None)
    if bound is not None:
        notes.append(f"corpus entropy bound (val): {bound:.4f} nats/token "
                     f"= {runs[0]['summary']['eval']['entropy_bound_bits_per_byte']:.4f} bits/byte")
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
    for r in runs:
        steps, losses = zip(*r["history"])
        tokens = [s * tokens_per_step(r["cfg"]) for s in steps]
        axes[0].plot(tokens, losses, marker=".", label=r["name"])
        axes[1].plot([t * r["flops"] for t in tokens], losses, marker=".", label=r["name"])
    bound = runs[0]["summary"]["eval"].get("entropy_bound")
    for ax, xlabel in zip(axes, ("training tokens", "training FLOPs")):
        if bound is not None:
            ax.axhline(bound, color="gray", linestyle="--", label="entropy bound")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("val loss (nats/token, final step)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ trm compare
def compare_arguments(p):
    p.add_argument("runs", nargs="+", help="finished LM run directories (recursive and plain GPT)")
    p.add_argument("--plot", default="", help="write val loss vs tokens and vs FLOPs to this image")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def compare(args):
    runs = [load_run(p) for p in args.runs]
    if args.json:
        print(json.dumps(rows(runs), indent=2))
    else:
        print(table(runs))
        print()
        print("\n".join(verdicts(runs)))
    if args.plot:
        plot(runs, args.plot)
        print(f"plot: {args.plot}")
