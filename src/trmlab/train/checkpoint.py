"""The one checkpoint format: safetensors for tensors, JSON for everything else, written atomically.

    runs/<name>/checkpoints/step_<N>/
        model.safetensors   weights
        ema.safetensors     EMA weights (when train.ema_decay > 0)
        optim.safetensors   optimizer tensors (flattened), with optim.json for their non-tensor state
        state.safetensors   run tensors: RNG states, the deep-supervision carry
        state.json          step, data position, metrics, config
A checkpoint directory is written under a temporary name and renamed, so it either exists whole or not at all.
Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trmlab.errors import TrmError


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


def save_checkpoint(run_dir: Path, step: int, model_sd: dict, state: dict, ema_sd: dict | None = None,
                    optimizer_sds: list | None = None, tensors: dict | None = None, keep: int = 2) -> Path:
    ckpt_dir = Path(run_dir) / "checkpoints"
    final = ckpt_dir / f"step_{step:07d}"
    tmp = ckpt_dir / f".tmp_step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file(_tensors(model_sd), tmp / "model.safetensors")
    if ema_sd is not None:
        save_file(_tensors(ema_sd), tmp / "ema.safetensors")
    if optimizer_sds:
        flat, metas = {}, []
        for i, sd in enumerate(optimizer_sds):
            t, m = flatten_optimizer(sd, f"opt{i}")
            flat.update(t)
            metas.append(m)
        save_file(_tensors(flat), tmp / "optim.safetensors")
        (tmp / "optim.json").write_text(json.dumps(metas))
    save_file(_tensors(tensors or {}), tmp / "state.safetensors")
    (tmp / "state.json").write_text(json.dumps(dict(state, step=step), indent=2, default=str))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _prune(ckpt_dir, keep)
    return final


def _prune(ckpt_dir: Path, keep: int):
    if keep <= 0:
        return
    for old in sorted(ckpt_dir.glob("step_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((Path(run_dir) / "checkpoints").glob("step_*"))
    return found[-1] if found else None


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (its latest checkpoint)."""
    path = Path(path)
    if (path / "model.safetensors").exists():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise TrmError(f"{path}: no checkpoint found (expected model.safetensors or checkpoints/step_*)")
    return latest


def _load_safetensors(f: Path) -> dict:
    try:
        return load_file(f)
    except (SafetensorError, OSError, ValueError) as e:
        raise TrmError(f"{f}: corrupt or unreadable checkpoint file ({str(e).splitlines()[0][:120]})") from None


def load_checkpoint(path: str | Path, with_optimizer: bool = True, with_ema: bool = True) -> Checkpoint:
    path = resolve_checkpoint(path)
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise TrmError(f"{path / 'state.json'}: missing or corrupt ({type(e).__name__})") from None
    ckpt = Checkpoint(path, _load_safetensors(path / "model.safetensors"), state)
    if with_ema and (path / "ema.safetensors").exists():  # `--no-ema` must work when only the EMA file is bad
        ckpt.ema = _load_safetensors(path / "ema.safetensors")
    if with_optimizer and (path / "optim.safetensors").exists():
        flat = _load_safetensors(path / "optim.safetensors")
        metas = json.loads((path / "optim.json").read_text())
        ckpt.optimizers = [unflatten_optimizer(flat, m, f"opt{i}") for i, m in enumerate(metas)]
    if (path / "state.safetensors").exists():
        ckpt.tensors = _load_safetensors(path / "state.safetensors")
    return ckpt
