"""`trm bench [preset ...] [key=value ...]`: how fast the one training loop runs here, and how much memory it takes.

    trm bench sudoku                                  # eager, 1 vs 2 processes, memory vs T_recursion and n_loops
    trm bench lm-tiny model.n_embd=512 --compile      # + torch.compile; overrides apply to every preset named
    trm bench gpt-baseline train.batch_size=8 --procs 1 --T --n

Every figure comes from the trainer's own ``train_step`` (optimizer, EMA and all), run in a fresh process per
case so peak memory (RSS on CPU, max allocated on CUDA) is that case's alone. FLOPs are counted, not estimated:
``FlopCounterMode`` over one eager training step; the project's FLOP model (eval/flops.py: Kaplan et al.'s count,
without norms and activations) stands beside them as "model GFLOP/step". MFU divides achieved FLOP/s by the peak
the same processes reach in a large matmul loop (fp32 on CPU; bf16 on CUDA when training in bf16; train/device.py),
measured just before the timed steps, so a machine whose load changes during a bench is compared like with like
(the header also gives the whole machine's peak). The
engine's overhead is its training step against the same blocks applied the same number of times in a plain
loop. The table goes to stdout and is appended, with the machine, load, date and command, to docs/benchmarks.md
when run in a checkout (or to --doc FILE).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from trmlab.config import load_config
from trmlab.eval.flops import matmul_params, step_flops
from trmlab.train.device import (cpu_cores, machine_peak_flops, peak_dtype, peak_memory_mb, pick_device,
                                 processes_peak_flops, reset_peak_memory, sync)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    m = {"cpu": cpu_model(), "cores": cpu_cores(), "torch": torch.__version__, "threads": torch.get_num_threads(),
         "python": platform.python_version(), "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M")}
    if torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name(0)
    return m


def load_average() -> str:
    try:
        return " / ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


@contextlib.contextmanager
def saved_activations(model: torch.nn.Module):
    """Bytes autograd keeps for backward (distinct storages, parameters excluded): the activation memory."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict = {}

    def pack(t):
        with contextlib.suppress(Exception):  # some tensor subclasses have no plain storage
            s = t.untyped_storage()
            if s.data_ptr() not in params:
                seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen


def count_step(trainer) -> tuple[float, float]:
    """(FLOPs, saved activation bytes) of one training step, counted in eager mode."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter, saved_activations(trainer.model) as seen:
        trainer.train_step()
    return float(counter.get_total_flops()), float(sum(seen.values()))


def bare_core_logits(model, batch: dict) -> torch.Tensor:
    """The engine's computation written as a plain loop over the same blocks, the same number of times, with
    no Carry, step or recursion functions: what the engine's overhead is measured against."""
    from trmlab.nn.block import rms_norm
    core, n, T = model.core, model.n_loops, model.T_recursion

    def apply(h, injection):
        h = h + injection
        for block in core.blocks:
            h = block(h)
        return rms_norm(h) if core.pre_norm else h

    x = model.embed(batch)
    y, z = model.y_init.expand_as(x), model.z_init.expand_as(x)
    with torch.no_grad():
        for _ in range(T - 1):
            for _ in range(n):
                z = apply(z, x + y)
            y = apply(y, z)
    for _ in range(n):
        z = apply(z, x + y)
    y = apply(y, z)
    return model.head(y[:, model.prefix_len:])


def engine_overhead(trainer, reps: int = 7) -> dict | None:
    """Median forward+backward time of the engine's step vs the bare loop (same weights, same batch)."""
    from trmlab.recursion import RecursiveModel
    model = trainer.model
    if not isinstance(model, RecursiveModel):
        return None  # a plain GPT has no recursion engine to measure
    batch = trainer._batch(0)
    calls = model.core.n_calls
    engine = model.step(batch).logits
    if model.core.n_calls - calls != model.T_recursion * (model.n_loops + 1):
        raise RuntimeError("the engine applied the core an unexpected number of times")
    if not torch.allclose(engine, bare_core_logits(model, batch), atol=1e-4, rtol=1e-4):
        raise RuntimeError("the bare loop does not compute what the engine computes")
    times: dict = {"engine": [], "bare": []}
    for _ in range(reps):
        for name, fn in (("engine", lambda: model.step(batch).logits), ("bare", lambda: bare_core_logits(model, batch))):
            sync(trainer.device)
            t0 = time.perf_counter()
            fn().float().square().mean().backward()
            sync(trainer.device)
            times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    e, b = statistics.median(times["engine"]), statistics.median(times["bare"])
    return {"engine_ms": 1e3 * e, "bare_ms": 1e3 * b, "overhead_pct": 100 * (e / b - 1)}


