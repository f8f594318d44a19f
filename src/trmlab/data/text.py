"""Language-model data: build token shards from a text source once, then sample training batches from them.

``build_text(cfg)`` writes ``data/text-<hash>/``:
  ``tokenizer.json``                   the byte-level BPE tokenizer the shards were made with
  ``train_000.bin, train_001.bin ...`` raw token ids (uint16 if the vocab fits, else uint32), memmappable
  ``val_000.bin ...``                  the same for the validation documents
  ``metadata.json``                    dtype, token/byte/doc counts, eot_id, and for the synthetic corpus the
                                       exact entropy floor in bits/byte and in nats/token for this tokenizer
Every document is preceded by ``<|endoftext|>``, so the stream reads ``EOT doc EOT doc ...`` and a model pays
for the end of each document when it predicts the next EOT. The directory is written under a temporary name
and renamed, so a half-written build never looks complete.

``TokenStream(dir).batch(step, ...)`` draws random windows seeded by (seed, step): resuming at a step gives the
same batches, and data-parallel ranks take disjoint slices of one global batch.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm.auto import tqdm

from trmlab.atomic import atomic_directory
from trmlab.data.corpus import corpus_entropy_bits_per_byte, generate_corpus_with_nll, iter_documents
from trmlab.data.puzzles import file_signature
from trmlab.data.tokenizer import MIN_VOCAB, Tokenizer, load_tokenizer, train_tokenizer
from trmlab.errors import TrmError

FORMAT_VERSION = 1
SPLITS = ("train", "val")
ENCODE_CHUNK = 1024          # documents per encode_batch call (and per progress-bar tick)


@dataclass
class TextDataConfig:
    source: str = "synthetic"   # "synthetic" (offline default), "pydoc", local file/dir, or a HF dataset name[:config]
    text_field: str = "text"
    split: str = "train"        # HF split name
    n_docs: int = 20000         # synthetic docs / max docs read from other sources (0 = all)
    tokenizer: str = ""         # path to an existing tokenizer.json; empty = train one
    vocab_size: int = 2048      # trained tokenizer size (seed 002 uses 50304)
    val_fraction: float = 0.05
    shard_tokens: int = 10_000_000
    seed: int = 0
    txt_docs: str = "file"      # .txt files: "file" = one document per file, "paragraph" = per blank-line block

    def __post_init__(self):
        def bad(field, why):
            raise TrmError(f"data.{field} {why}, got {getattr(self, field)!r}")

        if not isinstance(self.source, str) or not self.source.strip():
            bad("source", "must be 'synthetic', 'pydoc', a local path or a dataset name")
        if not isinstance(self.text_field, str) or not self.text_field:
            bad("text_field", "must be a non-empty string")
        if not isinstance(self.n_docs, int) or self.n_docs < 0:
            bad("n_docs", "must be an integer >= 0 (0 = all)")
        if self.source == "synthetic" and self.n_docs < 2:
            bad("n_docs", "must be >= 2 for the synthetic source (one train and one val document at least)")
        if not isinstance(self.vocab_size, int) or not MIN_VOCAB <= self.vocab_size <= 2**31:
            bad("vocab_size", f"must be an integer >= {MIN_VOCAB}")
        if not isinstance(self.val_fraction, (int, float)) or not 0.0 < self.val_fraction < 1.0:
            bad("val_fraction", "must be in (0, 1)")
        if not isinstance(self.shard_tokens, int) or self.shard_tokens < 1024:
            bad("shard_tokens", "must be an integer >= 1024")
        if not isinstance(self.seed, int):
            bad("seed", "must be an integer")
        if self.txt_docs not in ("file", "paragraph"):
            bad("txt_docs", "must be 'file' or 'paragraph'")
        # data.tokenizer is checked when the data is built (text_dir_name), not here: a finished run keeps its own
        # copy and must load on a machine that lacks the original file


# ---------------------------------------------------------------------------------------------------------------
# Building

def text_dir_name(cfg: TextDataConfig) -> str:
    """``text-<hash>``: the hash covers the config, local input files and the tokenizer file's content."""
    key = dict(asdict(cfg), format_version=FORMAT_VERSION)
    src = Path(cfg.source).expanduser()
    if cfg.source != "synthetic" and src.exists():
        key["source_files"] = file_signature(src)  # edited files get a new build directory
    if cfg.tokenizer:
        tok = Path(cfg.tokenizer).expanduser()
        if not tok.is_file():
            raise TrmError(f"data.tokenizer: {cfg.tokenizer} is not an existing tokenizer.json")
        key["tokenizer"] = hashlib.sha1(tok.read_bytes()).hexdigest()
    return "text-" + hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]


