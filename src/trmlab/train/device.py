"""The machine a run measures itself on: which device, how much memory it peaked at, how many FLOP/s it can reach.

One place for the three, so the trainer, ``trm generate``, ``trm bench`` and the LM evaluation pick devices and
report memory and MFU the same way:
  pick_device          ``auto`` (the process's GPU under torchrun, then optionally Apple's MPS, else the CPU), or
                       a named device, refused in one line when it is not on this machine
  peak_memory_mb       allocated tensors on CUDA, MPS driver memory, the process's peak RSS on CPU
  matmul_peak_flops    the best FLOP/s of large matmuls here and now: what MFU is measured against
"""

from __future__ import annotations

import contextlib
import os
import resource
import sys
import time

import torch

from trmlab.errors import TrmError


# ------------------------------------------------------------------------------------------ device choice
def pick_device(name: str = "auto", option: str = "train.device", auto_mps: bool = False) -> torch.device:
    """The device ``name`` means here. ``auto``: CUDA (device LOCAL_RANK, so each torchrun process gets its own
    GPU), then MPS when ``auto_mps`` (training stays off MPS by default: it has no float64 for stable-max), else
    the CPU. A named device must exist: torch would only notice at the first tensor, with a traceback.
    ``option`` names the setting in the error (train.device, --device)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if auto_mps and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise TrmError(f"{option} {name!r} is not a device; use auto, cpu, cuda or mps") from None
    present = {"cpu": True, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not present.get(device.type, False):
        backend = {"cuda": "CUDA", "mps": "MPS"}.get(device.type, device.type)
        raise TrmError(f"{option} {name!r} is not available here: {backend} is not available on this machine; "
                       f"use cpu (or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise TrmError(f"{option} {name!r} is not available here: {torch.cuda.device_count()} CUDA device(s)")
    return device


def sync(device: torch.device):
    """Wait for the device's queued work, so a timer measures it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, which a scheduler or taskset may narrow)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# ------------------------------------------------------------------------------------------ peak memory
def reset_peak_memory(device: torch.device):
    """Start the peak-memory count afresh (CUDA only: a process's peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB: allocated tensors on CUDA, the MPS driver's memory, else the whole process's peak RSS
    (so Python and torch are in it)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024   # macOS reports bytes, Linux KiB


def peak_memory_kind(device: torch.device) -> str:
    """What ``peak_memory_mb`` measured on ``device``, for the line that reports it."""
    return {"cuda": "peak CUDA memory allocated", "mps": "MPS driver memory"}.get(device.type, "peak process RSS")


# ------------------------------------------------------------------------------------------ peak FLOP/s
def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, seconds: float = 2.0,
                      n: int = 0) -> float:
    """The best FLOP/s of repeated n x n matmuls over ~``seconds``: the peak MFU is measured against."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = a @ b  # warm up the kernels and the thread pool
    best, spent = 0.0, 0.0
    while spent < seconds:
        sync(device)
        t0 = time.perf_counter()
        for _ in range(4):
            c = torch.matmul(a, b, out=c)
        sync(device)
        dt = time.perf_counter() - t0
        spent += dt
        best = max(best, 4 * 2 * n ** 3 / dt)
    return best


@contextlib.contextmanager
def num_threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def machine_peak_flops(device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """The whole machine's peak: on CPU the larger of all threads together and cores x one thread (a busy machine
    starves multi-threaded matmuls first). With a line saying how it was got."""
    peak = matmul_peak_flops(device, dtype)
    if device.type != "cpu":
        return peak, f"{peak / 1e9:,.1f} GFLOP/s"
    cores = cpu_cores()
    with num_threads(1):
        one = matmul_peak_flops(device, dtype)
    return max(peak, cores * one), (f"{max(peak, cores * one) / 1e9:,.1f} GFLOP/s (all {torch.get_num_threads()} "
                                    f"threads together {peak / 1e9:,.1f}; one thread {one / 1e9:,.1f} x {cores} cores)")


def peak_dtype(device: torch.device, train_dtype: str) -> torch.dtype:
    """The dtype the peak is measured in: fp32 on CPU (its fast path); on CUDA the dtype the matmuls run in."""
    if device.type == "cuda" and train_dtype in ("bfloat16", "float16"):
        return getattr(torch, train_dtype)
    return torch.float32


def processes_peak_flops(device: torch.device, dtype: torch.dtype, seconds: float = 1.0) -> float:
    """The matmul peak of the cores this run's processes use, now: summed over ranks, which measure together."""
    spread = torch.distributed.is_available() and torch.distributed.is_initialized()
    if spread:
        torch.distributed.barrier()
    peak = matmul_peak_flops(device, dtype, seconds=seconds)
    if spread:
        t = torch.tensor([peak], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        peak = float(t.item())
    return peak
