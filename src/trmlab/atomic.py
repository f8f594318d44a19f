"""Files and directories that appear whole or not at all: written under a temporary name beside the target,
flushed to disk, then renamed over it. A crash, a full disk or Ctrl-C leaves the previous version (or nothing),
never half of one. Every writer in the project that others read back goes through here (checkpoints add their
own fsync of each file and a fallback to the previous checkpoint, train/checkpoint.py).

The temporary name is ``.<name>.tmp-<pid>``: hidden, per process, and recognised by ``--overwrite`` as a file a
run was writing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


def temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _fsync(path: Path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_file(path: str | Path, suffix: str = ""):
    """Yield a temporary path to write; on success it replaces ``path``, on failure it is removed.

    ``suffix`` keeps an extension some writers need (matplotlib picks the format from it)."""
    path = Path(path)
    tmp = path.with_name(temporary_name(path).name + suffix)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str):
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj, **dumps):
    write_text(path, json.dumps(obj, **{"indent": 2, "default": str, **dumps}) + "\n")


def save_safetensors(path: str | Path, tensors: dict, metadata: dict | None = None):
    from safetensors.torch import save_file
    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)


def copy_file(src: str | Path, dst: str | Path):
    with atomic_file(dst) as tmp:
        shutil.copyfile(src, tmp)


@contextlib.contextmanager
def atomic_directory(path: str | Path):
    """Yield an empty temporary directory to fill; on success it replaces ``path`` (an old one is removed only
    then), on failure it is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = temporary_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
