"""The one checkpoint format: safetensors for tensors, JSON for everything else, written atomically.

    runs/<name>/checkpoints/step_<N>/
        model.safetensors   weights
        ema.safetensors     EMA weights (when train.ema_decay > 0)
        optim.safetensors   optimizer tensors (flattened), with optim.json for their non-tensor state
        state.safetensors   run tensors: RNG states, the deep-supervision carry
        state.json          step, data position, metrics, config, and the size of every other file (written last)
A checkpoint directory is written under a temporary name, every file fsynced, then renamed (and its parent fsynced),
so it exists whole or not at all. A checkpoint is used only when whole: each file it should hold for the use at
hand (resume: all of them; evaluation: weights, EMA unless --no-ema, state.json) is there, has the size state.json
lists and parses. Given a run directory, the newest whole checkpoint is used, with a note naming any newer damaged
one; with none whole the error says what is wrong. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trmlab.errors import TrmError

MODEL, EMA_FILE, OPTIM, OPTIM_META = "model.safetensors", "ema.safetensors", "optim.safetensors", "optim.json"
STATE_TENSORS, STATE = "state.safetensors", "state.json"
STEP_DIR = re.compile(r"step_\d+")


class DamagedCheckpoint(TrmError):
    """A checkpoint that is not whole (a file missing, cut short or unreadable): skipped when an older one is."""


def _tensors(sd: dict) -> dict:
    """CPU tensors to save. safetensors refuses two names on one storage, so a tied weight's second name gets a
    copy; nothing else is copied (a checkpoint of a large puzzle-id table must not need its size again in RAM)."""
    out, seen = {}, set()
    for k, v in sd.items():
        if torch.is_tensor(v):
            v = v.detach().contiguous().cpu()
            ptr = v.untyped_storage().data_ptr()
            out[k] = v.clone() if ptr in seen else v
            seen.add(ptr)
    return out


def flatten_optimizer(sd: dict, prefix: str) -> tuple[dict, dict]:
    tensors, state = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.{pid}.{k}"] = v
            else:
                state.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "state": state}


def unflatten_optimizer(tensors: dict, meta: dict, prefix: str) -> dict:
    state: dict = {int(pid): dict(v) for pid, v in meta["state"].items()}
    for key, v in tensors.items():
        p, pid, name = key.split(".", 2)
        if p == prefix:
            state.setdefault(int(pid), {})[name] = v
    return {"state": state, "param_groups": meta["param_groups"]}


@dataclass
class Checkpoint:
    path: Path
    model: dict
    state: dict
    ema: dict | None = None
    optimizers: list = field(default_factory=list)
    tensors: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- writing
def _fsync(path: Path):
    """Flush a file, or a directory's entries, to disk: a rename is durable only once both are."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if not path.is_dir():  # some systems cannot open or fsync a directory; a file that fails is a real error
            raise


def _write_files(tmp: Path, model_sd, state: dict, ema_sd, optimizer_sds, tensors) -> dict:
    """Every file of one checkpoint into ``tmp``, each fsynced; state.json last, listing the others' sizes."""
    save_file(_tensors(model_sd), tmp / MODEL)
    if ema_sd is not None:
        save_file(_tensors(ema_sd), tmp / EMA_FILE)
    if optimizer_sds:
        flat, metas = {}, []
        for i, sd in enumerate(optimizer_sds):
            t, m = flatten_optimizer(sd, f"opt{i}")
            flat.update(t)
            metas.append(m)
        save_file(_tensors(flat), tmp / OPTIM)
        (tmp / OPTIM_META).write_text(json.dumps(metas))
    save_file(_tensors(tensors or {}), tmp / STATE_TENSORS)
    files = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
    (tmp / STATE).write_text(json.dumps(dict(state, files=files), indent=2, default=str))
    for f in tmp.iterdir():
        _fsync(f)
    _fsync(tmp)
    return files


def save_checkpoint(run_dir: Path, step: int, model_sd: dict, state: dict, ema_sd: dict | None = None,
                    optimizer_sds: list | None = None, tensors: dict | None = None, keep: int = 2) -> Path:
    ckpt_dir = Path(run_dir) / "checkpoints"
    final = ckpt_dir / f"step_{step:07d}"
    tmp, old = ckpt_dir / f".tmp_{final.name}", ckpt_dir / f".old_{final.name}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        _write_files(tmp, model_sd, dict(state, step=step), ema_sd, optimizer_sds, tensors)
        if final.exists():  # the same step saved again (after the final evaluation): keep the old until replaced
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        _fsync(ckpt_dir)
    except (OSError, SafetensorError) as e:  # a full disk reaches safetensors' writer as a SafetensorError
        shutil.rmtree(tmp, ignore_errors=True)
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0][:160]
        raise TrmError(f"{final}: cannot write the checkpoint ({reason}); the run resumes from its previous "
                       f"checkpoint with --resume") from None
    shutil.rmtree(old, ignore_errors=True)
    _prune(ckpt_dir, keep)
    return final


