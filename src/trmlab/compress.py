"""Phase 1 of LLM latent reasoning: train a ``DimensionCompressor`` on LLM hidden states (seed 001).

Usage (single process, or under ``accelerate launch``)::

    python -m trmlab.compress --stage 1a                        # D' = 256, SmolLM3-3B, fineweb-edu (needs network)
    python -m trmlab.compress --stage 1a --d_compressed 512
    python -m trmlab.compress --stage 1b                        # starts from output_dir/stage1a_final
    python -m trmlab.compress --sweep --sweep_d_values 128 256 384 512
    accelerate launch --num_processes 4 -m trmlab.compress --stage 1a
    python -m trmlab.compress --model path/to/local/hf_model --text_source corpus.jsonl --no_wandb
    python -m trmlab.compress --model runs/gpt-tiny --sweep --sweep_d_values 8 16 32 64 --threads 1  # a trmlab LM run
    python -m trmlab.compress --model tiny-random --num_samples 64 --max_seq_length 64 --no_wandb   # offline smoke

Pipeline: (1) hidden states of ``--model`` at ``--layer`` over ``--num_samples`` texts are extracted once into a
resumable sharded cache (``output_dir/hidden_states/<stage>-<hash>/``, see ``trmlab.data.hidden_states``);
(2) the last ``--eval_fraction`` of the samples is held out; PCA is fitted on the training tokens as the optimal
linear baseline; (3) the compressor is trained with AdamW under HF accelerate (global batch = ``--batch_size`` x
processes, the loss is the exact mean over the global batch's real tokens, so N processes = 1 process with N
times the batch); (4) held-out metrics every ``--eval_every`` steps and at the end go to ``metrics.jsonl`` (always)
and wandb (if installed and logged in). Checkpoints: ``stage1a_step1000.safetensors`` + ``.json`` sidecar, ...,
``stage1a_final``; sweeps write one ``d<D'>/`` directory per value plus ``sweep_results.json`` and
``sweep_cosine_similarity.png`` (compressor and PCA curves) in ``--output_dir`` (``..._1b`` for a stage-1b sweep).

On a machine without CUDA, ``accelerate launch --cpu`` runs a single process; for several CPU processes (gloo) use
``accelerate launch --multi_gpu --num_processes 2 -m trmlab.compress ...`` or ``torchrun --nproc_per_node 2 -m
trmlab.compress ...``: the script sees the distributed launch without CUDA and asks accelerate for CPU processes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch

from trmlab.data.hidden_states import (
    TINY_RANDOM,
    HiddenStateCache,
    atomic_write_json,
    cache_key,
    canonical_dtype,
    extract_hidden_states,
    finalize_manifest,
    check_hf_path,
    drop_corrupt_shards,
    find_source_loader,
    hub_reachable,
    iter_texts,
    load_hidden_state_source,
    read_manifest,
    resolve_text_source,
)
from trmlab.errors import TrmError
from trmlab.models.compressor import (
    METRIC_NAMES,
    CovarianceAccumulator,
    DimensionCompressor,
    ReconstructionMetrics,
    checkpoint_paths,
    load_compressor_checkpoint,
    read_checkpoint_meta,
    save_compressor_checkpoint,
)

DEFAULT_MODEL = "HuggingFaceTB/SmolLM3-3B"
DEFAULT_SWEEP = [64, 128, 256, 512, 1024]
TINY_HIDDEN_SIZE = 64
TINY_NUM_LAYERS = 2


# ------------------------------------------------------------------------------------------------------ CLI


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The phase-1 options (seed 001's table plus the source/data options); mountable under ``trm compress``."""
    p = parser
    p.add_argument("--stage", choices=["1a", "1b"], default="1a",
                   help="1a: identity reconstruction on general text; 1b: finetune on thinking/CoT text from "
                        "output_dir/stage1a_final")
    p.add_argument("--d_compressed", type=int, default=256, help="compressed dimension D' (default 256)")
    p.add_argument("--batch_size", type=int, default=8, help="sequences per process per step (default 8)")
    p.add_argument("--num_epochs", type=int, default=10)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--num_samples", type=int, default=50000, help="texts to extract (train + held-out)")
    p.add_argument("--max_seq_length", type=int, default=512)
    p.add_argument("--output_dir", default="./checkpoints/phase1")
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
    d.add_argument("--model", default=DEFAULT_MODEL,
                   help=f"source causal LM: hub name (needs network), local transformers directory, a trmlab LM run "
                        f"directory (runs/<name> from `trm train lm-tiny|gpt-tiny|...`: offline, really trained), or "
                        f"'{TINY_RANDOM}' (a tiny randomly initialised Llama, D={TINY_HIDDEN_SIZE}, smoke runs)")
    d.add_argument("--layer", type=int, default=-1,
                   help="index into the hidden-state tuple, 0 = embeddings, -1 = the state the LM head reads "
                        "(default). transformers: output_hidden_states; trmlab GPT: per block; trmlab recursive "
                        "LM: y after each supervision step")
    d.add_argument("--data_root", default="data",
                   help="trmlab run as --model: where its `trm train` built the data (holds its tokenizer)")
    d.add_argument("--tokenizer", default=None, help="trmlab run as --model: an explicit tokenizer.json")
    d.add_argument("--text_source", default="auto",
                   help="auto | fineweb-edu | synthetic | local .txt/.jsonl/.parquet file or directory | HF dataset "
                        "name. auto = fineweb-edu for 1a when online, else the offline synthetic corpus; for 1b "
                        "the synthetic <think> arithmetic corpus")
    d.add_argument("--text_field", default="text", help="text column of a JSONL/parquet/HF dataset source")
    d.add_argument("--dtype", default="bf16", help="storage dtype of extracted hidden states: fp32 | bf16 | fp16")
    d.add_argument("--cache_dir", default=None, help="hidden-state cache root (default OUTPUT_DIR/hidden_states)")
    d.add_argument("--shard_size", type=int, default=64, help="sequences per cache shard")
    d.add_argument("--extract_batch_size", type=int, default=None, help="default: --batch_size")
    t = p.add_argument_group("training details")
    t.add_argument("--eval_fraction", type=float, default=0.05, help="held-out fraction of the samples")
    t.add_argument("--eval_every", type=int, default=500, help="steps between held-out evaluations")
    t.add_argument("--save_every", type=int, default=1000, help="steps between stage<X>_step<N> checkpoints")
    t.add_argument("--keep_checkpoints", type=int, default=2,
                   help="keep only the latest N stage<X>_step<N> checkpoints (0 = all), as train.keep_checkpoints")
    t.add_argument("--log_every", type=int, default=50)
    t.add_argument("--weight_decay", type=float, default=0.0)
    t.add_argument("--lr_schedule", choices=["constant", "cosine"], default="cosine")
    t.add_argument("--warmup_steps", type=int, default=0)
    t.add_argument("--bias", action="store_true", help="add encoder/decoder biases (params = D'*D + D' + D)")
    t.add_argument("--pca_max_tokens", type=int, default=100_000, help="training tokens used to fit PCA")
    t.add_argument("--resume", action="store_true", help="continue from the latest stage<X>_step<N> checkpoint")
    t.add_argument("--no_progress", action="store_true", help="no progress bars")
    t.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads per process (0 = torch default; 1 on a shared machine)")
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


