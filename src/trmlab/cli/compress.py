"""`trm compress` / `python -m trmlab.compress`: seed 001's phase-1 command line, a thin front over the one trainer.

Each of seed 001's flags becomes a config override of the presets compressor-1a / compressor-1b (the task is
``tasks/compressor.py``), and the run is an ordinary ``trm train`` run::

    python -m trmlab.compress --stage 1a                        # D' = 256, SmolLM3-3B, fineweb-edu (needs network)
    python -m trmlab.compress --stage 1a --d_compressed 512
    python -m trmlab.compress --stage 1b                        # starts from output_dir/stage1a_final
    python -m trmlab.compress --sweep --sweep_d_values 128 256 384 512
    torchrun --nproc_per_node 4 -m trmlab.compress --stage 1a   # or accelerate launch; --batch_size is per process
    python -m trmlab.compress --model runs/gpt-tiny --sweep --sweep_d_values 8 16 32 64 --threads 1  # a trmlab LM run
    python -m trmlab.compress --model tiny-random --num_samples 64 --max_seq_length 64 --no_wandb   # offline smoke

``--output_dir`` (default runs/phase1) holds the runs and seed 001's checkpoint names, as exports of the one
checkpoint format (model.safetensors + state.json, whose ``export`` key has the held-out metrics and PCA's)::

    stage1a/  stage1a_final/  stage1b/  stage1b_final/        a run (config.yaml, metrics.jsonl, checkpoints/...)
    d64/stage1a/  d64/stage1a_final/ ...                      a sweep: one run per D'
    sweep_results.json  sweep_cosine_similarity.png           a sweep's table (compressor and PCA) and plot
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from trmlab.cli.common import threads
from trmlab.config import load_config
from trmlab.errors import TrmError

DEFAULT_SWEEP = [64, 128, 256, 512, 1024]
# seed 001's flag -> the config key it sets (batch_size is per process: see overrides())
FLAG_KEYS = {"d_compressed": "data.d_compressed", "num_epochs": "train.epochs", "learning_rate": "train.lr",
             "num_samples": "data.num_samples", "max_seq_length": "data.max_seq_length", "seed": "train.seed",
             "model": "data.llm", "layer": "data.layer", "tokenizer": "data.tokenizer",
             "text_source": "data.text_source", "text_field": "data.text_field", "dtype": "data.dtype",
             "cache_dir": "data.cache_dir", "shard_size": "data.shard_size",
             "extract_batch_size": "data.extract_batch_size", "eval_fraction": "data.eval_fraction",
             "eval_every": "train.eval_interval", "save_every": "train.ckpt_interval",
             "keep_checkpoints": "train.keep_checkpoints", "log_every": "train.log_interval",
             "weight_decay": "train.weight_decay", "lr_schedule": "train.schedule",
             "warmup_steps": "train.warmup_steps", "bias": "data.bias", "pca_max_tokens": "data.pca_max_tokens",
             "threads": "train.threads", "trace_problems": "data.trace_problems",
             "trace_tokens": "data.trace_tokens"}
POSITIVE = ("d_compressed", "batch_size", "num_epochs", "num_samples", "max_seq_length", "shard_size", "eval_every",
            "save_every", "log_every", "pca_max_tokens", "trace_tokens")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The phase-1 options (seed 001's table plus the source/data options); mountable under ``trm compress``."""
    p = parser
    p.add_argument("--stage", choices=["1a", "1b"], default="1a",
                   help="1a: identity reconstruction on general text; 1b: finetune on thinking/CoT text from "
                        "output_dir/stage1a_final")
    p.add_argument("--d_compressed", type=int, default=256, help="compressed dimension D' (default 256)")
    p.add_argument("--batch_size", type=int, default=8, help="sequences per process per step (default 8)")
    p.add_argument("--num_epochs", type=float, default=10)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--num_samples", type=int, default=50000, help="texts to extract (train + held-out)")
    p.add_argument("--max_seq_length", type=int, default=512)
    p.add_argument("--output_dir", default="runs/phase1", help="the runs and their stage<X>_final exports")
    p.add_argument("--seed", type=int, default=42)
    g = p.add_argument_group("wandb")
    g.add_argument("--use_wandb", dest="use_wandb", action="store_true", default=True,
                   help="log to wandb (default; falls back to metrics.jsonl only if wandb is unavailable)")
    g.add_argument("--no_wandb", dest="use_wandb", action="store_false")
    g.add_argument("--wandb_project", default="llm-trm-phase1")
    g.add_argument("--wandb_run_name", default=None, help="default: phase1-<stage>-d<D'>")
    s = p.add_argument_group("sweep")
    s.add_argument("--sweep", action="store_true", help="train one compressor per --sweep_d_values into d<D'>/")
    s.add_argument("--sweep_d_values", type=int, nargs="+", default=list(DEFAULT_SWEEP))
    d = p.add_argument_group("source model and data")
    d.add_argument("--model", default="HuggingFaceTB/SmolLM3-3B",
                   help="source causal LM: hub name (needs network), local transformers directory, a trmlab LM run "
                        "directory (runs/<name> from `trm train lm-tiny|gpt-tiny|...`: offline, really trained), or "
                        "'tiny-random' (a tiny randomly initialised Llama, D=64, smoke runs)")
    d.add_argument("--layer", type=int, default=-1,
                   help="index into the hidden-state tuple, 0 = embeddings, -1 = the state the LM head reads")
    d.add_argument("--data_root", default="data",
                   help="data root: the hidden-state caches (<data_root>/hidden_states) and, for a trmlab run as "
                        "--model, where its `trm train` built the data (its tokenizer)")
    d.add_argument("--tokenizer", default=None, help="trmlab run as --model: an explicit tokenizer.json")
    d.add_argument("--text_source", default="auto",
                   help="auto | fineweb-edu | synthetic | pydoc (Python's documentation, offline) | self (1b: "
                        "the model's own thinking traces on --trace_problems) | local .txt/.jsonl/.parquet file or "
                        "directory | HF dataset name. auto = fineweb-edu for 1a when online, else the offline "
                        "synthetic corpus; for 1b the synthetic <think> arithmetic corpus")
    d.add_argument("--trace_problems", default="synthetic",
                   help="--text_source self: the problems the model thinks about: synthetic (the project's offline "
                        "arithmetic) or a problem file / dataset with a question field")
    d.add_argument("--trace_tokens", type=int, default=128,
                   help="--text_source self: the most tokens the model writes per trace")
    d.add_argument("--text_field", default="text", help="text column of a JSONL/parquet/HF dataset source")
    d.add_argument("--dtype", default="bf16", help="storage dtype of extracted hidden states: fp32 | bf16 | fp16")
    d.add_argument("--cache_dir", default=None, help="hidden-state cache root (default DATA_ROOT/hidden_states)")
    d.add_argument("--shard_size", type=int, default=64, help="sequences per cache shard")
    d.add_argument("--extract_batch_size", type=int, default=None, help="default: --batch_size")
    t = p.add_argument_group("training details")
    t.add_argument("--eval_fraction", type=float, default=0.05, help="held-out fraction of the samples")
    t.add_argument("--eval_every", type=int, default=500, help="steps between held-out evaluations")
    t.add_argument("--save_every", type=int, default=1000, help="steps between checkpoints of the run")
    t.add_argument("--keep_checkpoints", type=int, default=2, help="keep only the latest N checkpoints (0 = all)")
    t.add_argument("--log_every", type=int, default=50)
    t.add_argument("--weight_decay", type=float, default=0.0)
    t.add_argument("--lr_schedule", choices=["constant", "cosine"], default="cosine")
    t.add_argument("--warmup_steps", type=int, default=0)
    t.add_argument("--bias", action="store_true", help="add encoder/decoder biases (params = D'*D + D' + D)")
    t.add_argument("--no_center", action="store_true",
                   help="do not subtract the training mean (seed 001's bare tied map; it cannot reach PCA)")
    t.add_argument("--pca_max_tokens", type=int, default=100_000, help="training tokens used to fit PCA")
    t.add_argument("--resume", action="store_true", help="continue the stage's run from its latest checkpoint")
    t.add_argument("--overwrite", action="store_true", help="replace the stage's run if it exists")
    t.add_argument("--no_progress", action="store_true", help="no progress bars (nor the trainer's lines)")
    threads(t, help="torch CPU threads per process (0 = torch default; 1 on a shared machine)")
    p.add_argument("overrides", nargs="*", default=[], help="further key=value config overrides (train.optimizer=...)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trmlab.compress",
                                     description="Phase 1: train a DimensionCompressor on LLM hidden states.")
    return add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except TrmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def d_values(args) -> list[int]:
    """The D' values to train, after the seed's flags are checked (one line each)."""
    for name in POSITIVE:
        if getattr(args, name) is None or getattr(args, name) <= 0:
            raise TrmError(f"--{name} must be positive, got {getattr(args, name)}")
    if args.keep_checkpoints < 0:
        raise TrmError(f"--keep_checkpoints must be >= 0 (0 = keep all), got {args.keep_checkpoints}")
    values = list(args.sweep_d_values) if args.sweep else [args.d_compressed]
    if any(v <= 0 for v in values):
        raise TrmError(f"compressed dimensions must be positive, got {values}")
    if len(set(values)) != len(values):
        raise TrmError(f"--sweep_d_values has duplicates: {values}")
    return values