def describe(cfg, model) -> str:
    """The resolved model a row measured (presets change; the figures must say what they were taken on)."""
    m, t = cfg.model, cfg.train
    params = sum(p.numel() for p in model.parameters())
    shape = f"d {m.n_embd}, {m.n_layer} layers, {m.core}, {params / 1e6:.2f}M params"
    if getattr(m, "arch", "recursive") == "gpt":
        return f"plain GPT, {shape}"
    return f"{shape}, n_loops {m.n_loops}, T_recursion {m.T_recursion}, N_sup {m.n_sup_train} ({t.supervision})"


def run_case(case: dict) -> dict:
    """Inside a fresh process (or each torchrun rank): build the trainer, warm up, time steps, measure."""
    from trmlab.train.trainer import Trainer
    cfg = load_config(case["preset"], case["overrides"])
    cfg.train.eval_interval = cfg.train.ckpt_interval = 0
    with tempfile.TemporaryDirectory() as run_dir:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(run_dir) / "run", data_root=case["data_root"], quiet=True)
        out = {"world_size": trainer.dist.world_size, "device": str(trainer.device), "setup_s": 0.0}
        first = time.perf_counter()
        for i in range(case["warmup"]):
            trainer.train_step()
            if i == 0:
                out["first_step_s"] = time.perf_counter() - first  # includes compilation
        out["setup_s"] = first - t0
        out["peak_flops"] = processes_peak_flops(trainer.device, peak_dtype(trainer.device, cfg.train.dtype))
        reset_peak_memory(trainer.device)
        times = []
        for _ in range(case["steps"]):
            sync(trainer.device)
            t = time.perf_counter()
            trainer.train_step()
            sync(trainer.device)
            times.append(time.perf_counter() - t)
        out.update(step_s=statistics.median(times), step_s_min=min(times), peak_mem_mb=peak_memory_mb(trainer.device),
                   batch=cfg.train.batch_size, seq_len=cfg.model.seq_len + cfg.model.puzzle_emb_len,
                   task=cfg.task, arch=getattr(cfg.model, "arch", "recursive"), model=describe(cfg, trainer.model),
                   model_flops=step_flops(cfg, **matmul_params(trainer.model)))
        if case.get("count"):
            out["flops"], out["act_bytes"] = count_step(trainer)
        if case.get("overhead"):
            out["overhead"] = engine_overhead(trainer)
        return out


def case_command(case: dict, procs: int, result: Path) -> list[str]:
    """The command that runs one case in fresh process(es); rank 0 writes its result as JSON to ``result``."""
    cmd = [sys.executable, "-m", "trmlab", "bench", "--case", json.dumps(case), "--case-result", str(result)]
    if procs > 1:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs), "--master_addr",
               "127.0.0.1", "--master_port", str(port), *cmd[1:]]
    return cmd


def launch(case: dict, procs: int = 1, timeout: float = 3600) -> dict:
    """Run one case in fresh process(es); its JSON result, or {"error": one line}."""
    env = dict(os.environ)
    if procs > 1:  # share the cores out: one process per core group, not every process on every core
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or procs) // procs))
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        try:
            p = subprocess.run(case_command(case, procs, result), capture_output=True, text=True, timeout=timeout,
                               env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
        if p.returncode == 0 and result.is_file():
            return json.loads(result.read_text())
    err = [ln for ln in (p.stderr + p.stdout).splitlines() if ln.strip()]
    trm_err = [ln for ln in err if "trm: error:" in ln]
    return {"error": (trm_err or err or [f"exit code {p.returncode}"])[-1].strip()[:200]}


def throughput(r: dict, flops: float | None) -> dict:
    s = r["step_s"]
    row = {"step ms": 1e3 * s, "samples/s": r["batch"] / s}
    if r["task"] == "lm":
        row["tokens/s"] = r["batch"] * r["seq_len"] / s
    if flops:
        row["GFLOP/step"] = flops / 1e9
        if r.get("model_flops"):   # the FLOP model's count beside the counted one (eval/flops.py)
            row["model GFLOP/step"] = r["model_flops"] / 1e9
        row["GFLOP/s"] = flops / s / 1e9
        row["peak GFLOP/s"] = r["peak_flops"] / 1e9
        row["MFU %"] = 100 * flops / s / r["peak_flops"]
    row["peak MB"] = r["peak_mem_mb"]
    return row


def fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.3f}"
    return str(v)


def table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def spread_pct(values: list[float]) -> float:
    return 100 * (max(values) - min(values)) / min(values) if values and min(values) > 0 else 0.0


