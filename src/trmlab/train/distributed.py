"""Scale-out and speed in one place: the process group, data-parallel gradients, FSDP2, compile, recomputation.

Launch several processes with PyTorch's own launchers; the trainer reads the env vars they set:
    torchrun --nproc_per_node 2 -m trmlab train sudoku train.device=cpu          # gloo on CPU
    torchrun --nproc_per_node 8 -m trmlab train lm-A train.dtype=bfloat16        # NCCL, one GPU per process
    accelerate launch --num_processes 8 -m trmlab train lm-A                     # same env vars, same code path
Every rank builds the same model from the same seed and takes its slice of the same global batch (the tasks'
``batch(..., rank, world_size)``), so N processes compute what one process computes on the whole batch.
Gradients are averaged with one explicit all-reduce after backward rather than a DDP wrapper, because the summed
deep-supervision mode runs several forwards (and the recursion many core calls) before its one backward, which
DDP's per-forward bookkeeping does not expect; the official TRM trainer does the same. With ``train.fsdp`` the
parameters, gradients and optimizer state are sharded instead (FSDP2 ``fully_shard``: one unit per core block
plus the root), for models that do not fit one device; checkpoints then gather full tensors, so a sharded run's
checkpoint is the same format as any other.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from trmlab.errors import TrmError


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    fsdp: bool = False          # parameters are DTensors sharded over the ranks (train.fsdp)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device_name: str = "auto") -> Dist:
    """Join the process group when launched by torchrun/accelerate (WORLD_SIZE > 1); else a single process.

    NCCL with one GPU per process (LOCAL_RANK) when CUDA is asked for or ``auto`` finds it; gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if want_cuda and not torch.cuda.is_available():
        raise TrmError(f"train.device={device_name} asks for CUDA/NCCL but CUDA is not available here; "
                       f"use train.device=cpu (gloo)")
    if world == 1:
        return Dist()
    if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
        raise TrmError("WORLD_SIZE > 1 but RANK/MASTER_ADDR are not set: launch with torchrun or accelerate launch")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    if want_cuda:
        if local >= torch.cuda.device_count():
            raise TrmError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} GPUs: lower --nproc_per_node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device_name not in ("auto", "cpu"):
        raise TrmError(f"train.device={device_name} is not supported with several processes (cpu or cuda)")
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo", device_id=device if want_cuda else None)
    return Dist(rank, world, local, device)


def print0(*args, **kwargs):
    """print on rank 0 only (nanochat's helper), for scripts outside the trainer."""
    if int(os.environ.get("RANK", 0)) == 0:
        print(*args, **kwargs)


def check_batch(batch_size: int, d: Dist, grad_accum: int = 1):
    """The global batch must split evenly into world_size x grad_accum equal micro-batches."""
    parts = d.world_size * grad_accum
    if batch_size % parts:
        raise TrmError(f"train.batch_size ({batch_size}) must be divisible by processes x train.grad_accum "
                       f"({d.world_size} x {grad_accum} = {parts}): every micro-batch has the same size")


def micro_slices(n: int, grad_accum: int) -> list[slice]:
    """``grad_accum`` equal row slices of a local batch of ``n`` rows (check_batch made them equal)."""
    per = n // grad_accum
    return [slice(i * per, (i + 1) * per) for i in range(grad_accum)]


@contextlib.contextmanager
def main_first(d: Dist):
    """Rank 0 runs the block first (builds a dataset cache), the others after it, so they never race on files."""
    if not d.is_main:
        barrier(d)
    yield
    if d.is_main:
        barrier(d)


# ------------------------------------------------------------------------------------------ model preparation
def prepare(model: nn.Module, ema_model: nn.Module | None, d: Dist, t, log) -> nn.Module:
    """Apply the speed/memory options of TrainConfig ``t`` to ``model`` (and its EMA twin); returns the callable
    the trainer runs forward passes with. Build the optimizer after this: FSDP replaces the parameters."""
    if getattr(t, "activation_checkpointing", False):
        checkpoint_blocks(model)
    if wants_compile(t, next(model.parameters()).device) and (n := compile_blocks(model, log)):
        run = f"a {t.time_budget_s:g} s budget" if t.time_budget_s else f"{t.steps} steps"
        why = "train.compile=true" if t.compile == "true" else f"train.compile=auto: {run}; =false to skip"
        log(f"torch.compile: the core's {n} blocks ({why})")
    if getattr(t, "fsdp", False):
        shard(model, ema_model, d)
    return model


