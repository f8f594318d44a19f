"""`trm train` on a multi-core CPU runs one process per core (gloo), as `torchrun --nproc_per_node N` does.

One process per core beats one process with N threads on small models (measured: 1.94x on 2 cores for the demo
model, docs/benchmarks.md), so that is the default on a CPU whenever the global batch splits evenly over the
processes. The launch goes through PyTorch's own elastic launcher (what torchrun runs); each worker is
``python -m trmlab <the same arguments>`` with the torchrun environment set, which `train/distributed.py` reads.
``--processes 1`` keeps one process; a run started under torchrun or accelerate is never launched again.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import torch

from trmlab.config import Config
from trmlab.errors import TrmError

ENV_PROCESSES = "TRM_PROCESSES"  # the default of --processes (the test suite sets 1)


def cpu_cores() -> int:
    """Cores this process may run on (a container's or taskset's limit, not the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _on_cpu(cfg: Config) -> bool:
    device = cfg.train.device
    return device == "cpu" or (device == "auto" and not torch.cuda.is_available())


def choose_processes(cfg: Config, requested: int = 0) -> tuple[int, str]:
    """(number of processes, why) for ``trm train``; 0 requested = choose."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1, ""  # already a worker of torchrun / accelerate / this launcher
    t = cfg.train
    requested = requested or int(os.environ.get(ENV_PROCESSES, "0") or 0)
    if requested == 1:
        return 1, ""
    if requested > 1:
        if t.batch_size % (requested * t.grad_accum):
            raise TrmError(f"--processes {requested}: train.batch_size {t.batch_size} does not split into "
                           f"{requested} processes x train.grad_accum {t.grad_accum} equal micro-batches")
        return requested, f"{requested} processes (--processes {requested})"
    if not _on_cpu(cfg):
        return 1, ""  # one GPU: one process; several GPUs: torchrun --nproc_per_node N
    cores = cpu_cores()
    if cores < 2 or t.fsdp:
        return 1, ""
    for n in range(cores, 1, -1):
        if t.batch_size % (n * t.grad_accum) == 0:
            return n, f"{n} processes, one per core (gloo); --processes 1 keeps one"
    return 1, (f"one process: train.batch_size {t.batch_size} does not split over {cores} cores "
               f"(x train.grad_accum {t.grad_accum})")


def launch(argv: list[str], n: int) -> int:
    """Run ``python -m trmlab <argv>`` in n local processes; the exit code of the first that failed, else 0."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the workers say what went wrong
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_cores() // n)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n, rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", run_id=f"trm-{os.getpid()}", max_restarts=0,
                          monitor_interval=0.1)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)}
    try:
        elastic_launch(config, sys.executable)("-m", "trmlab", *argv)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        return next((c for c in codes if c > 0), 1)
    except SignalException as e:  # Ctrl-C / SIGTERM: the workers save a checkpoint and stop
        return 128 + int(e.sigval)
    finally:  # the launcher installs its own handlers; a library caller gets its own back
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return 0