def stage_dir(args, d: int) -> Path:
    return Path(args.output_dir) / f"d{d}" if args.sweep else Path(args.output_dir)


def overrides(args, d: int, world_size: int) -> list[str]:
    """Seed 001's flags as config overrides for D' = ``d`` (the trainer's batch is global: per-process x world)."""
    values = {k: getattr(args, flag) for flag, k in FLAG_KEYS.items() if getattr(args, flag) is not None}
    values.update({"data.d_compressed": d, "data.seed": args.seed, "train.batch_size": args.batch_size * world_size,
                   "data.extract_batch_size": args.extract_batch_size or args.batch_size,
                   "data.center": not args.no_center, "train.logger": logger(args)})
    values["name"] = f"{args.wandb_run_name}-d{d}" if args.wandb_run_name and args.sweep else \
        args.wandb_run_name or f"phase1-{args.stage}-d{d}"
    if args.stage == "1b":
        values["data.init_from"] = str(stage_dir(args, d) / "stage1a_final")
    return [f"{k}={v}" for k, v in values.items()] + list(args.overrides)


def logger(args) -> str:
    """wandb when asked for, installed and logged in; else metrics.jsonl only, said once."""
    if not args.use_wandb:
        return "none"
    try:
        import wandb
        logged_in = bool(os.environ.get("WANDB_API_KEY") or wandb.api.api_key
                         or os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled"))
        reason = None if logged_in else "wandb is not logged in (run `wandb login`)"
    except ImportError:
        reason = "wandb is not installed"
    if reason:
        print(f"note: {reason}; logging locally to metrics.jsonl only (use --no_wandb to silence)")
        args.use_wandb = False   # said once for a whole sweep
        return "none"
    os.environ["WANDB_PROJECT"] = args.wandb_project
    return "wandb"


def run(args) -> int:
    """Entry point for ``python -m trmlab.compress`` and ``trm compress``; raises TrmError on bad input."""
    train_phase1(args)
    return 0


def train_phase1(args) -> dict:
    """One trainer run per D' (the sweep is this loop), each exported as <dir>/stage<X>_final; returns the rows."""
    from trmlab.tasks import get_task
    from trmlab.train import distributed
    from trmlab.train.trainer import Trainer

    values = d_values(args)
    dist = distributed.setup("auto")
    log = print if dist.is_main else (lambda msg: None)
    configs = {d: load_config(f"compressor-{args.stage}", overrides(args, d, dist.world_size)) for d in values}
    for d in values:   # the trainer refuses an existing run too, but only after the extraction below
        run_dir = stage_dir(args, d) / f"stage{args.stage}"
        if (run_dir / "config.yaml").exists() and not (args.resume or args.overwrite):
            raise TrmError(f"run directory {run_dir} already exists; pass --resume to continue it or --overwrite")
    # the hidden states once, for every D' (the widest checks all of them), each process extracting its shards
    get_task("compressor").build_data(configs[max(values)].data, args.data_root, dist, log, not args.no_progress)
    rows = []
    for d in values:
        out = stage_dir(args, d)
        trainer = Trainer(configs[d], out / f"stage{args.stage}", resume=args.resume, overwrite=args.overwrite,
                          data_root=args.data_root, quiet=args.no_progress)
        log(f"[d{d}] stage {args.stage}: D={trainer.cfg.data.d_model} -> D'={d}, {trainer.data.n_train} train / "
            f"{trainer.data.cache.num_samples - trainer.data.n_train} held-out samples, {trainer.cfg.train.steps} "
            f"steps, global batch {trainer.cfg.train.batch_size} ({dist.world_size} "
            f"process{'es' if dist.world_size > 1 else ''})"
            + (f"; starting from {trainer.cfg.data.init_from}" if trainer.cfg.data.init_from else ""))
        summary = trainer.fit()
        rows.append(export(trainer, summary, out / f"stage{args.stage}_final", log))
    if args.sweep and dist.is_main:
        from trmlab.eval.compressor import write_sweep
        write_sweep(Path(args.output_dir), args.stage, args.model, args.layer, rows, trainer.data.path, log)
    distributed.barrier(dist)
    return {"stage": args.stage, "rows": rows}


def export(trainer, summary: dict, dst: Path, log) -> dict:
    """The run's final checkpoint copied to seed 001's name, with its metrics; returns the sweep row."""
    from trmlab.models.compressor import export_checkpoint
    from trmlab.tasks.compressor import source_info
    from trmlab.train.checkpoint import latest_checkpoint

    m = summary["eval"]
    ours = {k: v for k, v in m.items() if not k.startswith("pca_") and k != "mse_vs_pca"}
    pca = {k[4:]: v for k, v in m.items() if k.startswith("pca_")}
    cfg = trainer.cfg
    D, d = cfg.data.d_model, cfg.data.d_compressed
    if trainer.dist.is_main:
        export_checkpoint(latest_checkpoint(trainer.run_dir), dst,
                          {"export": {"stage": cfg.data.stage, "run": str(trainer.run_dir), "metrics": ours,
                                      "pca": pca, "source": source_info(cfg, trainer.data),
                                      "init_from": cfg.data.init_from or None}})
    samples_per_s = trainer.step * cfg.train.batch_size / max(summary["train_time_s"], 1e-9)
    log(f"[d{d}] training throughput: {samples_per_s:,.1f} samples/s ({trainer.step} steps in "
        f"{summary['train_time_s']:.1f}s without evals)")
    log(f"[d{d}] final (step {trainer.step}): held-out cos {m['cosine_similarity']:.4f}, mse {m['mse']:.4g}, "
        f"rel err {m['relative_error']:.4f}, var ratio {m['variance_ratio']:.4f} | PCA-{d}: cos "
        f"{pca['cosine_similarity']:.4f}, mse {pca['mse']:.4g} (x{m['mse_vs_pca']:.3f}) -> {dst}")
    return {"d_compressed": d, "d_model": D, "params": summary["params"], "compression_ratio": D / d,
            "steps": trainer.step, "compressor": ours, "pca": pca, "checkpoint": str(dst),
            "run": str(trainer.run_dir), "throughput": {"train_seconds": summary["train_time_s"],
                                                        "samples_per_s": samples_per_s}}


if __name__ == "__main__":
    sys.exit(main())
