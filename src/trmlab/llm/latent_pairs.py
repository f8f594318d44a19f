"""Phase-2 data: pairs (compressed hidden states before thinking, compressed hidden states after thinking).

For each problem the source LLM runs twice, teacher-forced, and block ``layer``'s output is read (``llm/inject.py``)::

    pre  = prompt + "<think>\\n"                      x      = the last n_context positions       [n_context, D']
    full = pre + thinking + "\\n</think>\\n"           target = the last n_latent (K) positions     [K, D']

so ``x`` is what the model knows when thinking would start, and ``target`` is the state of the K positions right
before the answer once it has thought (the end of the trace and the closing tag, which attend to every step). With
``data.supervise=lines`` the same K positions are also read after each prefix of the trace,
``pre + first k lines + "\\n</think>\\n"`` (``target_lines``: the state after k worked steps, the whole trace's
from its last line on), so the TRM can be supervised step by step (``tasks/latent.py``). Both
go through the compressor (D -> D'), then are divided by one scale (the RMS of the training states, stored as
``scale``) so the TRM's losses are well conditioned. Prompts shorter than n_context are left-padded with zeros
(``x_mask`` marks the real positions).

Injection, the inverse: the predicted latent is multiplied by ``scale``, decompressed to D and written over block
``layer``'s output at the last K positions of ``nothink = prompt + "<think>\\n\\n</think>\\n"``: the same closing
tag the target positions end with, at the same distance from the answer. The LLM then generates the answer.

Test-split baselines are computed once, here, on the same problems: greedy answers with no thinking (``nothink``),
with the LLM's own full thinking (``think``), and with the true target injected (``oracle``: after compression,
the ceiling of latent thinking with this compressor; ``oracle_raw``: without compression). Each is stored per
sample as 1 (right), 0 (wrong) or -1 (the answer checker raised: logged and skipped), so any subset can be scored.

Compressor: ``pca`` fits the optimal rank-D' affine map on the training states (a ``DimensionCompressor`` with
biases, saved in the one checkpoint format), or a phase-1 compressor (``trm compress``'s stage1b_final export, a
checkpoint or a run directory), whose D must equal the LLM's.

Layout of ``<data_root>/latent-<hash>/`` (written under a temporary name, then renamed)::

    train.safetensors   x [N, n_context, D'], x_mask [N, n_context], target [N, K, D'] (+ target_lines [N, S, K, D'])
    test.safetensors    the same + nothink, think, oracle, oracle_raw [N] int8
    train.jsonl test.jsonl   the problems (question, thinking, answer)
    compressor/         the compressor used (model.safetensors + state.json, the one checkpoint format)
    metadata.json       config, LLM dims, layer, scale, baseline accuracies, timings
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trmlab.atomic import atomic_directory
from trmlab.config import choice
from trmlab.errors import TrmError

FORMAT = "trmlab.latent_pairs/2"   # 2: the compressor saved in the one checkpoint format


@dataclass
class LatentDataConfig:
    llm: str = "tiny-arith"      # tiny-arith (offline, trained on first use) | local HF model dir | hub name
    llm_steps: int = 3000        # tiny-arith only: its training steps (0 = untrained, for smoke tests)
    llm_batch_size: int = 32     # tiny-arith only: its training batch
    llm_dtype: str = choice("float32", ("float32", "bfloat16"))
    source: str = "synthetic"    # problems: synthetic | .jsonl/.json/.parquet file | HF dataset name
    question_field: str = "question"
    thinking_field: str = "thinking"
    answer_field: str = "answer"
    min_steps: int = 2           # synthetic: operations per problem
    max_steps: int = 4
    n_train: int = 2000
    n_test: int = 200
    layer: int = 0               # decoder block whose output is read and overwritten (0 = the middle one)
    n_context: int = 20          # x: last positions of the prompt up to "<think>\n"
    n_latent: int = 3            # K: positions of the thought (target / injected span)
    compressor: str = "pca"      # pca | path to a phase-1 compressor checkpoint
    d_compressed: int = 64       # D' (0 = the checkpoint's)
    loss: str = choice("both", ("cosine", "mse", "both", "contrastive"), "phase-2 loss in the compressed space")
    supervise: str = choice("final", ("final", "lines"),
                            "phase-2 target of supervision step k: the state after the whole thinking (final), or "
                            "after its first k worked lines (lines; the whole thinking from its last line on)")
    halt_cosine: float = 0.9     # ACT target: a latent is "right" when its cosine to the target exceeds this
    checker: str = ""            # "module:function(completion, answer) -> bool"; empty = last-number match
    system: str = ""             # system message of the chat prompt
    max_think_tokens: int = 48   # full-thinking baseline: generation budget
    max_answer_tokens: int = 6
    extract_batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        for name in ("n_train", "n_test", "n_context", "n_latent", "extract_batch_size", "max_answer_tokens"):
            if getattr(self, name) < 1:
                raise TrmError(f"data.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_compressed < 0 or (self.d_compressed == 0 and self.compressor == "pca"):
            raise TrmError("data.d_compressed must be >= 1 with compressor=pca (0 = take it from a checkpoint)")
        if not 0 < self.halt_cosine < 1:
            raise TrmError(f"data.halt_cosine must be in (0, 1), got {self.halt_cosine}")

    def tiny_spec(self):
        """The offline LLM's recipe: it always learns the full synthetic task (2-4 operations), whatever subset of
        problems this dataset asks it about, so one cached LLM serves every dataset."""
        from trmlab.llm.tiny import TinyLLMSpec
        return TinyLLMSpec(steps=self.llm_steps, batch_size=self.llm_batch_size)


TRAINING_ONLY = ("loss", "halt_cosine")   # read by the phase-2 task, not by the builder: not in the cache key


def pairs_dir(cfg: LatentDataConfig, data_root: str | Path) -> Path:
    key = {k: v for k, v in asdict(cfg).items() if k not in TRAINING_ONLY}
    key["format"] = FORMAT
    comp = Path(cfg.compressor).expanduser()
    weights = list(comp.rglob("model.safetensors")) if cfg.compressor != "pca" and comp.is_dir() else []
    if weights:   # a compressor retrained at the same path gives new pairs
        key["compressor_mtime"] = max(f.stat().st_mtime for f in weights)
    return Path(data_root) / f"latent-{hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]}"


def load_checker(spec: str):
    """The answer checker: built-in last-number match, or ``module:function`` of the user's."""
    from trmlab.llm.checker import check_answer
    if not spec:
        return check_answer
    module, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), fn)
    except (ImportError, AttributeError, ValueError) as e:
        raise TrmError(f"data.checker={spec!r}: cannot import it ({e})") from None


