"""Phase 1 of LLM latent reasoning (seed 001) as a task of the one trainer: a DimensionCompressor learns to
reconstruct an LLM's hidden states, D -> D' -> D.

Data: the hidden states of ``data.llm`` at ``data.layer`` over ``data.num_samples`` texts, extracted once into a
resumable sharded cache (``data/hidden_states.py``) at ``<data_root>/hidden_states/<stage>-<hash>/`` (or under
``data.cache_dir``). The last ``data.eval_fraction`` of the samples is held out. PCA, the optimal linear map of
rank D', is fitted once on (up to ``data.pca_max_tokens``) training tokens and kept beside the shards.
Model: ``DimensionCompressor`` (weight-tied); with ``data.center`` it subtracts the training tokens' mean first, as
PCA does (the ``init_weights`` hook sets the mean, and for stage 1b the stage-1a weights of ``data.init_from``,
when training starts: evaluating a finished 1b run does not need its 1a compressor any more).
Loss: the masked MSE, the exact mean over the real tokens of the global batch (N processes = 1 process).
Evaluation: seed 001's metrics on the held-out samples with PCA's at the same D' beside them (``pca_<metric>``),
and ``mse_vs_pca`` = compressor MSE / PCA MSE (1.0: as good as the optimal linear map).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from trmlab.atomic import save_safetensors, write_json
from trmlab.config import choice
from trmlab.data.hidden_states import (TINY_RANDOM, HiddenStateCache, cache_key, canonical_dtype, drop_corrupt_shards,
                                       extract_hidden_states, finalize_manifest, hub_reachable, iter_texts,
                                       read_manifest, resolve_text_source)
from trmlab.errors import TrmError, first_line
from trmlab.llm.pretrained import gguf_config, gguf_path, is_gguf, llm_dims
from trmlab.llm.traces import SELF_SOURCE
from trmlab.llm.sources import check_hf_path, find_source_loader, load_hidden_state_source
from trmlab.models.compressor import (METRIC_NAMES, PCA, CovarianceAccumulator, DimensionCompressor,
                                      ReconstructionMetrics, load_checked)
from trmlab.recursion import Carry, StepOutput
from trmlab.tasks.base import Task
from trmlab.tasks.puzzle import EpochSampler, rank_slice
from trmlab.train import distributed
from trmlab.train.device import pick_device

DEFAULT_LLM = "HuggingFaceTB/SmolLM3-3B"
TINY_HIDDEN_SIZE, TINY_NUM_LAYERS = 64, 2   # tiny-random's shape (data/hidden_states.py builds it)
GOOD_COSINE = 0.95                          # seed 001's target: a sample counts as right above it (exact_acc)


@dataclass
class CompressorDataConfig:
    stage: str = choice("1a", ("1a", "1b"), "1a: general text; 1b: thinking text, starting from data.init_from")
    llm: str = DEFAULT_LLM       # hub name | local transformers dir | a trmlab LM run dir | tiny-random
    layer: int = -1              # index into the hidden-state tuple: 0 = embeddings, -1 = what the LM head reads
    max_seq_length: int = 512
    dtype: str = "bf16"          # storage dtype of the cache: fp32 | bf16 | fp16
    text_source: str = "auto"    # auto | fineweb-edu | synthetic | pydoc | self | local file or dir | HF dataset
    text_field: str = "text"
    num_samples: int = 50000     # texts extracted (training + held-out)
    shard_size: int = 64         # sequences per cache shard
    extract_batch_size: int = 8
    tokenizer: str = ""          # a trmlab LM run as llm: an explicit tokenizer.json
    cache_dir: str = ""          # root of the hidden-state caches; "" = <data_root>/hidden_states
    eval_fraction: float = 0.05  # held-out share of the samples (the last ones)
    pca_max_tokens: int = 100_000
    seed: int = 42               # the synthetic corpora's
    d_compressed: int = 256      # D'
    bias: bool = False           # encoder/decoder biases (params D'*D + D' + D)
    center: bool = True          # subtract the training mean (a buffer, not a parameter), as PCA does
    init_from: str = ""          # stage 1b: the stage-1a compressor (an export, checkpoint or run directory)
    trace_problems: str = "synthetic"   # text_source self: the problems the LLM thinks about (llm/traces.py)
    trace_tokens: int = 128      # text_source self: the most tokens the LLM writes per trace
    d_model: int = 0             # D, filled from the hidden states

    def __post_init__(self):
        for name in ("max_seq_length", "num_samples", "shard_size", "extract_batch_size", "pca_max_tokens",
                     "d_compressed", "trace_tokens"):
            if getattr(self, name) < 1:
                raise TrmError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_samples < 2:
            raise TrmError("data.num_samples must be at least 2 (training + held-out)")
        if not 0 < self.eval_fraction < 1:
            raise TrmError(f"data.eval_fraction must be in (0, 1), got {self.eval_fraction}")
        self.dtype = canonical_dtype(self.dtype)
        if self.stage == "1b" and not self.init_from:
            raise TrmError("stage 1b starts from a stage-1a compressor: set data.init_from")


@dataclass
class CompressorData:
    path: Path
    cache: HiddenStateCache
    n_train: int                 # samples 0..n_train-1 train, the rest are held out
    lengths: torch.Tensor        # real tokens per sample (the loss is their exact mean)
    pca: PCA
    init_from: str               # stage 1b: the stage-1a compressor it starts from (read when training starts)
    meta: dict
    pca_metrics: dict = field(default_factory=dict)   # (split, n, D') -> PCA's metrics, computed once

    @property
    def splits(self) -> dict[str, range]:
        """Sample indices: ``test`` is the held-out tail (`trm eval`'s default split)."""
        return {"train": range(self.n_train), "test": range(self.n_train, self.cache.num_samples)}


class CompressorModel(DimensionCompressor):
    """The compressor as the trainer runs every model, ``model(batch, carry) -> StepOutput``: one step, no
    recursion and no halting (the code z stands in for the carry). Same state dict as DimensionCompressor."""

    def forward(self, batch: dict, carry=None, reset=None) -> StepOutput:
        z = self.compress(batch["inputs"])
        x_hat = self.decompress(z)
        return StepOutput(x_hat, torch.zeros(len(z), device=z.device), Carry(z.detach(), z.detach()))


# ---------------------------------------------------------------------------------------------- the source
def source_options(d: CompressorDataConfig, data_root) -> dict:
    """What a registered source loader (a trmlab LM run) takes: where its data (tokenizer) lives."""
    return {"data_root": str(data_root), "tokenizer": d.tokenizer or None}


def probe_source(name: str, options: dict | None = None) -> dict:
    """``hidden_size`` (D), ``num_layers`` (0 = unknown), ``fingerprint`` (a registered source's exact weights, or
    None) and ``context`` (None = unlimited) of an LLM, without loading its weights."""
    if name == TINY_RANDOM:
        return {"hidden_size": TINY_HIDDEN_SIZE, "num_layers": TINY_NUM_LAYERS, "fingerprint": None, "context": None}
    loader = find_source_loader(name)
    if loader is not None:  # e.g. a trmlab LM run: sizes from its saved config, weights named by their hash
        info = loader.probe(name, **(options or {}))
        return {"hidden_size": int(info["hidden_size"]), "num_layers": int(info.get("num_layers") or 0),
                "fingerprint": info.get("fingerprint"), "context": info.get("context")}
    if is_gguf(name):  # smollm2-135m or a .gguf file: its config from the file, its identity from size and mtime
        path = gguf_path(name)
        d, n = llm_dims(gguf_config(name))
        st = path.stat()
        return {"hidden_size": d, "num_layers": n, "fingerprint": f"{path.name}:{st.st_size}:{st.st_mtime_ns}",
                "context": None}
    check_hf_path(name)
    if not Path(name).expanduser().exists() and not hub_reachable():
        raise TrmError(f"cannot load model {name}: not a local path and no network")
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(name)
    except Exception as e:
        msg = first_line(e)
        raise TrmError(f"cannot load model {name}: {msg}") from None
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    d = getattr(text_cfg, "hidden_size", None) or getattr(text_cfg, "n_embd", None)
    if d is None:
        raise TrmError(f"model {name}: cannot tell its hidden size from config.json")
    return {"hidden_size": int(d), "num_layers": int(getattr(text_cfg, "num_hidden_layers", 0) or 0),
            "fingerprint": None, "context": None}


def start_weights(init_from: str, D: int, d_compressed: int) -> dict | None:
    """Stage 1b: the stage-1a compressor's weights, checked against D and D'."""
    if not init_from:
        return None
    comp, _ = load_checked(init_from, D, d_compressed, "stage 1a checkpoint", "the source model",
                           f"stage 1b starts from the stage 1a final checkpoint, but {init_from} does not exist: "
                           f"run stage 1a first (trm compress --stage 1a with the same --output_dir)")
    return {k: v for k, v in comp.state_dict().items() if k != "mean"}   # the mean is this stage's data's


class CompressorTask(Task):
    name = "compressor"
    data_config = CompressorDataConfig
    metric = "mse"
    lower_is_better = True

    # ------------------------------------------------------------------------------------------------ data
    def cache_dir(self, d: CompressorDataConfig, data_root, log=print) -> tuple[Path, dict, dict | None]:
        """(the cache directory for ``d``, the settings it is keyed by, the source's probe when one was needed)."""
        text_source = resolve_text_source(d.text_source, d.stage, log=log)
        config = {"model": d.llm, "layer": d.layer, "max_seq_length": d.max_seq_length, "dtype": d.dtype,
                  "text_source": text_source, "text_field": d.text_field, "num_samples": d.num_samples,
                  "shard_size": d.shard_size}
        if text_source.startswith("synthetic"):
            config["seed"] = d.seed
        if text_source == SELF_SOURCE:   # the LLM's own traces: what it thought about, and for how long
            config.update(seed=d.seed, trace_problems=d.trace_problems, trace_tokens=d.trace_tokens)
        probed = None
        if d.llm != TINY_RANDOM and find_source_loader(d.llm) is not None:
            # a trmlab run: probing is cheap, and the key must name the exact weights (a retrained run under the
            # same directory name must not reuse stale hidden states)
            probed = probe_source(d.llm, source_options(d, data_root))
            config["source"] = probed["fingerprint"]
        root = Path(d.cache_dir).expanduser() if d.cache_dir else Path(data_root) / "hidden_states"
        return root / f"{d.stage}-{cache_key(config)}", config, probed

    def build_data(self, d: CompressorDataConfig, data_root="data", dist=None, log=print, progress=True) -> Path:
        """Extract (or reuse) the hidden states and fit PCA on the training split; every check that can fail on
        bad input runs before anything is written. With ``dist`` every process extracts its share of the shards."""
        dist = dist or distributed.Dist()
        path, config, probed = self.cache_dir(d, data_root, log)
        bad = drop_corrupt_shards(path) if dist.is_main else []
        if bad:   # a shard cut short (full disk, killed copy): re-extract those instead of failing mid-training
            log(f"hidden states: shard(s) {bad[:5]} of {path} are truncated or missing; re-extracting them")
        distributed.barrier(dist)
        man = read_manifest(path)
        cached = man is not None and man.get("complete") and man.get("config") == config
        if not cached and probed is None:
            probed = probe_source(d.llm, source_options(d, data_root))
        D = int(man["hidden_size"]) if cached else probed["hidden_size"]
        self._check_sizes(d, D, probed)
        if not cached:   # a stage 1b that cannot start fails before the extraction, not after (init_weights checks)
            start_weights(d.init_from, D, d.d_compressed)
            self._extract(d, data_root, path, config, probed, dist, log, progress)
        if dist.is_main:
            self._fit_pca(d, path, log)
        distributed.barrier(dist)
        return path

    def _check_sizes(self, d: CompressorDataConfig, D: int, probed: dict | None):
        n_layers, context = (probed["num_layers"], probed["context"]) if probed else (0, None)
        if n_layers and not -(n_layers + 1) <= d.layer <= n_layers:
            raise TrmError(f"--layer {d.layer} out of range for {d.llm} ({n_layers} layers: "
                           f"use -{n_layers + 1}..{n_layers})")
        if d.d_compressed > D:
            raise TrmError(f"compressed dimension {d.d_compressed} exceeds the source model's hidden size {D}")
        if context and d.max_seq_length > context:
            print(f"note: {d.llm} has a context of {context} tokens: texts are cut to {context} tokens "
                  f"(max_seq_length {d.max_seq_length})")

    def _extract(self, d, data_root, path: Path, config: dict, probed: dict, dist, log, progress: bool):
        source = config["text_source"]
        if source.startswith("synthetic"):
            log(f"text source: the offline SYNTHETIC {'chain-of-thought' if source == 'synthetic-cot' else 'general'}"
                f" corpus, a stand-in for {'real thinking trajectories' if d.stage == '1b' else 'fineweb-edu'}")
        device = dist.device if dist.world_size > 1 else pick_device()
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(d.dtype) if device.type == "cuda" else None

        def load():
            return load_hidden_state_source(d.llm, max_seq_length=d.max_seq_length, device=device,
                                            torch_dtype=torch_dtype, **source_options(d, data_root))
        t0 = time.perf_counter()
        if source == SELF_SOURCE:
            texts, loaded = self._traces(d, path, load, dist, log, progress)
            load = (lambda: loaded) if loaded is not None else load   # the model that wrote them: load it once
        else:
            texts = iter_texts(source, d.stage, d.text_field, d.num_samples, d.seed, log=log)
        log(f"hidden states: {d.llm} layer {d.layer} over up to {d.num_samples} texts from {source} -> {path} "
            f"({d.dtype}, {dist.world_size} process{'es' if dist.world_size > 1 else ''})")
        summary = extract_hidden_states(
            load, texts, path, layer=d.layer, batch_size=d.extract_batch_size, shard_size=d.shard_size, dtype=d.dtype,
            num_samples=d.num_samples, config=config, progress=progress and dist.is_main, process_index=dist.rank,
            num_processes=dist.world_size, finalize=False)
        distributed.barrier(dist)
        if dist.is_main:
            hs = summary["hidden_size"] or json.loads((path / "shard_00000.json").read_text())["hidden_size"]
            if int(hs) != probed["hidden_size"]:
                raise TrmError(f"source model {d.llm} produced hidden size {hs}, expected {probed['hidden_size']}")
            man = finalize_manifest(path, config, summary["num_samples"], d.shard_size, int(hs))
            secs = time.perf_counter() - t0   # model loading included
            timing = {"tokens": man["num_tokens"], "seconds": round(secs, 3), "num_processes": dist.world_size,
                      "tokens_per_s": man["num_tokens"] / max(secs, 1e-9)}
            write_json(path / "extraction_timing.json", timing)
            log(f"hidden states: {timing['tokens']:,} tokens in {secs:.1f}s = {timing['tokens_per_s']:,.0f} "
                f"tokens/s (model load included)")
        distributed.barrier(dist)

    @staticmethod
    def _traces(d, path: Path, load, dist, log, progress: bool) -> tuple[list[str], object]:
        """``text_source self``: the LLM's own thinking traces, written once by the main process
        (``llm/traces.py``); returns them and the source loaded to write them (None when they were on disk)."""
        from trmlab.llm.traces import read_traces, trace_problems, write_traces
        file = path.parent / f"traces-{path.name}.jsonl"
        texts, loaded = read_traces(file, d.num_samples), None
        if texts is None and dist.is_main:
            problems = trace_problems(d.trace_problems, d.num_samples, d.seed)   # a bad source fails before loading
            loaded = load()
            texts = write_traces(loaded, problems, file, d.trace_tokens, d.extract_batch_size, progress, log)
        distributed.barrier(dist)
        return (texts if texts is not None else read_traces(file, d.num_samples)), loaded

    @staticmethod
    def split(d: CompressorDataConfig, n: int) -> int:
        """Training samples of ``n``: the last eval_fraction (at least one) are held out."""
        n_train = n - max(1, int(round(n * d.eval_fraction)))
        if n_train < 1:
            raise TrmError(f"only {n} samples: nothing left for training after holding out {n - n_train}")
        return n_train

    @staticmethod
    def _pca_file(d: CompressorDataConfig, path: Path, n_train: int) -> Path:
        return path / f"pca-train{n_train}-max{d.pca_max_tokens}.safetensors"

    def _fit_pca(self, d: CompressorDataConfig, path: Path, log):
        cache = HiddenStateCache(path)
        n_train = self.split(d, cache.num_samples)
        f = self._pca_file(d, path, n_train)
        if f.exists():
            return
        log(f"PCA baseline: fitting on up to {d.pca_max_tokens:,} training tokens")
        cov = CovarianceAccumulator(cache.hidden_size)
        for x, mask in cache.iter_batches(range(n_train), d.extract_batch_size):
            if cov.update(x, mask, max_tokens=d.pca_max_tokens) == 0:
                break
        pca = cov.fit()
        save_safetensors(f, {"mean": pca.mean, "components": pca.components,
                                    "explained_variance": pca.explained_variance}, {"fit_tokens": str(cov.n)})

    def load(self, cfg, path) -> CompressorData:
        from safetensors import safe_open
        from safetensors.torch import load_file

        d, path = cfg.data, Path(path)
        cache = HiddenStateCache(path)
        n_train = self.split(d, cache.num_samples)
        if n_train < cfg.train.batch_size:
            raise TrmError(f"{n_train} training samples are fewer than one global batch ({cfg.train.batch_size}): "
                           f"raise --num_samples or lower --batch_size")
        if cache.num_samples < d.num_samples:
            print(f"note: the text source gave only {cache.num_samples} of the requested {d.num_samples} samples")
        d.d_model = cache.hidden_size
        lengths = []
        for shard in cache.shards:   # the masks only: a few bytes per token, not the states
            with safe_open(str(path / shard["file"]), "pt") as f:
                lengths.append(f.get_tensor("mask").sum(1).long())
        pca_t = load_file(str(self._pca_file(d, path, n_train)))
        pca = PCA(pca_t["mean"], pca_t["components"], pca_t["explained_variance"])
        return CompressorData(path, cache, n_train, torch.cat(lengths), pca, d.init_from, read_manifest(path))

    def shapes(self, cfg) -> dict:
        return {}

    def epoch_examples(self, data: CompressorData) -> int:
        return data.n_train

    # ----------------------------------------------------------------------------------------------- model
    def build_model(self, cfg) -> CompressorModel:
        d = cfg.data
        if d.d_model < 1:
            raise TrmError("data.d_model (the source model's hidden size) is unknown: set it, or build the data first "
                           "(trm data build compressor-1a ...)")
        model = CompressorModel(d.d_model, d.d_compressed, bias=d.bias, center=d.center)
        model.cfg = cfg.model   # read by the trainer's curriculum, as every model's (one step: nothing to ramp)
        return model

    def describe(self, model: CompressorModel, cfg) -> str:
        d = cfg.data
        n = sum(p.numel() for p in model.parameters())
        return (f"params {n:,} | compressor D={d.d_model} -> D'={d.d_compressed} ({d.d_model / d.d_compressed:.0f}x), "
                f"{'centred' if d.center else 'uncentred'}, stage {d.stage}, layer {d.layer} of {d.llm}")

    def init_weights(self, model: CompressorModel, data: CompressorData):
        """Before training (a resume then loads its own): the data mean, and stage 1b's starting weights."""
        start = start_weights(data.init_from, model.d_model, model.d_compressed)
        with torch.no_grad():
            if start is not None:
                model.load_state_dict(start, strict=False)
            if model.center:
                model.mean.copy_(data.pca.mean.to(model.mean))

    # ------------------------------------------------------------------------------------------------ training
    def sampler(self, data: CompressorData, seed: int) -> EpochSampler:
        return EpochSampler(data.n_train, seed)

    def batch(self, data: CompressorData, sampler, step: int, batch_size: int, rank: int = 0, world_size: int = 1):
        idx = sampler.indices(step, batch_size)
        mine = idx[rank_slice(batch_size, rank, world_size)]
        x, mask = data.cache.get(mine.tolist())
        tokens = data.lengths[idx].sum().float()   # real tokens of the whole global batch
        return {"inputs": x, "mask": mask, "tokens": tokens.expand(len(mine)).clone()}

    def losses(self, out, batch: dict, cfg):
        """Per-sample values whose mean over the global batch is the exact masked MSE over its real tokens."""
        x, x_hat, mask = batch["inputs"].float(), out.logits.float(), batch["mask"]
        err = ((x_hat - x) ** 2 * mask.unsqueeze(-1)).sum((1, 2))
        loss = err * cfg.train.batch_size / (batch["tokens"] * x.shape[-1])
        cos = F.cosine_similarity(x_hat, x, dim=-1)
        sample_cos = (cos * mask).sum(1) / mask.sum(1).clamp_min(1)
        return loss, sample_cos.detach() > GOOD_COSINE, {"cosine": sample_cos.detach()}

    # ---------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def evaluate(self, model, data: CompressorData, cfg, device, split: str = "test", max_samples: int = 0,
                 out_dir=None, **options) -> dict:
        """Seed 001's metrics of ``model`` on the held-out samples (``train``: the training ones), PCA's beside."""
        if split not in data.splits:
            raise TrmError(f"split must be test (the held-out samples) or train, got {split!r}")
        idx = data.splits[split][:max_samples or None]
        k = model.d_compressed
        key = (split, len(idx), k)
        ours, theirs = ReconstructionMetrics(model.d_model), ReconstructionMetrics(model.d_model)
        was_training = model.training
        model.eval()
        for x, mask in data.cache.iter_batches(idx, max(8, cfg.train.batch_size)):
            x, mask = x.to(device), mask.to(device)
            ours.update(x, model.decompress(model.compress(x)), mask)
            if key not in data.pca_metrics:
                theirs.update(x, data.pca.reconstruct(x, k), mask)
        model.train(was_training)
        if key not in data.pca_metrics:
            data.pca_metrics[key] = dict(theirs.compute(), explained_variance_ratio=data.pca.explained_variance_ratio(k))
        m = ours.compute()
        pca = data.pca_metrics[key]
        m.update({f"pca_{name}": pca[name] for name in (*METRIC_NAMES, "explained_variance_ratio")})
        m["mse_vs_pca"] = m["mse"] / pca["mse"] if pca["mse"] > 0 else float("inf")
        return m


def source_info(cfg, data: CompressorData) -> dict:
    """What a compressor was trained on (the cache's settings and, for a trmlab run, its weights' fingerprint)."""
    return {**data.meta["config"], "hidden_size": cfg.data.d_model, "cache_dir": str(data.path),
            "fingerprint": data.meta["config"].get("source")}