def _prune(ckpt_dir: Path, keep: int):
    for stale in ckpt_dir.glob(".tmp_step_*"):  # left by a crash in the middle of an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    if keep <= 0:
        return
    for old in sorted(ckpt_dir.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- finding
def checkpoints(run_dir: Path) -> list[Path]:
    """The run's step checkpoints, oldest first."""
    return sorted(p for p in (Path(run_dir) / "checkpoints").glob("step_*") if STEP_DIR.fullmatch(p.name))


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def _is_checkpoint_dir(path: Path) -> bool:
    return STEP_DIR.fullmatch(path.name) is not None or (path / MODEL).exists() or (path / STATE).exists()


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (its latest checkpoint)."""
    path = Path(path)
    if _is_checkpoint_dir(path):
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise TrmError(f"{path}: no checkpoint found (expected model.safetensors or checkpoints/step_*)")
    return latest


# ---------------------------------------------------------------------------------------------- reading
def _read_state(path: Path) -> dict:
    f = path / STATE
    try:
        state = json.loads(f.read_text())
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{f} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DamagedCheckpoint(f"{f} is damaged ({type(e).__name__})") from None
    ok = (isinstance(state, dict) and isinstance(state.get("step"), int) and isinstance(state.get("config"), dict)
          and isinstance(state["config"].get("task"), str) and isinstance(state.get("files", {}), dict))
    if not ok:
        raise DamagedCheckpoint(f"{f} is damaged (not a checkpoint's state: step, config, files)")
    return state


def _needed(state: dict, for_resume: bool, with_ema: bool) -> list[str]:
    """The files this checkpoint must hold for the use at hand. The EMA is needed when the run trained one: without
    it an evaluation would silently score the raw weights and a resume would restart the average."""
    train = state["config"].get("train") or {}
    has_ema = EMA_FILE in state["files"] if "files" in state else (train.get("ema_decay") or 0) > 0
    needed = [MODEL] + ([EMA_FILE] if with_ema and has_ema else [])
    return needed + ([OPTIM, OPTIM_META, STATE_TENSORS] if for_resume else [])


def _check_files(path: Path, state: dict, needed: list[str]):
    listed = state.get("files")
    for name in needed:
        f = path / name
        if not f.is_file():
            kind = "" if listed is None or name in listed else " (this checkpoint was saved without it)"
            raise DamagedCheckpoint(f"{f} is missing{kind}")
        if listed is not None and name in listed and f.stat().st_size != listed[name]:
            raise DamagedCheckpoint(f"{f}: corrupt or unreadable checkpoint file ({f.stat().st_size:,} bytes, "
                                    f"{listed[name]:,} written)")


def _load_safetensors(f: Path) -> dict:
    try:
        return load_file(f)
    except (SafetensorError, OSError, ValueError) as e:
        raise DamagedCheckpoint(f"{f}: corrupt or unreadable checkpoint file ({str(e).splitlines()[0][:120]})") \
            from None


def _load_optimizers(path: Path) -> list:
    flat = _load_safetensors(path / OPTIM)
    try:
        metas = json.loads((path / OPTIM_META).read_text())
        if not isinstance(metas, list) or not metas:
            raise ValueError("not a list of optimizer states")
        return [unflatten_optimizer(flat, m, f"opt{i}") for i, m in enumerate(metas)]
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise DamagedCheckpoint(f"{path / OPTIM_META} is damaged ({type(e).__name__})") from None


def _load_one(path: Path, for_resume: bool, with_ema: bool) -> Checkpoint:
    """One checkpoint directory, whole, or DamagedCheckpoint saying what is missing or broken."""
    state = _read_state(path)
    needed = _needed(state, for_resume, with_ema)
    _check_files(path, state, needed)
    ckpt = Checkpoint(path, _load_safetensors(path / MODEL), state)
    if EMA_FILE in needed or (with_ema and (path / EMA_FILE).exists()):  # --no-ema never reads a bad EMA file
        ckpt.ema = _load_safetensors(path / EMA_FILE)
    if for_resume:
        ckpt.optimizers = _load_optimizers(path)
        ckpt.tensors = _load_safetensors(path / STATE_TENSORS)
        rng = ckpt.tensors.get("rng.torch")
        if rng is None or rng.dtype != torch.uint8:
            raise DamagedCheckpoint(f"{path / STATE_TENSORS} is damaged (no RNG state)")
    return ckpt


def _note(msg: str):
    print(f"trm: note: {msg}", file=sys.stderr)


def load_checkpoint(path: str | Path, with_optimizer: bool = True, with_ema: bool = True, note=_note) -> Checkpoint:
    """A checkpoint directory, or a run directory's newest whole checkpoint (``note`` tells of newer damaged ones).

    ``with_optimizer``: for a resume, which needs every file (optimizer, RNG and carry as well as the weights).
    ``with_ema``: read the EMA weights (required when the run trained them). Raises TrmError in one line."""
    path = Path(path)
    if _is_checkpoint_dir(path):
        return _load_one(path, with_optimizer, with_ema)
    found = checkpoints(path)
    if not found:
        raise TrmError(f"{path}: no checkpoint found (expected model.safetensors or checkpoints/step_*)")
    damaged = []
    for candidate in reversed(found):
        try:
            ckpt = _load_one(candidate, with_optimizer, with_ema)
        except DamagedCheckpoint as e:
            damaged.append(str(e))
            continue
        if damaged:
            note(f"{'; '.join(damaged)}: using the newest whole checkpoint, {candidate.name}")
        return ckpt
    n_older = len(damaged) - 1
    older = f" (and {n_older} older one{'s' * (n_older > 1)} not whole either)" if n_older else ""
    raise TrmError(f"{path}: no whole checkpoint to {'resume' if with_optimizer else 'load'}: {damaged[0]}{older}")
