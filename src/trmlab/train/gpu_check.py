"""`trm bench --gpu-check`: every GPU path of the training stack, exercised and timed in one command.

On a CUDA machine it runs, in about 5-8 minutes: the CUDA-marked tests; a `sudoku-paper` training step (the paper's
model: hidden 512, n=6, T=3, 16 supervision steps) in fp32 and bf16, eager and compiled; a one-process NCCL
init and all-reduce; a step with FSDP2 on one GPU; and the peak memory of one step at the paper's batch of 768.
It prints one table (check, result, figure). Data is generated here (no download): the shapes are the paper's,
the puzzles the project's generator's.

Each check is independent: a failure is a row that says so, and the others still run. ``device="cpu"`` runs the
same checks with gloo for NCCL and a small model, which is how the test suite exercises this module.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trmlab.config import load_config
from trmlab.errors import TrmError
from trmlab.train.device import peak_memory_mb, reset_peak_memory, sync

PAPER_BATCH = 768
# the paper's Sudoku model on generated puzzles (the paper's data is a download); eval and checkpoints off
PAPER = ["data.source=generate", "data.n_train=64", "data.n_test=8", "data.num_aug=0", "train.eval_interval=0",
         "train.ckpt_interval=0", "train.warmup_steps=1"]
# what the CPU run of the check uses instead: the same stack at a size a test can afford
SMALL = ["model.n_embd=32", "model.n_head=2", "model.n_loops=1", "model.T_recursion=2", "model.n_sup_train=2",
         "model.puzzle_emb_len=1"]


def _trainer(overrides: list[str], work: Path, device: str):
    from trmlab.train.trainer import Trainer
    cfg = load_config("sudoku-paper", [*PAPER, *overrides, f"train.device={device}"])
    return Trainer(cfg, work / f"run{len(list(work.glob('run*')))}", data_root=work / "data", quiet=True)


def time_steps(overrides: list[str], work: Path, device: str, steps: int = 3) -> str:
    """Median step time after a warm-up step (which includes compilation), and the peak memory."""
    trainer = _trainer(overrides, work, device)
    trainer.train_step()
    reset_peak_memory(trainer.device)
    times = []
    for _ in range(steps):
        sync(trainer.device)
        t = time.perf_counter()
        trainer.train_step()
        sync(trainer.device)
        times.append(time.perf_counter() - t)
    return f"{1e3 * statistics.median(times):,.1f} ms/step, peak {peak_memory_mb(trainer.device):,.0f} MB"


@contextlib.contextmanager
def one_process_group(backend: str):
    """A process group of this process alone (NCCL's and FSDP2's code paths run; nothing is split), undone after."""
    import socket

    import torch.distributed as dist
    saved = {k: os.environ.get(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group(backend)
    try:
        yield dist
    finally:
        dist.destroy_process_group()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def _backend(device: str) -> str:
    return "nccl" if device == "cuda" else "gloo"


def collective(device: str) -> str:
    """A one-process NCCL (gloo on CPU) group and an all-reduce through it."""
    t = time.perf_counter()
    with one_process_group(_backend(device)) as dist:
        x = torch.ones(1024, device=device)
        dist.all_reduce(x)
        sync(x.device)
        if x.sum().item() != 1024:
            raise RuntimeError(f"all_reduce over one process changed the tensor (sum {x.sum().item()})")
    return f"{_backend(device)} init + all_reduce {1e3 * (time.perf_counter() - t):.0f} ms"


def fsdp_step(overrides: list[str], work: Path, device: str) -> str:
    """A training step with parameters sharded by FSDP2 over a one-process group."""
    with one_process_group(_backend(device)):
        return time_steps([*overrides, "train.fsdp=true"], work, device, steps=2)


def cuda_tests() -> str:
    tests = Path(__file__).resolve().parents[3] / "tests"
    if not tests.is_dir():
        return "skipped: no tests/ folder beside this install"
    p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(tests)], capture_output=True,
                       text=True, timeout=300)
    last = [ln for ln in p.stdout.splitlines() if ln.strip()][-1:] or ["no output"]
    if p.returncode not in (0, 5):
        raise RuntimeError(last[0])
    return last[0] if p.returncode == 0 else "no CUDA-marked tests collected"


def checks(device: str, small: bool, compiled_too: bool = True) -> list[tuple[str, callable]]:
    base = SMALL if small else []
    batch = ["train.batch_size=8"] if small else ["train.batch_size=64"]
    paper_batch = [f"train.batch_size={16 if small else PAPER_BATCH}"]
    work = Path(tempfile.mkdtemp(prefix="trm-gpu-check-"))
    rows = [("CUDA-marked tests", cuda_tests)] if device == "cuda" else []
    for dtype in ("float32", "bfloat16"):
        for compiled in (False, True) if compiled_too else (False,):
            name = f"sudoku-paper step, {dtype}, {'compiled' if compiled else 'eager'}, batch {batch[0].split('=')[1]}"
            o = [*base, *batch, f"train.dtype={dtype}", f"train.compile={str(compiled).lower()}"]
            rows.append((name, lambda o=o: time_steps(o, work, device)))
    rows.append(("1-process NCCL" if device == "cuda" else "1-process gloo", lambda: collective(device)))
    rows.append(("FSDP2, one device", lambda: fsdp_step([*base, *batch], work, device)))
    rows.append((f"memory at the paper's batch ({paper_batch[0].split('=')[1]}), bf16",
                 lambda: time_steps([*base, *paper_batch, "train.dtype=bfloat16"], work, device, steps=1)))
    return rows


def run_gpu_check(device: str = "cuda", small: bool = False, compiled_too: bool = True, echo=print) -> list[dict]:
    """Run every check; a row per check: {"check", "ok", "result"}."""
    if device == "cuda" and not torch.cuda.is_available():
        raise TrmError("the GPU check needs a CUDA device and this machine has none (docs/benchmarks.md: GPU "
                       "figures are unmeasured until it runs on one)")
    rows = []
    for name, check in checks(device, small, compiled_too):
        t = time.perf_counter()
        try:
            result, ok = check(), True
        except Exception as e:  # one failing path must not hide the others: report it as a row
            result, ok = f"FAILED: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", False
        rows.append({"check": name, "ok": ok, "result": result, "seconds": time.perf_counter() - t})
        echo(f"  {'ok  ' if ok else 'FAIL'} {name}: {result}")
    return rows


def table(rows: list[dict]) -> str:
    width = max(len(r["check"]) for r in rows)
    lines = [f"{'check':<{width}}  {'':4}  result", "-" * (width + 40)]
    lines += [f"{r['check']:<{width}}  {'ok' if r['ok'] else 'FAIL':4}  {r['result']}" for r in rows]
    return "\n".join(lines)