# ------------------------------------------------------------------------------------------------- logging


class RunLogger:
    """metrics.jsonl always; wandb when requested, installed and logged in (else says so once per process)."""

    _wandb_notice_given = False

    def __init__(self, out_dir: Path, is_main: bool, use_wandb: bool, project: str, run_name: str, config: dict):
        self.path = out_dir / "metrics.jsonl"
        self.is_main = is_main
        self.wandb = None
        if not is_main:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        if use_wandb:
            self.wandb = self._start_wandb(project, run_name, config)

    def _start_wandb(self, project, run_name, config):
        reason = None
        try:
            import wandb
        except ImportError:
            wandb, reason = None, "wandb is not installed"
        if wandb is not None and not os.environ.get("WANDB_API_KEY") and \
                os.environ.get("WANDB_MODE", "").lower() not in ("offline", "disabled"):
            try:
                key = wandb.api.api_key
            except Exception:
                key = None
            if not key:
                reason = "wandb is not logged in (run `wandb login`)"
        if reason is None:
            try:
                return wandb.init(project=project, name=run_name, config=config, reinit="finish_previous")
            except Exception as e:
                reason = f"wandb.init failed ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        if not RunLogger._wandb_notice_given:
            print(f"note: {reason}; logging locally to metrics.jsonl only (use --no_wandb to silence)")
            RunLogger._wandb_notice_given = True
        return None

    def log(self, record: dict) -> None:
        if not self.is_main:
            return
        record = dict(record, time=round(time.time(), 3))
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if self.wandb is not None:
            kind = record.get("type", "train")
            self.wandb.log({f"{kind}/{k}": v for k, v in record.items() if isinstance(v, (int, float))
                            and k not in ("step", "time")}, step=int(record.get("step", 0)))

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


# ------------------------------------------------------------------------------------------------ helpers


def _validate(args) -> list[int]:
    for name in ("d_compressed", "batch_size", "num_epochs", "num_samples", "max_seq_length", "shard_size",
                 "eval_every", "save_every", "log_every", "pca_max_tokens"):
        v = getattr(args, name)
        if v is None or int(v) <= 0:
            raise TrmError(f"--{name} must be positive, got {v}")
    if getattr(args, "keep_checkpoints", 2) < 0:
        raise TrmError(f"--keep_checkpoints must be >= 0 (0 = keep all), got {args.keep_checkpoints}")
    if args.learning_rate <= 0:
        raise TrmError(f"--learning_rate must be positive, got {args.learning_rate}")
    if not 0 < args.eval_fraction < 1:
        raise TrmError(f"--eval_fraction must be in (0, 1), got {args.eval_fraction}")
    if args.num_samples < 2:
        raise TrmError("--num_samples must be at least 2 (training + held-out)")
    args.dtype = canonical_dtype(args.dtype)
    d_values = [int(v) for v in args.sweep_d_values] if args.sweep else [int(args.d_compressed)]
    if not d_values:
        raise TrmError("--sweep_d_values is empty")
    if any(v <= 0 for v in d_values):
        raise TrmError(f"compressed dimensions must be positive, got {d_values}")
    if len(set(d_values)) != len(d_values):
        raise TrmError(f"--sweep_d_values has duplicates: {d_values}")
    return d_values


