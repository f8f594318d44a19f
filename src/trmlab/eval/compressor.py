"""Phase 1's D' sweep report (``trm compress --sweep``): the trained compressors beside PCA, as a table, a plot of
the held-out cosine against D' and ``sweep_results.json``, each row one run's export (compress.py's ``export``)."""

from __future__ import annotations

import json
from pathlib import Path

from trmlab.atomic import atomic_file, write_json


def format_table(rows: list[dict]) -> str:
    head = (f"{'D_prime':>7} {'ratio':>6} {'params':>10} | {'cos':>7} {'PCA cos':>7} | {'mse':>9} {'PCA mse':>9} | "
            f"{'rel_err':>7} {'PCA rel':>7} | {'var':>6} {'PCA var':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        c, p = r["compressor"], r["pca"]
        lines.append(f"{r['d_compressed']:>7} {r['compression_ratio']:>5.1f}x {r['params']:>10,} | "
                     f"{c['cosine_similarity']:7.4f} {p['cosine_similarity']:7.4f} | {c['mse']:9.3e} {p['mse']:9.3e} | "
                     f"{c['relative_error']:7.4f} {p['relative_error']:7.4f} | "
                     f"{c['variance_ratio']:6.3f} {p['variance_ratio']:7.3f}")
    return "\n".join(lines)


def plot_sweep(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ds = [r["d_compressed"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ds, [r["compressor"]["cosine_similarity"] for r in rows], "o-", label="compressor (trained)")
    ax.plot(ds, [r["pca"]["cosine_similarity"] for r in rows], "s--", label="PCA (optimal rank-D' linear, centred)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ds)
    ax.set_xticklabels([str(v) for v in ds])
    ax.set_xlabel("compressed dimension D'")
    ax.set_ylabel("held-out cosine similarity")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_file(path, suffix=".png") as tmp:  # matplotlib reads the format from the extension
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return path


def write_sweep(out: Path, stage: str, model: str, layer: int, rows: list[dict], cache: Path, log=print) -> None:
    """The sweep's table (printed), plot and sweep_results.json in ``out``; a 1b sweep keeps the 1a files."""
    timing = cache / "extraction_timing.json"
    table = format_table(rows)
    log("\nsweep: held-out reconstruction, trained compressor vs PCA\n" + table)
    suffix = "" if stage == "1a" else f"_{stage}"   # a 1b sweep does not overwrite the 1a summary
    plot = plot_sweep(rows, out / f"sweep_cosine_similarity{suffix}.png",
                      f"phase 1 stage {stage}: {model} (D={rows[0]['d_model']})")
    write_json(out / f"sweep_results{suffix}.json",
                      {"stage": stage, "model": model, "d_model": rows[0]["d_model"], "layer": layer,
                       "results": rows, "table": table.splitlines(), "plot": plot.name, "cache": str(cache),
                       "extraction": json.loads(timing.read_text()) if timing.exists() else None})
    log(f"sweep results: {out / f'sweep_results{suffix}.json'}, plot: {plot}")