def _read_docs(cfg: TextDataConfig) -> tuple[list[str], list[float] | None]:
    """All documents (capped at n_docs) and, for the synthetic source, their exact NLL in bits."""
    if cfg.source == "synthetic":
        return generate_corpus_with_nll(cfg.n_docs, cfg.seed)
    docs = []
    for doc in iter_documents(cfg.source, cfg.text_field, cfg.split, paragraphs=cfg.txt_docs == "paragraph"):
        docs.append(doc)
        if cfg.n_docs and len(docs) >= cfg.n_docs:
            break
    return docs, None


def _split_docs(n: int, val_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Document indices per split: a seeded shuffle, at least one document on each side, each side kept in order."""
    if n < 2:
        raise TrmError(f"need at least 2 documents to make a train/val split, got {n} "
                       "(for one big .txt file set data.txt_docs=paragraph)")
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    perm = np.random.default_rng(seed).permutation(n)
    return {"val": np.sort(perm[:n_val]), "train": np.sort(perm[n_val:])}


class _ShardWriter:
    """Appends token ids to ``{split}_000.bin``, ``{split}_001.bin``, ... of at most ``shard_tokens`` each."""

    def __init__(self, out_dir: Path, split: str, shard_tokens: int, dtype):
        self.out_dir, self.split, self.shard_tokens, self.dtype = out_dir, split, shard_tokens, dtype
        self.buf: list[np.ndarray] = []
        self.buf_len = 0
        self.shards: list[str] = []
        self.n_tokens = 0

    def add(self, ids: np.ndarray) -> None:
        self.buf.append(ids)
        self.buf_len += len(ids)
        while self.buf_len >= self.shard_tokens:
            self._flush(self.shard_tokens)

    def _flush(self, n: int) -> None:
        flat = np.concatenate(self.buf)
        name = f"{self.split}_{len(self.shards):03d}.bin"
        flat[:n].astype(self.dtype).tofile(self.out_dir / name)
        self.shards.append(name)
        self.n_tokens += n
        rest = flat[n:]
        self.buf, self.buf_len = ([rest] if len(rest) else []), len(rest)

    def close(self) -> None:
        if self.buf_len:
            self._flush(self.buf_len)


def _tokenize_split(tok: Tokenizer, docs: list[str], writer: _ShardWriter, desc: str) -> None:
    with tqdm(total=len(docs), desc=desc, unit="doc", mininterval=1.0) as bar:
        for i in range(0, len(docs), ENCODE_CHUNK):
            chunk = docs[i:i + ENCODE_CHUNK]
            for ids in tok.encode_batch(chunk):
                writer.add(np.array([tok.eot_id] + ids, dtype=np.int64))
            bar.update(len(chunk))
    writer.close()


def _entropy_meta(docs, nll, idx: dict[str, np.ndarray], counts: dict) -> dict:
    """The synthetic corpus's floor: exact bits/byte per split, and val nats/token for this tokenizer."""
    bpb = {s: corpus_entropy_bits_per_byte([docs[i] for i in idx[s]], [nll[i] for i in idx[s]]) for s in SPLITS}
    val_bytes_per_token = counts["n_bytes"]["val"] / counts["n_tokens"]["val"]
    return {
        "entropy_bits_per_byte": bpb,
        "entropy_nats_per_token_val": bpb["val"] * math.log(2) * val_bytes_per_token,
        "entropy_note": "exact NLL of the split under the generator / its UTF-8 bytes; no model can beat it "
                        "in expectation. nats/token counts the EOT before each document as a token.",
    }


def _write_build(cfg: TextDataConfig, tmp: Path) -> dict:
    t0 = time.time()
    docs, nll = _read_docs(cfg)
    idx = _split_docs(len(docs), cfg.val_fraction, cfg.seed)
    if cfg.tokenizer:
        tok = load_tokenizer(Path(cfg.tokenizer).expanduser())
        tok.save(tmp / "tokenizer.json")
    else:
        # train on the training documents only, so nothing about the val split leaks into the vocabulary
        tok = train_tokenizer((docs[i] for i in idx["train"]), cfg.vocab_size, tmp / "tokenizer.json")
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    counts: dict = {"n_docs": {}, "n_tokens": {}, "n_bytes": {}, "shards": {}}
    for split in SPLITS:
        split_docs = [docs[i] for i in idx[split]]
        writer = _ShardWriter(tmp, split, cfg.shard_tokens, dtype)
        _tokenize_split(tok, split_docs, writer, f"tokenize {split}")
        counts["n_docs"][split] = len(split_docs)
        counts["n_tokens"][split] = writer.n_tokens
        counts["n_bytes"][split] = sum(len(d.encode("utf-8")) for d in split_docs)
        counts["shards"][split] = writer.shards
    meta = {
        "format_version": FORMAT_VERSION,
        "source": cfg.source,
        "config": asdict(cfg),
        "dtype": np.dtype(dtype).name,
        "vocab_size": tok.vocab_size,
        "eot_id": tok.eot_id,
        **counts,
        "tokens_per_byte": {s: counts["n_tokens"][s] / max(1, counts["n_bytes"][s]) for s in SPLITS},
        "build_seconds": round(time.time() - t0, 2),
    }
    if nll is not None:
        meta.update(_entropy_meta(docs, nll, idx, counts))
    (tmp / "metadata.json").write_text(json.dumps(meta, indent=2))
    return meta


def load_text_meta(data_dir: str | Path) -> dict:
    """``metadata.json`` of a built text directory, after checking that its shards are all there."""
    data_dir = Path(data_dir)
    try:
        meta = json.loads((data_dir / "metadata.json").read_text())
        dtype = np.dtype(meta["dtype"])
        for split in SPLITS:
            for name in meta["shards"][split]:
                if not (data_dir / name).is_file():
                    raise FileNotFoundError(name)
            n_bytes = sum((data_dir / n).stat().st_size for n in meta["shards"][split])
            if n_bytes != meta["n_tokens"][split] * dtype.itemsize:
                raise ValueError(f"{split} shards do not match n_tokens")
        if meta["format_version"] != FORMAT_VERSION:
            raise ValueError("old format")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TrmError(f"{data_dir} is not a built text dataset ({type(e).__name__}: {e}); rebuild it") from None
    return meta


def build_text(cfg: TextDataConfig, out_root: str | Path = "data", force: bool = False) -> Path:
    """Build (or reuse) the token shards for ``cfg`` under ``out_root/text-<hash>``; returns the directory."""
    out_dir = Path(out_root) / text_dir_name(cfg)
    if out_dir.exists() and not force:
        try:
            load_text_meta(out_dir)
            return out_dir
        except TrmError:
            pass                                    # half-deleted or stale: rebuild over it
    try:
        with atomic_directory(out_dir) as tmp:
            _write_build(cfg, tmp)
    except OSError:
        if not (out_dir.exists() and not force):    # another process finished the same build first: use it
            raise
        load_text_meta(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# ---------------------------------------------------------------------------------------------------------------
# Loading

def bits_per_byte(loss_nats_per_token: float, tokens_per_byte: float) -> float:
    """Convert a mean loss in nats/token to bits/byte, a unit that does not depend on the tokenizer."""
    return loss_nats_per_token * tokens_per_byte / math.log(2)


class TokenStream:
    """Memory-mapped token shards of a built text directory, served as (inputs, targets) windows."""

    def __init__(self, data_dir: str | Path, seed: int = 0):
        self.dir = Path(data_dir)
        self.meta = load_text_meta(self.dir)
        self.seed = seed
        self.vocab_size: int = self.meta["vocab_size"]
        self.eot_id: int = self.meta["eot_id"]
        dtype = np.dtype(self.meta["dtype"])
        self.shards = {s: [np.memmap(self.dir / n, dtype=dtype, mode="r") for n in self.meta["shards"][s]]
                       for s in SPLITS}
        self._tokenizer: Tokenizer | None = None

    @property
    def tokenizer(self) -> Tokenizer:
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.dir / "tokenizer.json")
        return self._tokenizer

    def n_tokens(self, split: str = "train") -> int:
        return self.meta["n_tokens"][self._check_split(split)]

    def tokens_per_byte(self, split: str = "val") -> float:
        return self.meta["tokens_per_byte"][self._check_split(split)]

    def _check_split(self, split: str) -> str:
        if split not in SPLITS:
            raise TrmError(f"split must be one of {SPLITS}, got {split!r}")
        return split

    def _window_starts(self, split: str, seq_len: int) -> np.ndarray:
        """Number of valid window starts per shard (a window is seq_len + 1 tokens and stays inside a shard)."""
        counts = np.array([max(0, len(s) - seq_len) for s in self.shards[split]], dtype=np.int64)
        if counts.sum() == 0:
            raise TrmError(f"{split} split has {self.n_tokens(split)} tokens, too few for seq_len={seq_len}")
        return counts

    def _gather(self, split: str, places: list[tuple[int, int]], seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.shards[split][s][o:o + seq_len + 1] for s, o in places]).astype(np.int64)
        x = torch.from_numpy(rows)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def batch(self, step: int, batch_size: int, seq_len: int, split: str = "train", rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` LongTensors [batch_size, seq_len]; targets are inputs shifted left by one.

        The global batch of ``batch_size * world_size`` windows depends only on (seed, split, step); rank r takes
        rows [r*B, (r+1)*B). So a resumed run sees the same data, and N ranks of B see what 1 rank of N*B would.
        """
        self._check_split(split)
        if batch_size < 1 or seq_len < 1 or step < 0:
            raise TrmError(f"batch needs batch_size >= 1, seq_len >= 1, step >= 0 "
                           f"(got {batch_size}, {seq_len}, {step})")
        if not 0 <= rank < world_size:
            raise TrmError(f"rank must be in [0, world_size), got rank={rank} world_size={world_size}")
        counts = self._window_starts(split, seq_len)
        rng = np.random.default_rng([self.seed, SPLITS.index(split), step])
        picks = rng.integers(0, counts.sum(), size=batch_size * world_size)[rank * batch_size:(rank + 1) * batch_size]
        # map a global window index to (shard, offset), uniformly over all windows
        bounds = np.cumsum(counts)
        shard = np.searchsorted(bounds, picks, side="right")
        offset = picks - (bounds[shard] - counts[shard])
        return self._gather(split, list(zip(shard.tolist(), offset.tolist())), seq_len)

    def val_batches(self, batch_size: int, seq_len: int, max_batches: int | None = None, rank: int = 0,
                    world_size: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A fixed sequence of non-overlapping val windows, in order (the last batch may be smaller).

        With several ranks, batch i goes to rank ``i % world_size``, so together they cover the same windows.
        """
        places = [(s, o) for s, shard in enumerate(self.shards["val"])
                  for o in range(0, len(shard) - seq_len, seq_len)]
        if not places:
            raise TrmError(f"val split has {self.n_tokens('val')} tokens, too few for seq_len={seq_len}")
        n_batches = math.ceil(len(places) / batch_size)
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for i in range(rank, n_batches, world_size):
            yield self._gather("val", places[i * batch_size:(i + 1) * batch_size], seq_len)