def problems(cfg: LatentDataConfig) -> dict[str, list]:
    from trmlab.llm.problems import load_problems, synthetic_problems
    if cfg.source == "synthetic":
        return {s: synthetic_problems(n, cfg.seed, s, cfg.min_steps, cfg.max_steps)
                for s, n in (("train", cfg.n_train), ("test", cfg.n_test))}
    rows = load_problems(cfg.source, "train", cfg.n_train + cfg.n_test,
                         (cfg.question_field, cfg.thinking_field, cfg.answer_field), cfg.seed)
    if len(rows) < 2:
        raise TrmError(f"problem source {cfg.source} has {len(rows)} usable rows; need a train and a test problem")
    n_test = min(cfg.n_test, len(rows) // 2)
    return {"train": rows[n_test:], "test": rows[:n_test]}


# ------------------------------------------------------------------------------------------- compressor
def fit_pca_compressor(states: torch.Tensor, d_compressed: int):
    """The optimal rank-D' affine compressor of ``states`` [T, D] as a tied ``DimensionCompressor`` with biases:
    z = (x - mean) V^T, x_hat = z V + mean (V = the top D' principal axes)."""
    from trmlab.models.compressor import DimensionCompressor, fit_pca
    d = states.shape[-1]
    if d_compressed > d:
        raise TrmError(f"data.d_compressed={d_compressed} exceeds the LLM's hidden size {d}")
    pca = fit_pca(states)
    comp = DimensionCompressor(d, d_compressed, bias=True)
    with torch.no_grad():
        v = pca.components[:d_compressed].float()
        comp.weight.copy_(v)
        comp.encoder_bias.copy_(-(pca.mean.float() @ v.t()))
        comp.decoder_bias.copy_(pca.mean.float())
    comp.explained_variance = pca.explained_variance_ratio(d_compressed)
    return comp


def checkpoint_compressor(cfg: LatentDataConfig, d_model: int, layer: int, log=print):
    """A phase-1 checkpoint, checked against the LLM's hidden size and data.d_compressed."""
    from trmlab.models.compressor import load_checked
    # a missing one says how to get one, not only that it is missing
    comp, state = load_checked(cfg.compressor, d_model, cfg.d_compressed, "compressor", f"LLM {cfg.llm}",
                               f"no phase-1 compressor at {cfg.compressor}: train it with `trm compress --model "
                               f"{cfg.llm} --layer {layer} ...` (docs/compressor.md), or set data.compressor=pca",
                               ": train a compressor on this LLM (trm compress --model ...)")
    src_layer = ((state.get("config") or {}).get("data") or {}).get("layer")   # the phase-1 run's data.layer
    if src_layer not in (None, layer):
        log(f"note: compressor {cfg.compressor} was trained on layer {src_layer} states; using it on layer {layer}")
    return comp


# ------------------------------------------------------------------------------------------- extraction
@torch.no_grad()
def extract(model, tokenizer, texts: list[str], layer: int, last: int, batch_size: int):
    """Block ``layer``'s output at the last ``last`` positions of each text: (states [N, last, D], mask [N, last])."""
    from trmlab.llm.inject import hidden_at
    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    states, masks = [], []
    for b in range(0, len(texts), batch_size):
        enc = tokenizer(texts[b:b + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        if ids.shape[1] < last:  # left-pad to at least `last` positions
            pad = last - ids.shape[1]
            ids = torch.cat([ids.new_full((len(ids), pad), tokenizer.pad_token_id), ids], 1)
            mask = torch.cat([mask.new_zeros((len(ids), pad)), mask], 1)
        h = hidden_at(model, ids, mask, layer)[:, -last:].float().cpu()
        m = mask[:, -last:].bool().cpu()
        states.append(h * m.unsqueeze(-1))
        masks.append(m)
    return torch.cat(states), torch.cat(masks)


def baseline_flags(model, tokenizer, fmt, probs, checker, cfg: LatentDataConfig, layer: int,
                   latents: dict[str, torch.Tensor], log=print) -> dict[str, torch.Tensor]:
    """Per-test-problem correctness (1 / 0 / -1 = checker raised) of each baseline; see the module docstring."""
    from trmlab.llm.checker import safe_check
    from trmlab.llm.inject import generate
    runs = {"nothink": ([fmt.nothink(p) for p in probs], None, cfg.max_answer_tokens),
            "think": ([fmt.pre(p) for p in probs], None, cfg.max_think_tokens + cfg.max_answer_tokens)}
    for name, lat in latents.items():
        runs[name] = ([fmt.nothink(p) for p in probs], lat, cfg.max_answer_tokens)
    out = {}
    for name, (texts, lat, n_new) in runs.items():
        completions = generate(model, tokenizer, texts, n_new, latents=lat, layer=layer,
                               batch_size=cfg.extract_batch_size)
        flags = [safe_check(checker, c, p.answer, log) for c, p in zip(completions, probs)]
        out[name] = torch.tensor([-1 if f is None else int(f) for f in flags], dtype=torch.int8)
    return out


def flag_accuracy(flags: torch.Tensor) -> float:
    ok = flags >= 0
    return float((flags[ok] == 1).float().mean()) if ok.any() else 0.0


# ------------------------------------------------------------------------------------------- the builder
def _check_inputs(cfg: LatentDataConfig, log=print):
    """Everything that can fail on bad input, checked from the LLM's config before any LLM is loaded or trained:
    (hidden size D, number of layers, the resolved layer, the phase-1 compressor or None for PCA)."""
    from trmlab.llm.inject import resolve_layer
    from trmlab.llm.pretrained import llm_config, llm_dims
    d_model, n_layers = llm_dims(llm_config(cfg.llm, cfg.tiny_spec()))
    layer = resolve_layer(cfg.layer, n_layers)
    comp = None if cfg.compressor == "pca" else checkpoint_compressor(cfg, d_model, layer, log)
    if comp is None and cfg.d_compressed > d_model:
        raise TrmError(f"data.d_compressed={cfg.d_compressed} exceeds the LLM's hidden size {d_model}")
    return d_model, n_layers, layer, comp


def _extract_splits(model, tokenizer, fmt, probs, cfg: LatentDataConfig, layer: int, log=print) -> dict:
    """split -> {"x" [N, n_context, D], "x_mask" [N, n_context], "target" [N, K, D], with data.supervise=lines
    "target_lines" [N, S, K, D] (S: the most lines of any trace)}, uncompressed."""
    from trmlab.llm.chat import thinking_lines
    n_lines = max(len(thinking_lines(p)) for ps in probs.values() for p in ps)   # one S for both splits
    raw = {}
    for split, ps in probs.items():
        x, m = extract(model, tokenizer, [fmt.pre(p) for p in ps], layer, cfg.n_context, cfg.extract_batch_size)
        y, _ = extract(model, tokenizer, [fmt.full(p) for p in ps], layer, cfg.n_latent, cfg.extract_batch_size)
        raw[split] = {"x": x, "x_mask": m, "target": y}
        if cfg.supervise == "lines":
            raw[split]["target_lines"] = _line_targets(model, tokenizer, fmt, ps, y, n_lines, cfg, layer)
        log(f"latent pairs: {split}: {len(ps)} problems, layer {layer}, D={x.shape[-1]}")
    return raw


def _line_targets(model, tokenizer, fmt, ps, final, n_lines: int, cfg: LatentDataConfig, layer: int):
    """[N, n_lines, K, D]: the K target positions after each trace's first 1, 2, ... lines; a trace's last line and
    what follows it are its whole trace's state ``final`` (read once, not again)."""
    from trmlab.llm.chat import thinking_lines
    out = final.unsqueeze(1).repeat(1, n_lines, 1, 1)
    where = [(i, k) for i, p in enumerate(ps) for k in range(1, len(thinking_lines(p)))]
    if where:
        y, _ = extract(model, tokenizer, [fmt.after_lines(ps[i], k) for i, k in where], layer, cfg.n_latent,
                       cfg.extract_batch_size)
        rows, cols = zip(*where)
        out[list(rows), [k - 1 for k in cols]] = y
    return out


@torch.no_grad()
def _compress(raw: dict, comp, cfg: LatentDataConfig, log=print):
    """(compressor, split -> the same tensors compressed, scale). PCA is fitted on the training states only."""
    x, m, y = (raw["train"][k] for k in ("x", "x_mask", "target"))
    if comp is None:
        comp = fit_pca_compressor(torch.cat([x[m], y.flatten(0, 1)]), cfg.d_compressed)
        log(f"PCA compressor D={x.shape[-1]} -> D'={cfg.d_compressed}: {comp.explained_variance:.3f} of the variance")
    comp.eval()
    out = {s: {k: v if k == "x_mask" else comp.compress(v) for k, v in r.items()} for s, r in raw.items()}
    for r in out.values():
        r["x"] = r["x"] * r["x_mask"].unsqueeze(-1)
    x, m, y = (out["train"][k] for k in ("x", "x_mask", "target"))
    # one scale for x and target: the RMS of the compressed training states (keeps cosine and MSE comparable)
    scale = float(torch.cat([x[m], y.flatten(0, 1)]).pow(2).mean().sqrt().clamp(min=1e-6))
    return comp, out, scale


def _write(out: Path, cfg: LatentDataConfig, probs, comp, comp_states, scale: float, flags, meta: dict):
    """Write the dataset under a temporary name, then rename it into place (a crash leaves no half dataset)."""
    from safetensors.torch import save_file

    from trmlab.models.compressor import save_compressor
    with atomic_directory(out) as tmp:
        for split, states in comp_states.items():
            tensors = {k: v.to(torch.uint8) if k == "x_mask" else v / scale for k, v in states.items()}
            if split == "test":
                tensors.update(flags)
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / f"{split}.safetensors"),
                      metadata={"format": FORMAT})
            (tmp / f"{split}.jsonl").write_text("".join(json.dumps(asdict(p)) + "\n" for p in probs[split]))
        save_compressor(tmp / "compressor", comp, {"source": {"model": cfg.llm, "layer": meta["layer"]}})
        (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))