class Bench:
    """Runs the cases of one ``trm bench`` invocation and collects the report's sections."""

    def __init__(self, args):
        self.args, self.sections = args, []
        self.device = pick_device()

    def launch(self, label: str, case: dict, procs: int = 1) -> dict:
        """``launch`` with a progress line on stderr (a full bench takes minutes)."""
        r = launch(case, procs)
        done = r["error"] if "error" in r else f"{1e3 * r['step_s']:,.0f} ms/step"
        print(f"  {label}: {done}", file=sys.stderr, flush=True)
        return r

    def case(self, preset: str, extra: list[str] = (), **flags) -> dict:
        # eager unless a case asks for compile (the presets' long runs would otherwise compile under auto)
        return {"preset": preset, "overrides": ["train.compile=false", *self.args.overrides, *extra],
                "warmup": self.args.warmup,
                "steps": self.args.steps, "data_root": self.args.data_root, **flags}

    def preset(self, name: str):
        a = self.args
        base = self.launch("eager, 1 process", self.case(name, count=True, overhead=a.overhead))
        if "error" in base:
            self.sections.append((f"{name}: skipped", f"{base['error']}"))
            return
        flops = base["flops"]
        rows = [{"case": "eager, 1 process", **throughput(base, flops)}]
        variants = [("compile, 1 process", ["train.compile=true"], 1)] if a.compile else []
        variants += [("bf16 autocast, 1 process", ["train.dtype=bfloat16"], 1)] if a.bf16 else []
        variants += [(f"eager, {p} processes", [], p) for p in a.procs if p > 1]
        for label, extra, procs in variants:
            r = self.launch(label, self.case(name, extra), procs)
            rows.append({"case": label, **(throughput(r, flops) if "error" not in r else {"step ms": r["error"]})})
            if "first_step_s" in r and "compile" in label:
                rows[-1]["first step s"] = r["first_step_s"]
        head = (f"{name} ({base['task']}: {base['model']}; batch {base['batch']}, seq {base['seq_len']}, "
                f"{base['device']}; FLOPs counted per training step)")
        self.sections.append((head, table(rows)))
        if base.get("overhead"):
            o = base["overhead"]
            self.sections.append((f"{name}: engine overhead over the bare core (target < 10 %)",
                                  table([{"engine fwd+bwd ms": o["engine_ms"], "bare loop ms": o["bare_ms"],
                                          "overhead %": o["overhead_pct"]}])))
        if base["arch"] != "gpt":
            for key, values in (("T_recursion", a.T), ("n_loops", a.n)):
                if values:
                    self.sweep(name, key, values)

    def sweep(self, name: str, key: str, values: list[int]):
        rows, peaks, acts = [], [], []
        for v in values:
            r = self.launch(f"{key}={v}", self.case(name, [f"model.{key}={v}"], count=True))
            if "error" in r:
                rows.append({key: v, "step ms": r["error"]})
                continue
            rows.append({key: v, "step ms": 1e3 * r["step_s"], "GFLOP/step": r["flops"] / 1e9,
                         "MFU %": 100 * r["flops"] / r["step_s"] / r["peak_flops"], "peak MB": r["peak_mem_mb"],
                         "saved activations MB": r["act_bytes"] / 2**20})
            peaks.append(r["peak_mem_mb"])
            acts.append(r["act_bytes"])
        note = (f"peak memory spread {spread_pct(peaks):.1f} %, saved activations spread {spread_pct(acts):.1f} %"
                + (" (target for T_recursion: flat within 5 %)" if key == "T_recursion" else ""))
        self.sections.append((f"{name}: memory vs {key}", table(rows) + "\n\n" + note))

    def run(self) -> str:
        a = self.args
        t_dtype = next((o.split("=", 1)[1] for o in a.overrides if o.startswith("train.dtype=")), "float32")
        dtype = peak_dtype(self.device, t_dtype)
        m, load0 = machine(), load_average()
        peak, self.peak_note = machine_peak_flops(self.device, dtype)
        for name in a.presets:
            print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
            self.preset(name)
        return self.report(m, peak, dtype, load0)

    def report(self, m: dict, peak: float, dtype: torch.dtype, load0: str) -> str:
        a = self.args
        hw = f"GPU {m['gpu']}, " if "gpu" in m else ""
        lines = [f"## trm bench, {m['date']}",
                 "",
                 f"Machine: {hw}CPU {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), "
                 f"Python {m['python']}. Load average (1/5/15 min) at start {load0}, at end {load_average()}.",
                 f"Measured {str(dtype).replace('torch.', '')} matmul peak of the machine: {self.peak_note}. "
                 f"MFU is against the peak of each case's own processes and threads, measured just before its "
                 f"timed steps (column 'peak GFLOP/s'). Steps: {a.warmup} warmup, median of {a.steps} timed.",
                 "",
                 f"Command: `{a.command}`"]
        for head, body in self.sections:
            lines += ["", f"### {head}", "", body]
        return "\n".join(lines) + "\n"
