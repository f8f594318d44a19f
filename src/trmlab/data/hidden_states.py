"""Hidden states of a causal LM, extracted once and streamed to sharded safetensors files (phase 1 data).

Sources
-------
Anything that follows the small ``HiddenStateSource`` protocol can be a source::

    source.hidden_size                      -> int (D)
    source.encode(texts)                    -> (ids [B, L] long, mask [B, L] long), right-padded, <= max_seq_length
    source.hidden_states(ids, mask, layer)  -> [B, L, D] float

The sources themselves (any ``transformers`` causal LM, GGUF files, trmlab runs, ``tiny-random``) live in
``llm/sources.py``: this module knows no model, it only calls the protocol.

Cache layout
------------
``extract_hidden_states`` writes, into one directory::

    manifest.json                  config (model, layer, max_seq_length, dtype, text source, ...), hidden_size,
                                   finished shards, num_samples, complete
    shard_00000.safetensors        hidden [N, L, D] (fp32 / bf16 / fp16), mask [N, L] (uint8, 1 = real token)
    shard_00000.json               written after its shard: the per-shard "finished" record
    ...

Every file is written to a temporary name and renamed. Rerunning skips the shards already recorded, without
loading the source model when nothing is left to do. Several processes (``process_index`` / ``num_processes``)
can extract disjoint shards of the same cache; ``finalize_manifest`` then writes the complete manifest.

Text sources
------------
``iter_texts(source, stage)``: stage ``1a`` is a general corpus — ``fineweb-edu`` (= ``HuggingFaceFW/fineweb-edu``,
needs network), a local file/directory (.txt/.jsonl/.parquet, see ``trmlab.data.corpus``), any HF dataset name, or
``synthetic`` (the project's offline synthetic corpus) or ``pydoc`` (real English offline: the paragraphs of Python's
own documentation, ``pydoc_data.topics``, longer than 200 characters). Stage ``1b`` is thinking / chain-of-thought text — a dataset
or local JSONL with a text field, or ``synthetic`` = ``synthetic-cot``: offline arithmetic problems whose worked
steps are wrapped in ``<think>...</think>`` (a stand-in for real CoT trajectories, good for tests and smoke runs).
``auto`` picks fineweb-edu for 1a when the hub is reachable, otherwise (and always for 1b) the synthetic corpus,
and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import socket
import sys
from pathlib import Path
from typing import Callable, Iterable, Iterator, Protocol, runtime_checkable

import torch

from trmlab.atomic import save_safetensors, write_json
from trmlab.data.corpus import PYDOC_SOURCE, pydoc_paragraphs
from trmlab.errors import TrmError

FORMAT = "trmlab.hidden_states/1"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
TINY_RANDOM = "tiny-random"
TEXT_SOURCE_ALIASES = {"fineweb-edu": FINEWEB_EDU, "fineweb_edu": FINEWEB_EDU}


def canonical_dtype(name: str) -> str:
    key = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if key not in DTYPES:
        raise TrmError(f"unknown dtype {name!r} (use fp32, bf16 or fp16)")
    return key


# --------------------------------------------------------------------------------------------- atomic writes


# ---------------------------------------------------------------------------------------------------- network


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached (fast: one TCP connect, no retries)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct connect says nothing; let the real request decide
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    host = endpoint.split("://", 1)[-1].split("/", 1)[0]
    port = 443 if endpoint.startswith("https") else 80
    if ":" in host:
        host, _, p = host.partition(":")
        port = int(p)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------- protocol


@runtime_checkable
class HiddenStateSource(Protocol):
    """Anything that maps texts to token ids and token ids to hidden states."""

    hidden_size: int

    def encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    def hidden_states(self, ids: torch.Tensor, mask: torch.Tensor, layer: int = -1) -> torch.Tensor: ...


# ------------------------------------------------------------------------------------------------ text sources


def generate_cot_corpus(n_docs: int, seed: int = 0) -> list[str]:
    """SYNTHETIC stand-in for thinking trajectories: arithmetic word problems whose worked steps are wrapped in
    ``<think>...</think>`` before the answer. Deterministic in ``seed``; document i does not depend on n_docs."""
    return [_cot_document(i, seed) for i in range(int(n_docs))]


_COT_NAMES = ["Ana", "Ben", "Chloe", "Dev", "Eli", "Fatima", "Goran", "Hana", "Ivan", "Jun", "Kira", "Luis"]
_COT_ITEMS = ["apples", "books", "coins", "marbles", "pencils", "stamps", "shells", "cards", "cookies", "bolts"]


def _cot_document(index: int, seed: int) -> str:
    rng = random.Random(f"trmlab-cot:{seed}:{index}")
    name, item = rng.choice(_COT_NAMES), rng.choice(_COT_ITEMS)
    kind = rng.randrange(3)
    if kind == 0:
        a, b, c = rng.randint(2, 60), rng.randint(2, 40), rng.randint(2, 9)
        total = (a + b) * c
        q = (f"{name} has {a} {item} and buys {b} more. Then {name} gets {c} times as many. "
             f"How many {item} does {name} have?")
        steps = [f"{name} starts with {a} {item}.", f"After buying {b} more: {a} + {b} = {a + b}.",
                 f"{c} times as many: {a + b} * {c} = {total}.", f"So the answer is {total}."]
    elif kind == 1:
        a, b = rng.randint(20, 200), rng.randint(2, 12)
        q_, r = divmod(a, b)
        total = q_
        q = f"{name} shares {a} {item} equally among {b} friends. How many does each friend get, and how many are left?"
        steps = [f"Divide {a} by {b}.", f"{b} * {q_} = {b * q_}, which is at most {a}.",
                 f"{a} - {b * q_} = {r} left over.", f"Each friend gets {q_} and {r} are left."]
    else:
        xs = [rng.randint(1, 99) for _ in range(rng.randint(3, 6))]
        steps, acc = [], 0
        for x in xs:
            steps.append(f"{acc} + {x} = {acc + x}.")
            acc += x
        total = acc
        q = f"{name} counts {item} in boxes of " + ", ".join(map(str, xs)) + f". How many {item} in total?"
        steps.append(f"The total is {total}.")
    return f"Question: {q}\n<think>\n" + "\n".join(steps) + f"\n</think>\nAnswer: {total}\n"


def _general_synthetic(n_docs: int, seed: int) -> list[str]:
    try:
        from trmlab.data.corpus import generate_corpus
    except ImportError:  # the corpus module is optional: a minimal fallback keeps phase 1 usable
        rng = random.Random(f"trmlab-general:{seed}")
        words = ("the a river city small old bright school teacher learns builds reads quickly history science "
                 "light water energy student map tree stone market number").split()
        return [" ".join(rng.choice(words) for _ in range(rng.randint(20, 120))) + "." for _ in range(n_docs)]
    return generate_corpus(n_docs, seed)


def _iter_local_or_hf(source: str, text_field: str) -> Iterator[str]:
    try:
        from trmlab.data.corpus import iter_documents
    except ImportError:
        iter_documents = _fallback_iter_documents
    return iter_documents(source, text_field)


def _fallback_iter_documents(source: str, text_field: str = "text") -> Iterator[str]:
    path = Path(source).expanduser()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        if f.suffix == ".jsonl":
            for line in f.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    if text_field not in row:
                        raise TrmError(f"{f}: no {text_field!r} field")
                    yield row[text_field]
        elif f.suffix == ".txt":
            yield f.read_text(encoding="utf-8", errors="replace")


def resolve_text_source(source: str | None, stage: str, log: Callable[[str], None] = print) -> str:
    """Maps ``auto``/None and aliases to a concrete source: a hub dataset name, a local path, ``synthetic`` or
    ``synthetic-cot``. Never downloads anything."""
    stage = str(stage)
    src = (source or "auto").strip()
    if src == "auto":
        if stage == "1a":
            if hub_reachable():
                return FINEWEB_EDU
            log("no network: stage 1a uses the offline synthetic corpus instead of fineweb-edu "
                "(pass --text_source PATH for a local corpus)")
            return "synthetic"
        log("stage 1b: using the offline SYNTHETIC chain-of-thought corpus (arithmetic with <think> steps) as a "
            "stand-in; pass --text_source NAME_OR_JSONL --text_field FIELD for real thinking trajectories")
        return "synthetic-cot"
    if src == "synthetic":
        return "synthetic-cot" if stage == "1b" else "synthetic"
    return TEXT_SOURCE_ALIASES.get(src, src)


def iter_texts(source: str, stage: str = "1a", text_field: str = "text", num_samples: int | None = None,
               seed: int = 0, log: Callable[[str], None] = print) -> Iterator[str]:
    """Up to ``num_samples`` non-empty texts from ``source`` (see the module docstring). The source is resolved,
    checked and its first document read eagerly, so a missing, unreachable or empty source raises ``TrmError`` here
    rather than halfway through an extraction."""
    src = resolve_text_source(source, stage, log)
    n = None if num_samples is None else int(num_samples)
    if n is not None and n <= 0:
        raise TrmError(f"num_samples must be positive, got {num_samples}")
    if src in ("synthetic", "synthetic-cot"):
        if n is None:
            raise TrmError("the synthetic corpora need num_samples")
        docs: Iterable[str] = generate_cot_corpus(n, seed) if src == "synthetic-cot" else _general_synthetic(n, seed)
    elif src == PYDOC_SOURCE:
        docs = pydoc_paragraphs()
    else:
        if not Path(src).expanduser().exists():
            if src.startswith(("/", ".", "~")) or src.endswith((".txt", ".jsonl", ".json", ".parquet")):
                raise TrmError(f"text source {src} does not exist")
            if not hub_reachable():
                raise TrmError(f"cannot load text source {source} ({src}): not a local path and no network")
        docs = _iter_local_or_hf(src, text_field)

    def nonempty() -> Iterator[str]:
        try:
            for doc in docs:
                if isinstance(doc, str) and doc.strip():
                    yield doc
        except TrmError as e:
            if "no documents" in str(e):
                return
            raise

    it = nonempty()
    first = next(it, None)
    if first is None:
        raise TrmError(f"text source {source} is empty")

    def limited() -> Iterator[str]:
        yield first
        count = 1
        for doc in it:
            if n is not None and count >= n:
                break
            count += 1
            yield doc

    return limited()


# ----------------------------------------------------------------------------------------------- extraction


def cache_key(config: dict) -> str:
    return hashlib.sha1(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def shard_name(i: int) -> str:
    return f"shard_{i:05d}.safetensors"


def _record_name(i: int) -> str:
    return f"shard_{i:05d}.json"


def read_manifest(out_dir: str | Path) -> dict | None:
    p = Path(out_dir) / "manifest.json"
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise TrmError(f"{p} is not valid JSON (delete the directory to re-extract)") from None


def _finished_shards(out_dir: Path) -> dict[int, dict]:
    done = {}
    for rec in out_dir.glob("shard_*.json"):
        try:
            i = int(rec.stem.split("_")[1])
            info = json.loads(rec.read_text())
        except (ValueError, json.JSONDecodeError):
            continue
        if (out_dir / shard_name(i)).exists():
            done[i] = info
    return done


def _shard_ok(path: Path) -> bool:
    """Reads only the header; safetensors refuses a file shorter than its header says, so truncation shows."""
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
        return True
    except (SafetensorError, OSError, ValueError):
        return False


def _forget_shards(out_dir: Path, man: dict, bad: list[int]) -> None:
    """Drop the records of ``bad`` shards and un-finish the manifest: the next extraction recomputes just those
    (the corrupt files stay until a fresh shard replaces them atomically)."""
    for i in bad:
        (out_dir / _record_name(i)).unlink(missing_ok=True)
    write_json(out_dir / "manifest.json", dict(man, complete=False))


def drop_corrupt_shards(out_dir: str | Path) -> list[int]:
    """Indices of the missing or truncated shards of a finished cache, forgotten so a rerun re-extracts them."""
    out_dir = Path(out_dir)
    man = read_manifest(out_dir)
    if man is None or not man.get("complete"):
        return []
    bad = [i for i, s in enumerate(man["shards"]) if not _shard_ok(out_dir / s["file"])]
    if bad:
        _forget_shards(out_dir, man, bad)
    return bad


def _check_config(out_dir: Path, config: dict) -> dict | None:
    man = read_manifest(out_dir)
    if man is not None and man.get("config") != config:
        diff = sorted(k for k in set(man.get("config", {})) | set(config)
                      if man.get("config", {}).get(k) != config.get(k))
        raise TrmError(f"hidden-state cache {out_dir} was extracted with other settings ({', '.join(diff)}); "
                       f"use another directory")
    return man


def finalize_manifest(out_dir: str | Path, config: dict, total_samples: int, shard_size: int,
                      hidden_size: int | None = None) -> dict:
    """Writes manifest.json listing all shards of a finished extraction of ``total_samples`` texts."""
    out_dir = Path(out_dir)
    done = _finished_shards(out_dir)
    n_shards = -(-int(total_samples) // int(shard_size))
    missing = [i for i in range(n_shards) if i not in done]
    if missing:
        raise TrmError(f"hidden-state cache {out_dir} is missing shards {missing[:5]}; rerun to resume")
    shards = [dict(done[i], file=shard_name(i)) for i in range(n_shards)]
    if hidden_size is None:
        hidden_size = shards[0]["hidden_size"] if shards else None
    man = {"format": FORMAT, "config": config, "hidden_size": hidden_size, "shard_size": int(shard_size),
           "shards": shards, "num_samples": sum(s["num_samples"] for s in shards),
           "num_tokens": sum(s["num_tokens"] for s in shards), "complete": True}
    write_json(out_dir / "manifest.json", man)
    return man


def extract_hidden_states(
    source: HiddenStateSource | Callable[[], HiddenStateSource],
    texts: Iterable[str],
    out_dir: str | Path,
    *,
    layer: int = -1,
    batch_size: int = 8,
    shard_size: int = 64,
    dtype: str = "fp32",
    num_samples: int | None = None,
    config: dict | None = None,
    progress: bool = True,
    process_index: int = 0,
    num_processes: int = 1,
    finalize: bool | None = None,
) -> dict:
    """Streams ``texts`` through ``source`` and writes shards of hidden states to ``out_dir`` (resumable).

    ``source`` may be a zero-argument factory, called only if some shard still has to be computed. With several
    processes, process p computes shards i with i % num_processes == p; call ``finalize_manifest`` on one process
    after all are done (``finalize`` defaults to True for a single process). Returns a summary dict
    (``num_samples`` = texts seen, ``computed`` / ``skipped`` shard indices, ``hidden_size``, and ``manifest``
    once finalized).
    """
    from tqdm.auto import tqdm

    dtype = canonical_dtype(dtype)
    if int(shard_size) <= 0 or int(batch_size) <= 0:
        raise TrmError("shard_size and batch_size must be positive")
    out_dir = Path(out_dir)
    config = dict(config or {})
    config.setdefault("layer", int(layer))
    config.setdefault("dtype", dtype)
    config.setdefault("shard_size", int(shard_size))
    out_dir.mkdir(parents=True, exist_ok=True)
    man = _check_config(out_dir, config)
    if finalize is None:
        finalize = num_processes == 1
    if man is not None and man.get("complete") and process_index == 0 and drop_corrupt_shards(out_dir):
        man = read_manifest(out_dir)   # some shard was cut short: recompute it below instead of trusting the cache
    if man is not None and man.get("complete"):
        return {"num_samples": man["num_samples"], "computed": [], "skipped": list(range(len(man["shards"]))),
                "hidden_size": man["hidden_size"], "manifest": man}
    if man is None and process_index == 0:  # record the settings up front (an incomplete manifest)
        write_json(out_dir / "manifest.json", {"format": FORMAT, "config": config, "hidden_size": None,
                                                      "shard_size": int(shard_size), "shards": [], "complete": False})
    done = _finished_shards(out_dir)
    state = {"source": None, "hidden_size": next((d.get("hidden_size") for d in done.values()), None)}

    def get_source() -> HiddenStateSource:
        if state["source"] is None:
            src = source if isinstance(source, HiddenStateSource) else source()
            if hasattr(src, "check_layer"):
                src.check_layer(layer)
            state["source"] = src
            state["hidden_size"] = int(src.hidden_size)
        return state["source"]

    computed, skipped = [], []
    bar = tqdm(total=num_samples, desc=f"hidden states -> {out_dir.name}", unit="text",
               disable=not progress or process_index != 0, dynamic_ncols=True)

    def flush(idx: int, buf: list[str]) -> None:
        src = get_source()
        hs, ms = [], []
        for b in range(0, len(buf), int(batch_size)):
            ids, mask = src.encode(buf[b : b + int(batch_size)])
            h = src.hidden_states(ids, mask, layer)
            hs.append(h.to("cpu", DTYPES[dtype]))
            ms.append(mask.to("cpu", torch.uint8))
            bar.update(len(buf[b : b + int(batch_size)]))
        length = max(h.shape[1] for h in hs)
        d = hs[0].shape[-1]
        hidden = torch.zeros(len(buf), length, d, dtype=DTYPES[dtype])
        mask = torch.zeros(len(buf), length, dtype=torch.uint8)
        row = 0
        for h, m in zip(hs, ms):
            hidden[row : row + h.shape[0], : h.shape[1]] = h
            mask[row : row + m.shape[0], : m.shape[1]] = m
            row += h.shape[0]
        hidden = hidden * mask.unsqueeze(-1).to(hidden.dtype)  # padding positions hold zeros, not model output
        save_safetensors(out_dir / shard_name(idx), {"hidden": hidden, "mask": mask},
                                metadata={"format": FORMAT, "layer": str(layer), "dtype": dtype})
        info = {"num_samples": len(buf), "num_tokens": int(mask.sum()), "max_length": int(length),
                "hidden_size": int(d), "dtype": dtype}
        write_json(out_dir / _record_name(idx), info)
        done[idx] = info
        computed.append(idx)

    total, buf, current = 0, [], 0
    try:
        for text in texts:
            if num_samples is not None and total >= int(num_samples):
                break
            idx = total // int(shard_size)
            if idx != current:
                if buf:
                    flush(current, buf)
                buf, current = [], idx
            total += 1
            if idx in done:
                if idx not in skipped:
                    skipped.append(idx)
                if process_index == 0:
                    bar.update(1)
                continue
            if idx % int(num_processes) != int(process_index):
                if process_index == 0:
                    bar.update(1)
                continue
            buf.append(text)
        if buf:
            flush(current, buf)
    finally:
        bar.close()
    if total == 0:
        raise TrmError("text source is empty: nothing to extract")
    summary = {"num_samples": total, "computed": computed, "skipped": skipped, "hidden_size": state["hidden_size"]}
    if finalize:
        summary["manifest"] = finalize_manifest(out_dir, config, total, shard_size, state["hidden_size"])
    return summary


# --------------------------------------------------------------------------------------------------- reading


class HiddenStateCache:
    """Read access to a finished extraction: ``get(indices) -> (hidden fp32 [B, L, D], mask [B, L] bool)``."""

    def __init__(self, out_dir: str | Path, keep_shards: int = 64):
        self.dir = Path(out_dir)
        man = read_manifest(self.dir)
        if man is None or not man.get("complete"):
            raise TrmError(f"{self.dir} holds no finished hidden-state extraction (no complete manifest.json)")
        self.manifest = man
        self.hidden_size = int(man["hidden_size"])
        self.shard_size = int(man["shard_size"])
        self.shards = man["shards"]
        self.num_samples = int(man["num_samples"])
        self.keep_shards = max(1, int(keep_shards))
        self._loaded: dict = {}   # shard index -> open safetensors file (the latest keep_shards)
        self._order: list[int] = []

    def __len__(self) -> int:
        return self.num_samples

    def shard_of(self, index: int) -> int:
        return int(index) // self.shard_size

    def _shard(self, i: int):
        """An open shard; rows are read from it one by one, so a random batch reads its rows, not whole shards."""
        if i not in self._loaded:
            from safetensors import SafetensorError, safe_open

            f = self.dir / self.shards[i]["file"]
            try:   # a file cut short fails here: safetensors checks the header against the file's size
                self._loaded[i] = safe_open(str(f), "pt")
            except (SafetensorError, OSError, ValueError) as e:
                _forget_shards(self.dir, self.manifest, [i])
                raise TrmError(f"{f}: corrupt hidden-state shard ({str(e).splitlines()[0][:100]}); "
                               f"rerun the same command to re-extract it") from None
            self._order.append(i)
            while len(self._order) > self.keep_shards:
                self._loaded.pop(self._order.pop(0), None)
        return self._loaded[i]

    def get(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        rows = []
        for idx in indices:
            idx = int(idx)
            if not 0 <= idx < self.num_samples:
                raise IndexError(idx)
            s = self._shard(self.shard_of(idx))
            r = idx - self.shard_of(idx) * self.shard_size
            m = s.get_slice("mask")[r].bool()
            n = int(m.nonzero().max()) + 1 if m.any() else 0
            rows.append((s.get_slice("hidden")[r, :n], m[:n]))
        length = max(1, max(h.shape[0] for h, _ in rows))
        hidden = torch.zeros(len(rows), length, self.hidden_size, dtype=torch.float32)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for j, (h, m) in enumerate(rows):
            hidden[j, : h.shape[0]] = h.float()
            mask[j, : m.shape[0]] = m
        return hidden, mask

    def iter_batches(self, indices, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        indices = list(indices)
        for b in range(0, len(indices), int(batch_size)):
            yield self.get(indices[b : b + int(batch_size)])


def log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr)


__all__ = [
    "HiddenStateSource",
    "HiddenStateCache",
    "generate_cot_corpus",
    "resolve_text_source",
    "iter_texts",
    "extract_hidden_states",
    "finalize_manifest",
    "drop_corrupt_shards",
    "read_manifest",
    "hub_reachable",
    "cache_key",
]