def build_latent_pairs(cfg: LatentDataConfig, data_root: str | Path = "data", log=print) -> Path:
    """Build (or reuse) the phase-2 dataset for ``cfg`` and return its directory."""
    from trmlab.llm.chat import ChatFormat
    from trmlab.llm.pretrained import llm_dims, load_llm

    out = pairs_dir(cfg, data_root)
    if (out / "metadata.json").exists():
        return out
    d_model, n_layers, layer, comp = _check_inputs(cfg, log)
    checker = load_checker(cfg.checker)
    probs = problems(cfg)

    t0 = time.perf_counter()
    model, tokenizer = load_llm(cfg.llm, cfg.tiny_spec(), Path(data_root) / "llm", dtype=cfg.llm_dtype, log=log)
    if llm_dims(model.config)[0] != d_model:
        raise TrmError(f"LLM {cfg.llm} has hidden size {llm_dims(model.config)[0]}, its config says {d_model}")
    fmt = ChatFormat(tokenizer, cfg.system)
    t1 = time.perf_counter()
    raw = _extract_splits(model, tokenizer, fmt, probs, cfg, layer, log)
    t2 = time.perf_counter()
    comp, comp_states, scale = _compress(raw, comp, cfg, log)
    with torch.no_grad():
        oracle = comp.decompress(comp_states["test"]["target"])
    flags = baseline_flags(model, tokenizer, fmt, probs["test"], checker, cfg, layer,
                           {"oracle": oracle, "oracle_raw": raw["test"]["target"]}, log)
    t3 = time.perf_counter()
    meta = {"format": FORMAT, "config": asdict(cfg), "llm": cfg.llm, "d_model": d_model, "n_layers": n_layers,
            "layer": layer, "d_compressed": comp.d_compressed, "n_context": cfg.n_context, "n_latent": cfg.n_latent,
            "scale": scale, "explained_variance": getattr(comp, "explained_variance", None),
            "splits": {s: len(p) for s, p in probs.items()},
            "baselines": {k: flag_accuracy(v) for k, v in flags.items()},
            "skipped": {k: int((v < 0).sum()) for k, v in flags.items()},
            "timing_s": {"load_llm": t1 - t0, "extract": t2 - t1, "baselines": t3 - t2},
            "threads": torch.get_num_threads()}
    _write(out, cfg, probs, comp, comp_states, scale, flags, meta)
    return out