def source_options(args) -> dict:
    """Options a registered source loader (a trmlab LM run) takes from the command line."""
    return {"data_root": getattr(args, "data_root", None), "tokenizer": getattr(args, "tokenizer", None)}


def probe_source(name: str, options: dict | None = None) -> dict:
    """``hidden_size`` (D), ``num_layers`` (0 = unknown), ``fingerprint`` (a registered source's exact weights, or
    None) and ``context`` (None = unlimited) of ``--model``, without loading its weights."""
    if name == TINY_RANDOM:
        return {"hidden_size": TINY_HIDDEN_SIZE, "num_layers": TINY_NUM_LAYERS, "fingerprint": None, "context": None}
    loader = find_source_loader(name)
    if loader is not None:  # e.g. a trmlab LM run: sizes from its saved config, weights named by their hash
        info = loader.probe(name, **(options or {}))
        return {"hidden_size": int(info["hidden_size"]), "num_layers": int(info.get("num_layers") or 0),
                "fingerprint": info.get("fingerprint"), "context": info.get("context")}
    check_hf_path(name)
    if not Path(name).expanduser().exists() and not hub_reachable():
        raise TrmError(f"cannot load model {name}: not a local path and no network")
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(name)
    except Exception as e:
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrmError(f"cannot load model {name}: {msg}") from None
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    d = getattr(text_cfg, "hidden_size", None) or getattr(text_cfg, "n_embd", None)
    if d is None:
        raise TrmError(f"model {name}: cannot tell its hidden size from config.json")
    return {"hidden_size": int(d), "num_layers": int(getattr(text_cfg, "num_hidden_layers", 0) or 0),
            "fingerprint": None, "context": None}


def _stage_checkpoints(out_dir: Path, stage: str) -> list[tuple[int, Path]]:
    found = []
    for js in out_dir.glob(f"stage{stage}_step*.json"):
        m = re.fullmatch(rf"stage{stage}_step(\d+)", js.stem)
        if m and js.with_suffix(".safetensors").exists():
            found.append((int(m.group(1)), js.with_suffix("")))
    return sorted(found)


def _prune_checkpoints(out_dir: Path, stage: str, keep: int) -> None:
    """Each step checkpoint carries Adam's two moments (3x the weights): keep the latest ``keep`` (0 = all).
    The sidecar goes first, so a half-removed checkpoint is never taken for a resumable one."""
    if keep <= 0:
        return
    for _, stem in _stage_checkpoints(out_dir, stage)[:-keep]:
        tensors, sidecar = checkpoint_paths(stem)
        sidecar.unlink(missing_ok=True)
        tensors.unlink(missing_ok=True)


def _check_compatible(meta: dict, path, d_model: int, d_compressed: int, what: str) -> None:
    cfg = meta["config"]
    if int(cfg["d_model"]) != int(d_model):
        raise TrmError(f"{what} {checkpoint_paths(path)[0]} has hidden size D={cfg['d_model']} but the source model "
                       f"has D={d_model}")
    if int(cfg["d_compressed"]) != int(d_compressed):
        raise TrmError(f"{what} {checkpoint_paths(path)[0]} has D'={cfg['d_compressed']} but --d_compressed is "
                       f"{d_compressed}")


def plan_checkpoints(args, out_dir: Path, d_model: int, d: int) -> dict:
    """Checks, before anything is written, where this run starts from; raises TrmError on any mismatch."""
    plan = {"init": None, "resume": None}
    if args.stage == "1b":
        init = out_dir / "stage1a_final"
        if not checkpoint_paths(init)[1].exists():
            raise TrmError(f"stage 1b starts from the stage 1a final checkpoint, but {checkpoint_paths(init)[0]} "
                           f"does not exist: run --stage 1a with the same --output_dir first")
        meta = read_checkpoint_meta(init)
        _check_compatible(meta, init, d_model, d, "stage 1a checkpoint")
        plan["init"] = (init, meta)
    if args.resume:
        found = _stage_checkpoints(out_dir, args.stage)
        if found:
            step, path = found[-1]
            meta = read_checkpoint_meta(path)
            _check_compatible(meta, path, d_model, d, "checkpoint to resume")
            plan["resume"] = (path, meta)
    else:  # refuse to mix checkpoints of different shapes in one directory
        for js in sorted(out_dir.glob(f"stage{args.stage}_*.json")):
            try:
                cfg = json.loads(js.read_text()).get("config", {})
            except (json.JSONDecodeError, OSError):
                continue
            if cfg and (int(cfg.get("d_compressed", d)) != d or int(cfg.get("d_model", d_model)) != d_model):
                raise TrmError(f"{out_dir} already holds stage {args.stage} checkpoints with D={cfg.get('d_model')}, "
                               f"D'={cfg.get('d_compressed')} ({js.name}); use another --output_dir")
    return plan


