"""Process-group setup for data parallel training (torchrun / accelerate launch): gloo on CPU, NCCL on GPU.

Gradients are averaged with an explicit all-reduce after backward rather than a DDP wrapper, because the summed
deep-supervision mode runs several forwards before its one backward (as the official TRM trainer also does).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from trmlab.errors import TrmError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str = "auto") -> Dist:
    """Join the process group when launched by torchrun/accelerate (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    want_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise TrmError("NCCL/CUDA requested but CUDA is not available; use train.device=cpu (gloo)")
    if want_cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return Dist(rank, world, local, device)


def wrap(model: torch.nn.Module, d: Dist):
    """The callable used for forward passes (the model itself; gradients are synced in ``sync_grads``)."""
    return model


def try_compile(fn, log):
    try:
        return torch.compile(fn)
    except Exception as e:  # compile support varies by platform; eager always works
        log(f"torch.compile unavailable ({type(e).__name__}: {e}); running eager")
        return fn


def sync_grads(model: torch.nn.Module, d: Dist):
    if d.world_size == 1:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= d.world_size
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def barrier(d: Dist):
    if d.world_size > 1:
        dist.barrier()


def any_true(flag: bool, d: Dist) -> bool:
    """True on every rank if it is true on any (so all ranks stop at the same step)."""
    if d.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=d.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_carry(tensors: dict, d: Dist) -> dict:
    """Concatenate every rank's carry slice (rank order) so a checkpoint holds the global carry."""
    out = {}
    for k, v in tensors.items():
        if not k.startswith("carry."):
            out[k] = v
            continue
        parts = [torch.empty_like(v) for _ in range(d.world_size)]
        dist.all_gather(parts, v.contiguous())
        out[k] = torch.cat(parts)
    return out


def shard_carry(carry: dict, d: Dist) -> dict:
    if d.world_size == 1:
        return carry
    return {k: v.chunk(d.world_size)[d.rank] for k, v in carry.items()}