def _blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of the shared core: the unit of compilation, recomputation and sharding."""
    core = getattr(model, "core", None)
    return list(getattr(core, "blocks", []))


def _checkpointed_class(cls: type) -> type:
    """A subclass of ``cls`` whose forward is recomputed in backward (only when grad is on: the T-1 no-grad
    recursions keep no activations anyway). A class swap, not a wrapper, so parameter names, state dicts and
    deepcopies (EMA) stay exactly those of the plain model."""

    def forward(self, *args, **kwargs):
        if torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(super(sub, self).forward, *args, use_reentrant=False, **kwargs)
        return super(sub, self).forward(*args, **kwargs)

    sub = type(f"Checkpointed{cls.__name__}", (cls,), {"forward": forward, "__module__": cls.__module__})
    return sub


_CHECKPOINTED: dict[type, type] = {}


def checkpoint_blocks(model: nn.Module) -> int:
    """Activation checkpointing of the core's blocks in the grad-carrying recursion. Returns how many blocks."""
    blocks = _blocks(model)
    for b in blocks:
        if type(b) not in _CHECKPOINTED.values():
            b.__class__ = _CHECKPOINTED.setdefault(type(b), _checkpointed_class(type(b)))
    return len(blocks)


COMPILE_MIN_STEPS = 200  # compiling costs 5-10 s on a CPU and saves 5-30 % per step (docs/benchmarks.md)


def wants_compile(t, device: torch.device) -> bool:
    """train.compile: true / false, or auto: compile a run long enough to pay for it (a time budget counts as
    long), on CPU or CUDA (MPS's inductor backend is not mature enough to be a default)."""
    if t.compile != "auto":
        return t.compile == "true"
    long_run = t.steps >= COMPILE_MIN_STEPS and (t.time_budget_s == 0 or t.time_budget_s >= 120)
    return long_run and device.type in ("cpu", "cuda")


def compile_available(log=print) -> bool:
    """Compile and run (forward and backward) a tiny function: catches a missing C++ compiler or Triton up
    front, with one clear line, instead of a long traceback in the middle of the first training step."""
    try:
        x = torch.randn(8, requires_grad=True)
        torch.compile(lambda v: (v * 2).sin().sum())(x).backward()
        return True
    except Exception as e:  # compile support varies by platform; eager always works
        msg = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        log(f"torch.compile unavailable here ({type(e).__name__}: {msg}); running eager")
        return False


def compile_blocks(model: nn.Module, log=print) -> int:
    """torch.compile the forward of each core block (names and state dicts unchanged). The recursion loop stays
    in Python: the blocks are where the FLOPs are, a block graph compiles in seconds (a whole unrolled recursion
    would take minutes), and the engine's call counter (``ReasoningCore.n_calls``) stays exact. Only ``forward``
    is compiled, so module hooks (FSDP2's all-gathers) run eagerly around it. Returns how many forwards were
    compiled (0: this platform cannot compile, and training runs eager)."""
    blocks = _blocks(model) or [model]
    if not compile_available(log):
        return 0
    # One graph per block instance, grad mode and shape: a core of many blocks must not hit the recompile limit.
    cfg = torch._dynamo.config
    cfg.recompile_limit = max(cfg.recompile_limit, 4 * len(blocks) + 8)
    for b in blocks:
        b.forward = torch.compile(b.forward)
    return len(blocks)


def shard(model: nn.Module, ema_model: nn.Module | None, d: Dist):
    """FSDP2: one ``fully_shard`` unit per core block plus the root, for the model and its EMA twin."""
    if d.world_size < 2 and not dist.is_initialized():  # a one-process group (the GPU check) may shard too
        raise TrmError("train.fsdp=true shards over several processes: launch with torchrun --nproc_per_node N")
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method
    except ImportError as e:
        raise TrmError(f"train.fsdp=true needs FSDP2 (torch.distributed.fsdp.fully_shard): {e}") from None
    mesh = init_device_mesh(d.device.type, (d.world_size,))
    for m in (model, ema_model):
        if m is None:
            continue
        for b in _blocks(m):
            fully_shard(b, mesh=mesh)
        fully_shard(m, mesh=mesh)
        # The engine calls model.step() (and predict/decode call step), not model(): hook it like forward.
        for name in ("step",):
            if hasattr(m, name):
                register_fsdp_forward_method(m, name)
    d.fsdp = True