def _lr_at(args, step: int, total_steps: int) -> float:
    lr = args.learning_rate
    if args.warmup_steps and step < args.warmup_steps:
        return lr * (step + 1) / args.warmup_steps
    if args.lr_schedule == "cosine" and total_steps > 0:
        t = (step - args.warmup_steps) / max(1, total_steps - args.warmup_steps)
        return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, t))))
    return lr


def _epoch_order(train_n: int, shard_size: int, seed: int, epoch: int) -> list[int]:
    """A permutation of 0..train_n-1 that visits whole shards in turn (shards shuffled, rows shuffled within
    each), so reading stays sequential on disk. Identical on every process."""
    g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
    n_shards = -(-train_n // shard_size)
    order = []
    for s in torch.randperm(n_shards, generator=g).tolist():
        lo, hi = s * shard_size, min(train_n, (s + 1) * shard_size)
        order.extend((lo + torch.randperm(hi - lo, generator=g)).tolist())
    return order


@torch.no_grad()
def evaluate(model: DimensionCompressor, cache: HiddenStateCache, indices: list[int], batch_size: int,
             accelerator=None) -> dict:
    """Held-out metrics; with an accelerator each process takes every P-th sample and the sums are reduced."""
    p, n = (accelerator.process_index, accelerator.num_processes) if accelerator is not None else (0, 1)
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    acc = ReconstructionMetrics(model.d_model)
    for x, mask in cache.iter_batches(indices[p::n], batch_size):
        x, mask = x.to(device), mask.to(device)
        acc.update(x, model(x), mask)
    state = acc.state()
    if accelerator is not None and n > 1:
        state = accelerator.reduce(state.to(accelerator.device), reduction="sum").cpu()
    return ReconstructionMetrics.from_state(state, model.d_model).compute()


def fit_pca_baseline(cache: HiddenStateCache, train_idx: list[int], eval_idx: list[int], ks: list[int],
                     max_tokens: int, batch_size: int, device="cpu") -> dict[int, dict]:
    """PCA fitted on (up to ``max_tokens``) training tokens, evaluated on the held-out samples for every k."""
    cov = CovarianceAccumulator(cache.hidden_size)
    for x, mask in cache.iter_batches(train_idx, batch_size):
        cov.update(x.to(device), mask.to(device), max_tokens=max_tokens)
        if cov.n >= max_tokens:
            break
    pca = cov.fit()
    accs = {k: ReconstructionMetrics(cache.hidden_size) for k in ks}
    for x, mask in cache.iter_batches(eval_idx, batch_size):
        x, mask = x.to(device), mask.to(device)
        for k in ks:
            accs[k].update(x, pca.reconstruct(x, k), mask)
    out = {}
    for k in ks:
        m = accs[k].compute()
        m["params"] = min(k, cache.hidden_size) * cache.hidden_size
        m["explained_variance_ratio"] = pca.explained_variance_ratio(k)
        m["fit_tokens"] = cov.n
        out[k] = m
    return out


def _optimizer_tensors(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, steps = {}, {}
    for pid, st in sd["state"].items():
        for key, val in st.items():
            if key == "step":
                steps[str(pid)] = float(val)
            elif torch.is_tensor(val):
                tensors[f"optimizer.{pid}.{key}"] = val
    return tensors, {"steps": steps, "param_groups": sd["param_groups"]}


def _load_optimizer(optimizer, tensors: dict, info: dict) -> None:
    sd = optimizer.state_dict()
    state = {}
    for pid_s, step in info.get("steps", {}).items():
        pid = int(pid_s)
        st = {"step": torch.tensor(step)}
        for key in ("exp_avg", "exp_avg_sq"):
            if f"optimizer.{pid}.{key}" in tensors:
                st[key] = tensors[f"optimizer.{pid}.{key}"]
        state[pid] = st
    sd["state"] = state
    optimizer.load_state_dict(sd)


# ------------------------------------------------------------------------------------------------ training


def train_compressor(args, accelerator, cache: HiddenStateCache, train_idx: list[int], eval_idx: list[int], d: int,
                     out_dir: Path, plan: dict, pca: dict | None, source_info: dict, log) -> dict:
    """Trains one compressor of width ``d`` and writes its checkpoints into ``out_dir``; returns final metrics."""
    from accelerate.utils import set_seed

    D = cache.hidden_size
    stage = args.stage
    P, rank = accelerator.num_processes, accelerator.process_index
    B = int(args.batch_size)
    global_batch = B * P
    steps_per_epoch = len(train_idx) // global_batch
    if steps_per_epoch == 0:
        raise TrmError(f"{len(train_idx)} training samples are fewer than one global batch ({B} x {P} processes): "
                       f"raise --num_samples or lower --batch_size")
    total_steps = steps_per_epoch * int(args.num_epochs)
    set_seed(args.seed)
    model = DimensionCompressor(D, d, bias=args.bias)
    start_step, opt_state = 0, None
    if plan["init"] is not None:
        init_path, init_meta = plan["init"]
        loaded, _, _ = load_compressor_checkpoint(init_path)
        model.load_state_dict(loaded.state_dict())
        m = init_meta.get("metrics", {})
        log(f"stage 1b: starting from {checkpoint_paths(init_path)[0]} (stage 1a final, D'={d}, "
            f"step {init_meta.get('step')}, held-out cosine {m.get('cosine_similarity', float('nan')):.4f})")
    if plan["resume"] is not None:
        res_path, res_meta = plan["resume"]
        loaded, _, extra = load_compressor_checkpoint(res_path)
        model.load_state_dict(loaded.state_dict())
        start_step = int(res_meta["step"])
        opt_state = (extra, res_meta.get("optimizer", {}))
        log(f"resuming from {checkpoint_paths(res_path)[0]} at step {start_step}")
    elif args.resume:
        log(f"--resume: no stage {stage} step checkpoint in {out_dir}; starting from scratch")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    if opt_state is not None:
        _load_optimizer(optimizer, *opt_state)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    raw = accelerator.unwrap_model(ddp_model)

    run_name = args.wandb_run_name or f"phase1-{stage}-d{d}"
    if args.sweep and args.wandb_run_name:
        run_name = f"{args.wandb_run_name}-d{d}"
    logger = RunLogger(out_dir, accelerator.is_main_process, args.use_wandb, args.wandb_project, run_name,
                       {**vars(args), "d_compressed": d, "d_model": D})
    logger.log({"type": "start", "step": start_step, "stage": stage, "d_model": D, "d_compressed": d,
                "num_processes": P, "global_batch": global_batch, "train_samples": len(train_idx),
                "eval_samples": len(eval_idx), "total_steps": total_steps, "params": raw.num_parameters()})
    log(f"[d{d}] training stage {stage}: D={D} -> D'={d} ({D / d:.1f}x, {raw.num_parameters():,} params), "
        f"{len(train_idx)} train / {len(eval_idx)} held-out samples, {steps_per_epoch} steps/epoch x "
        f"{args.num_epochs} epochs, global batch {global_batch} ({P} process{'es' if P > 1 else ''})")

    def meta(step: int, epoch: int, metrics: dict | None, final: bool) -> dict:
        return {"kind": "dimension_compressor", "stage": stage, "step": step, "epoch": epoch, "final": final,
                "source": source_info, "metrics": metrics or {}, "pca": (pca or {}).get(d, {}),
                "init_from": str(checkpoint_paths(plan["init"][0])[0]) if plan["init"] else None,
                "num_processes": P, "global_batch": global_batch, "args": {k: v for k, v in vars(args).items()
                                                                           if not callable(v)}}

    def save(name: str, step: int, epoch: int, metrics: dict | None, final: bool) -> None:
        if accelerator.is_main_process:
            m = meta(step, epoch, metrics, final)
            extra = None
            if not final:
                extra, m["optimizer"] = _optimizer_tensors(optimizer.optimizer if hasattr(optimizer, "optimizer")
                                                           else optimizer)
            save_compressor_checkpoint(out_dir / name, raw, m, extra)
            if not final:
                _prune_checkpoints(out_dir, stage, getattr(args, "keep_checkpoints", 2))
        accelerator.wait_for_everyone()

    device = accelerator.device
    step, last_eval = start_step, None
    t0 = time.time()
    train_s, train_tokens = 0.0, 0.0
    from tqdm.auto import tqdm

    bar = tqdm(total=total_steps, initial=start_step, desc=f"stage {stage} d{d}", unit="step", dynamic_ncols=True,
               disable=args.no_progress or not accelerator.is_main_process)
    ddp_model.train()
    for epoch in range(int(args.num_epochs)):
        if (epoch + 1) * steps_per_epoch <= start_step:
            continue
        order = _epoch_order(len(train_idx), cache.shard_size, args.seed, epoch)
        for s in range(steps_per_epoch):
            if epoch * steps_per_epoch + s < step:
                continue
            t_step = time.perf_counter()
            gb = order[s * global_batch : (s + 1) * global_batch]
            x, mask = cache.get([train_idx[i] for i in gb[rank * B : (rank + 1) * B]])
            x, mask = x.to(device), mask.to(device)
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(args, step, total_steps)
            err = ((ddp_model(x) - x) ** 2 * mask.unsqueeze(-1)).sum()
            count = mask.sum().to(torch.float64) * D
            if P > 1:
                count = accelerator.reduce(count, reduction="sum")
            loss = err * (P / count.clamp_min(1).float())
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_s += time.perf_counter() - t_step  # reading the cache + forward/backward/update, no evals
            train_tokens += float(mask.sum())
            step += 1
            bar.update(1)
            if step % args.log_every == 0 or step == total_steps:
                tot = accelerator.reduce(err.detach().to(torch.float64), reduction="sum") if P > 1 else err.detach()
                train_mse = float(tot) / float(count.clamp_min(1))
                logger.log({"type": "train", "step": step, "epoch": epoch, "loss": train_mse,
                            "lr": optimizer.param_groups[0]["lr"]})
                bar.set_postfix(mse=f"{train_mse:.4g}")
            if step % args.eval_every == 0 and step != total_steps:
                last_eval = evaluate(raw, cache, eval_idx, B, accelerator)
                logger.log({"type": "eval", "step": step, "epoch": epoch, **last_eval})
                log(f"[d{d}] step {step}: held-out cos {last_eval['cosine_similarity']:.4f} "
                    f"mse {last_eval['mse']:.4g}")
            if step % args.save_every == 0 and step != total_steps:
                save(f"stage{stage}_step{step}", step, epoch, last_eval, final=False)
    bar.close()
    final = evaluate(raw, cache, eval_idx, B, accelerator)
    final_record = {"type": "eval", "step": step, "epoch": int(args.num_epochs) - 1, "final": True, **final}
    if pca and d in pca:
        final_record.update({f"pca_{k}": pca[d][k] for k in METRIC_NAMES})
    logger.log(final_record)
    if total_steps % args.save_every == 0 and step == total_steps and start_step < total_steps:
        save(f"stage{stage}_step{step}", step, int(args.num_epochs) - 1, final, final=False)
    save(f"stage{stage}_final", step, int(args.num_epochs) - 1, final, final=True)
    logger.finish()
    pca_d = (pca or {}).get(d, {})
    steps_run = step - start_step
    throughput = {"train_seconds": round(train_s, 3),
                  "samples_per_s": steps_run * global_batch / max(train_s, 1e-9),
                  "tokens_per_s": train_tokens * P / max(train_s, 1e-9)}  # rank 0's tokens x P: an estimate
    if steps_run:
        log(f"[d{d}] training throughput: {throughput['samples_per_s']:,.1f} samples/s "
            f"(~{throughput['tokens_per_s']:,.0f} tokens/s), {steps_run} steps in {train_s:.1f}s without evals")
    log(f"[d{d}] final (step {step}, {time.time() - t0:.1f}s): held-out cos {final['cosine_similarity']:.4f}, "
        f"mse {final['mse']:.4g}, rel err {final['relative_error']:.4f}, var ratio {final['variance_ratio']:.4f}"
        + (f" | PCA-{d}: cos {pca_d['cosine_similarity']:.4f}, mse {pca_d['mse']:.4g}" if pca_d else "")
        + f" -> {checkpoint_paths(out_dir / f'stage{stage}_final')[0]}")
    return {"d_compressed": d, "d_model": D, "params": raw.num_parameters(), "compression_ratio": D / d,
            "steps": step, "compressor": final, "pca": pca_d, "throughput": throughput,
            "checkpoint": str(checkpoint_paths(out_dir / f"stage{stage}_final")[0])}


# -------------------------------------------------------------------------------------------------- sweep


def format_table(rows: list[dict]) -> str:
    head = (f"{'D_prime':>7} {'ratio':>6} {'params':>10} | {'cos':>7} {'PCA cos':>7} | {'mse':>9} {'PCA mse':>9} | "
            f"{'rel_err':>7} {'PCA rel':>7} | {'var':>6} {'PCA var':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        c, p = r["compressor"], r.get("pca") or {}
        g = lambda m, k, f: format(m[k], f) if k in m else "-"  # noqa: E731
        lines.append(f"{r['d_compressed']:>7} {r['compression_ratio']:>5.1f}x {r['params']:>10,} | "
                     f"{g(c, 'cosine_similarity', '7.4f')} {g(p, 'cosine_similarity', '7.4f')} | "
                     f"{g(c, 'mse', '9.3e')} {g(p, 'mse', '9.3e')} | "
                     f"{g(c, 'relative_error', '7.4f')} {g(p, 'relative_error', '7.4f')} | "
                     f"{g(c, 'variance_ratio', '6.3f')} {g(p, 'variance_ratio', '7.3f')}")
    return "\n".join(lines)


def plot_sweep(rows: list[dict], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    ds = [r["d_compressed"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ds, [r["compressor"]["cosine_similarity"] for r in rows], "o-", label="compressor (trained)")
    if all(r.get("pca") for r in rows):
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
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------------- run


def train_phase1(args) -> dict:
    """Runs phase 1 as configured by ``args`` (see ``add_arguments``); returns the results (also on disk)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    d_values = _validate(args)
    if getattr(args, "threads", 0):
        torch.set_num_threads(int(args.threads))
    # A multi-process launch (accelerate launch --multi_gpu / torchrun) on a machine without CUDA means CPU
    # processes talking over gloo: accelerate only sets that up when told cpu=True.
    launched = int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1
    cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes") or \
        (launched and not torch.cuda.is_available())
    accelerator = Accelerator(cpu=cpu, kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(hours=6))])
    is_main = accelerator.is_main_process

    def log(msg: str) -> None:
        if is_main:
            print(msg, flush=True)

    if "ACCELERATE_USE_CPU" in os.environ and "MASTER_PORT" in os.environ and not launched \
            and not torch.cuda.is_available():
        # `accelerate launch --num_processes N` without GPUs quietly starts its single-process launcher
        log("note: accelerate launch started ONE process (no GPUs here); for N CPU processes use "
            "`accelerate launch --multi_gpu --num_processes N -m trmlab.compress ...`")

    out_root = Path(args.output_dir)
    text_source = resolve_text_source(args.text_source, args.stage, log=log)
    if text_source == "synthetic-cot":
        log("text source: SYNTHETIC chain-of-thought corpus (offline arithmetic problems with <think> worked steps), "
            "a stand-in for real thinking trajectories")
    elif text_source == "synthetic":
        log("text source: the offline SYNTHETIC general corpus (trmlab.data.corpus), a stand-in for fineweb-edu")
    cache_config = {"model": args.model, "layer": int(args.layer), "max_seq_length": int(args.max_seq_length),
                    "dtype": args.dtype, "text_source": text_source, "text_field": args.text_field,
                    "num_samples": int(args.num_samples), "shard_size": int(args.shard_size)}
    if text_source.startswith("synthetic"):
        cache_config["seed"] = int(args.seed)
    probed = None
    if args.model != TINY_RANDOM and find_source_loader(args.model) is not None:
        # a trmlab run: probing is cheap, and the cache key must name the exact weights (a retrained run under
        # the same directory name must not reuse stale hidden states)
        probed = probe_source(args.model, source_options(args))
        cache_config["source"] = probed["fingerprint"]
    cache_root = Path(args.cache_dir) if args.cache_dir else out_root / "hidden_states"
    cache_dir = cache_root / f"{args.stage}-{cache_key(cache_config)}"
    bad = drop_corrupt_shards(cache_dir) if is_main else []
    if bad:   # a shard cut short (full disk, killed copy): re-extract those instead of failing mid-training
        log(f"hidden states: shard(s) {bad[:5]} of {cache_dir} are truncated or missing; re-extracting them")
    accelerator.wait_for_everyone()
    man = read_manifest(cache_dir)
    cached = man is not None and man.get("complete") and man.get("config") == cache_config

    # 1. everything that can fail on bad input, before anything is written
    if probed is None and not cached:
        probed = probe_source(args.model, source_options(args))
    D = int(man["hidden_size"]) if cached else probed["hidden_size"]
    n_layers = probed["num_layers"] if probed else 0
    context = probed["context"] if probed else None
    if context and args.max_seq_length > context:
        log(f"note: {args.model} has a context of {context} tokens: texts are cut to {context} tokens "
            f"(--max_seq_length {args.max_seq_length})")
    if n_layers and not -(n_layers + 1) <= args.layer <= n_layers:
        raise TrmError(f"--layer {args.layer} out of range for {args.model} ({n_layers} layers: "
                       f"use -{n_layers + 1}..{n_layers})")
    too_big = [v for v in d_values if v > D]
    if too_big:
        raise TrmError(f"compressed dimension {too_big[0]} exceeds the source model's hidden size {D}")
    planned_eval = max(1, int(round(args.num_samples * args.eval_fraction)))
    if args.num_samples - planned_eval < args.batch_size * accelerator.num_processes:
        raise TrmError(f"--num_samples {args.num_samples} leaves {args.num_samples - planned_eval} training samples, "
                       f"fewer than one global batch ({args.batch_size} x {accelerator.num_processes} processes)")
    out_dirs = {d: (out_root / f"d{d}" if args.sweep else out_root) for d in d_values}
    plans = {d: plan_checkpoints(args, out_dirs[d], D, d) for d in d_values}
    for d, plan in plans.items():
        if plan["init"] is not None:
            src_model = plan["init"][1].get("source", {}).get("model")
            if src_model not in (None, args.model):
                log(f"warning: {checkpoint_paths(plan['init'][0])[0]} was trained on hidden states of {src_model}, "
                    f"this run uses {args.model}")
    texts = None
    if not cached:
        texts = iter_texts(text_source, args.stage, args.text_field, args.num_samples, args.seed, log=log)

    # 2. hidden states (resumable cache, shards split across processes)
    extraction = None
    if cached:
        log(f"hidden states: using the finished cache {cache_dir}")
    else:
        est = args.num_samples * min(args.max_seq_length, context or args.max_seq_length) * D * torch.finfo(
            {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]).bits / 8
        log(f"hidden states: {args.model} layer {args.layer} over up to {args.num_samples} texts from {text_source} "
            f"-> {cache_dir} ({args.dtype}, at most {est / 2**30:.2f} GiB)")
        torch_dtype = None
        if accelerator.device.type == "cuda" and args.dtype != "fp32":
            torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
        timing = {"load_s": 0.0}

        def load_source():
            t = time.perf_counter()
            src = load_hidden_state_source(args.model, max_seq_length=args.max_seq_length, device=accelerator.device,
                                           torch_dtype=torch_dtype, **source_options(args))
            timing["load_s"] = time.perf_counter() - t
            return src

        t_extract = time.perf_counter()
        summary = extract_hidden_states(
            load_source, texts, cache_dir, layer=args.layer, batch_size=args.extract_batch_size or args.batch_size,
            shard_size=args.shard_size, dtype=args.dtype, num_samples=args.num_samples, config=cache_config,
            progress=not args.no_progress, process_index=accelerator.process_index,
            num_processes=accelerator.num_processes, finalize=False)
        mine = sum(json.loads((cache_dir / f"shard_{i:05d}.json").read_text())["num_tokens"]
                   for i in summary["computed"])
        counts = torch.tensor([float(mine), timing["load_s"]], dtype=torch.float64, device=accelerator.device)
        if accelerator.num_processes > 1:
            counts = accelerator.reduce(counts, reduction="sum")
        accelerator.wait_for_everyone()
        if summary["computed"] or accelerator.num_processes > 1:
            secs = time.perf_counter() - t_extract - float(counts[1]) / accelerator.num_processes
            extraction = {"tokens": int(counts[0]), "seconds": round(secs, 3),
                          "tokens_per_s": float(counts[0]) / max(secs, 1e-9),
                          "model_load_s": round(float(counts[1]) / accelerator.num_processes, 3),
                          "num_processes": accelerator.num_processes}
            log(f"hidden states: extracted {extraction['tokens']:,} tokens in {secs:.1f}s = "
                f"{extraction['tokens_per_s']:,.0f} tokens/s ({accelerator.num_processes} process"
                f"{'es' if accelerator.num_processes > 1 else ''}, model load {extraction['model_load_s']:.1f}s "
                f"not counted)")
            if is_main:
                atomic_write_json(cache_dir / "extraction_timing.json", extraction)
        if is_main:
            hs = summary["hidden_size"]
            if hs is None:
                hs = json.loads((cache_dir / "shard_00000.json").read_text())["hidden_size"]
            if int(hs) != D:
                raise TrmError(f"source model {args.model} produced hidden size {hs}, expected {D}")
            finalize_manifest(cache_dir, cache_config, summary["num_samples"], args.shard_size, int(hs))
        accelerator.wait_for_everyone()
    cache = HiddenStateCache(cache_dir)
    if cache.hidden_size != D:
        raise TrmError(f"hidden-state cache {cache_dir} has D={cache.hidden_size}, expected {D}")
    n = cache.num_samples
    if n < args.num_samples:
        log(f"note: the text source gave only {n} of the requested {args.num_samples} samples")
    n_eval = max(1, int(round(n * args.eval_fraction)))
    if n - n_eval < 1:
        raise TrmError(f"only {n} samples: nothing left for training after holding out {n_eval}")
    train_idx, eval_idx = list(range(n - n_eval)), list(range(n - n_eval, n))

    # 3. PCA baseline on the same held-out states
    pca = None
    if is_main:
        log(f"PCA baseline: fitting on up to {args.pca_max_tokens} training tokens, D' in {d_values}")
        pca = fit_pca_baseline(cache, train_idx, eval_idx, d_values, args.pca_max_tokens, args.batch_size,
                               device=accelerator.device)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        box = [pca]
        broadcast_object_list(box, from_process=0)
        pca = box[0]

    # 4. train
    source_info = {"model": args.model, "layer": args.layer, "max_seq_length": args.max_seq_length,
                   "dtype": args.dtype, "text_source": text_source, "text_field": args.text_field,
                   "hidden_size": D, "cache_dir": str(cache_dir), "fingerprint": (probed or {}).get("fingerprint")}
    rows = []
    for d in d_values:
        rows.append(train_compressor(args, accelerator, cache, train_idx, eval_idx, d, out_dirs[d], plans[d], pca,
                                     source_info, log))
    if extraction is None and (cache_dir / "extraction_timing.json").exists():
        extraction = dict(json.loads((cache_dir / "extraction_timing.json").read_text()), cached=True)
    result = {"stage": args.stage, "model": args.model, "d_model": D, "rows": rows, "extraction": extraction}

    # 5. sweep summary
    if args.sweep and is_main:
        table = format_table(rows)
        log("\nsweep: held-out reconstruction, trained compressor vs PCA\n" + table)
        suffix = "" if args.stage == "1a" else f"_{args.stage}"  # a 1b sweep does not overwrite the 1a summary
        plot = plot_sweep(rows, out_root / f"sweep_cosine_similarity{suffix}.png",
                          f"phase 1 stage {args.stage}: {args.model} (D={D}), {len(eval_idx)} held-out samples")
        atomic_write_json(out_root / f"sweep_results{suffix}.json",
                          {"stage": args.stage, "model": args.model, "d_model": D, "layer": args.layer,
                           "text_source": text_source, "num_samples": n, "eval_samples": len(eval_idx),
                           "results": rows, "table": table.splitlines(), "plot": plot.name,
                           "extraction": extraction})
        log(f"sweep results: {out_root / f'sweep_results{suffix}.json'}, plot: {plot}")
        result["table"] = table
    accelerator.wait_for_everyone()
    return result


def run(args) -> int:
    """Entry point for ``python -m trmlab.compress`` and ``trm compress``; raises TrmError on bad input."""
    train_phase1(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