# ------------------------------------------------------------------------------------------ gradients
@contextlib.contextmanager
def accumulating(model: nn.Module, d: Dist, last: bool):
    """Backward of a micro-batch; under FSDP only the last one reduce-scatters (the others accumulate)."""
    if d.fsdp:
        model.set_requires_gradient_sync(last)
    yield


def sync_grads(model: nn.Module, d: Dist):
    """Average gradients over ranks: one all-reduce of all gradients flattened (FSDP has reduced them already)."""
    if d.world_size == 1 or d.fsdp:
        return
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= d.world_size
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def mean_over_ranks(values: dict, d: Dist) -> dict:
    """Global means of per-rank scalar means (equal shard sizes), in one all-reduce; same on every rank."""
    numeric = [k for k, v in values.items() if isinstance(v, (int, float)) or torch.is_tensor(v)]
    if d.world_size == 1 or not numeric:
        return values
    t = torch.tensor([float(values[k]) for k in numeric], dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return {**values, **dict(zip(numeric, (t / d.world_size).tolist()))}


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


# ------------------------------------------------------------------------------------------ checkpoints
def gather_carry(tensors: dict, d: Dist) -> dict:
    """Concatenate every rank's carry slice (rank order) so a checkpoint holds the global carry.

    gloo cannot all-gather bool tensors (the ACT ``halted`` mask): they travel as uint8.
    """
    out = {}
    for k, v in tensors.items():
        if not k.startswith("carry."):
            out[k] = v
            continue
        send = v.to(torch.uint8) if v.dtype == torch.bool else v
        parts = [torch.empty_like(send) for _ in range(d.world_size)]
        dist.all_gather(parts, send.contiguous())
        out[k] = torch.cat(parts).to(v.dtype)
    return out


def shard_carry(carry: dict, d: Dist) -> dict:
    """This rank's rows of a global carry (the inverse of gather_carry for the same world size)."""
    if d.world_size == 1:
        return carry
    for k, v in carry.items():
        if len(v) % d.world_size:
            raise TrmError(f"checkpoint carry '{k}' has {len(v)} rows, not divisible by {d.world_size} processes")
    return {k: v.chunk(d.world_size)[d.rank].clone() for k, v in carry.items()}


def _full(v):
    """A full tensor from a DTensor shard (a collective: every rank calls it in the same order)."""
    return v.full_tensor() if hasattr(v, "full_tensor") else v


def full_state_dict(sd: dict) -> dict:
    """A state dict with full tensors on every rank (identity without FSDP)."""
    return {k: _full(v) for k, v in sd.items()}


def full_optimizer_state(opt: torch.optim.Optimizer) -> dict:
    sd = opt.state_dict()
    sd["state"] = {pid: {k: _full(v) for k, v in st.items()} for pid, st in sd["state"].items()}
    return sd


def _like(full: torch.Tensor, target):
    """``full`` laid out like ``target``: this rank's shard when target is a DTensor."""
    if not hasattr(target, "device_mesh"):
        return full
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(full.to(target.device, target.dtype), target.device_mesh, target.placements,
                             src_data_rank=None)  # every rank holds the full tensor: slice locally, no traffic


def load_full_state_dict(module: nn.Module, sd: dict):
    """Load a full (gathered) state dict into a plain or FSDP-sharded module."""
    own = module.state_dict()
    module.load_state_dict({k: _like(v, own[k]) if k in own else v for k, v in sd.items()})


def load_full_optimizer_state(opt: torch.optim.Optimizer, sd: dict):
    """Load an optimizer state saved from full tensors; under FSDP each state tensor is resharded like its param."""
    params = [p for g in opt.param_groups for p in g["params"]]
    state = {}
    for pid, st in sd["state"].items():
        p = params[int(pid)]
        state[pid] = {k: _like(v, p) if torch.is_tensor(v) and v.shape == p.shape else v for k, v in st.items()}
    opt.load_state_dict({**sd, "state": state})
