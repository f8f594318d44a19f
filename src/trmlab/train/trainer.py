"""The one training loop, for every task: deep supervision, ACT, EMA, evaluation, checkpoints, exact resume.

Deep supervision comes in two modes (``train.supervision``, defined in train/supervision.py):
  per_step  the paper's: every optimizer step is ONE supervision step of a carried batch; halted samples are
            replaced by fresh ones (``refill`` / ``halts``).
  summed    seeds 000/002: each batch runs all n_sup_train steps; one backward of ``summed_objective``.
Everything random in a step is a function of (seed, step), so a resumed run replays the exact same batches.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from tqdm.auto import tqdm

from trmlab.config import Config, from_dict, save_config
from trmlab.errors import Interrupted, TrmError
from trmlab.eval.flops import matmul_params
from trmlab.recursion import count_parameters
from trmlab.train import distributed
from trmlab.train.checkpoint import Checkpoint, checkpoints, load_checkpoint, save_checkpoint
from trmlab.train.curriculum import curriculum_depth
from trmlab.train.device import pick_device
from trmlab.train.ema import EMA
from trmlab.train.loggers import make_logger, write_summary
from trmlab.train.optim import build_optimizers, set_lr
from trmlab.train.run_dir import check_is_run, check_place, remove_run
from trmlab.train.supervision import halts, refill, summed_objective


class Trainer:
    """Train ``cfg`` into ``run_dir``. ``Trainer(cfg, "runs/x").fit()`` returns the summary dict."""

    def __init__(self, cfg: Config, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
                 data_root: str | Path = "data", quiet: bool = False, task=None):
        """``task``: the task object (tasks/base.py); default: the one registered under ``cfg.task``."""
        self.cfg, self.run_dir, self.quiet = cfg, Path(run_dir), quiet
        self.dist = distributed.setup(cfg.train.device)
        distributed.check_batch(cfg.train.batch_size, self.dist, cfg.train.grad_accum)
        self.device = self.dist.device if self.dist.world_size > 1 else pick_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self._prepare_run_dir(resume, overwrite, data_root)  # refuses before any work; deletes nothing yet
        torch.manual_seed(cfg.train.seed)
        if task is None:
            from trmlab.tasks import get_task  # the registry; the trainer itself knows no task
            task = get_task(cfg.task)
        self.task = task
        with distributed.main_first(self.dist):  # rank 0 builds the dataset cache, the others then read it
            self.data = self.task.prepare(cfg, data_root)
        if cfg.train.epochs:
            self._steps_from_epochs()
        self.sampler = self.task.sampler(self.data, cfg.train.seed)
        self.model = self.task.build_model(cfg).to(self.device)
        self.task.init_weights(self.model, self.data)  # data-dependent start (the compressor: the data mean)
        self.ema = EMA(self.model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        # compile / activation checkpointing / FSDP2; the optimizer comes after, as FSDP replaces the parameters
        self.forward = distributed.prepare(self.model, self.ema.model if self.ema else None, self.dist, cfg.train,
                                           self.log_line)
        self.optimizers = build_optimizers(self.model, cfg.train)
        self._cached_batch = (None, None)
        self.step, self.carry, self.train_time = 0, None, 0.0
        self.nonfinite = 0
        self.best_metric = None  # train.keep_best: the best task metric seen at an evaluation so far
        self.last_eval = None    # the metrics of the latest evaluation in this process
        self.interrupted = False  # Ctrl-C seen: stop after this step and save
        self.saved_step = None    # the step of the latest checkpoint this process wrote
        self.history: list[dict] = []
        self._make_run_dir()  # data and model are ready: only now is an old run replaced (--overwrite)
        self.tracker = make_logger(cfg, self.run_dir, self.dist.is_main)  # wandb/tensorboard, or a no-op
        if resume:
            self._resume()
        if self.dist.is_main:  # on resume too: the train section may have changed (more steps)
            save_config(cfg, self.run_dir / "config.yaml")
        if self.dist.is_main:  # files a run needs beside its weights (an LM: the tokenizer, for `trm generate`)
            self.task.save_run_files(self.data, self.run_dir)

    def _steps_from_epochs(self):
        """train.epochs -> train.steps (the paper's total_steps = epochs x examples per epoch / global batch)."""
        t = self.cfg.train
        examples = self.task.epoch_examples(self.data)
        t.steps = max(1, int(t.epochs * examples / t.batch_size))
        self.log_line(f"train.epochs={t.epochs:g} x {examples:,.0f} examples / batch {t.batch_size} "
                      f"-> train.steps={t.steps:,}")

    # ------------------------------------------------------------------ run directory and logging
    def _prepare_run_dir(self, resume: bool, overwrite: bool, data_root: str | Path):
        """Every check on where the run goes, before data or model are built; nothing is deleted here."""
        d = self.run_dir
        check_place(d, "run directory")
        if Path(data_root).exists() and not Path(data_root).is_dir():
            raise TrmError(f"--data-root {data_root} is a file, not a directory")
        self.existed = d.is_dir() and any(d.iterdir())
        if self.existed and not (resume or overwrite):
            raise TrmError(f"run directory {d} already exists; pass --resume to continue it or --overwrite")
        self.replaces_old_run = overwrite and not resume and self.existed
        if self.replaces_old_run:
            check_is_run(d)

    def _make_run_dir(self):
        """Created once data and model are ready, so a run that fails to start leaves no empty directory behind
        (which the next attempt would refuse as an existing run), and --overwrite deletes the old run only now: a
        start that fails (a bad data file, a bad config) leaves it as it was."""
        if self.dist.is_main:
            try:
                if self.replaces_old_run:
                    remove_run(self.run_dir)  # checked again: the data build may have taken a while
                self.run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrmError(f"run directory {self.run_dir}: {e.strerror or e}") from None
        distributed.barrier(self.dist)

    def _resume(self):
        """--resume: the newest whole checkpoint; none yet (stopped before the first): start at step 0; no run at
        all: start it, saying so (a job script that always passes --resume must work on its first launch)."""
        if not self.existed:
            self.note(f"--resume: there is no run at {self.run_dir} yet; starting it")
        elif checkpoints(self.run_dir):
            try:
                ckpt = load_checkpoint(self.run_dir, note=self.note)
            except TrmError as e:
                raise TrmError(f"{e}; --overwrite without --resume starts the run again") from None
            self._restore(ckpt)
        elif (self.run_dir / "metrics.jsonl").exists():  # stopped before its first checkpoint
            self.log_line(f"{self.run_dir} has no checkpoint to resume from: starting again at step 0")
            self._truncate_metrics(0)

    def note(self, msg: str):
        """A line the user must see even with --quiet (a damaged checkpoint skipped, a resume that starts afresh)."""
        if self.dist.is_main:
            tqdm.write(f"trm: note: {msg}", file=sys.stderr)

    def log_line(self, msg: str):
        if self.dist.is_main and not self.quiet:
            tqdm.write(msg)

    def log(self, record: dict):
        self.tracker.log(record)  # metrics.jsonl (+ wandb / tensorboard) on the main process; a no-op on others

    # ------------------------------------------------------------------ checkpoints
    def _rng_tensors(self) -> dict:
        t = {"rng.torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            t["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        return t

    def save(self):
        tensors = self._rng_tensors()
        if self.carry is not None:
            tensors.update({f"carry.{k}": v for k, v in self.carry.items() if torch.is_tensor(v)})
        state = {"train_time": self.train_time, "nonfinite": self.nonfinite, "world_size": self.dist.world_size,
                 "best_metric": self.best_metric, "config": self.cfg.to_dict()}
        if self.dist.world_size > 1:  # every rank holds its own slice of the carry
            tensors = distributed.gather_carry(tensors, self.dist)
        # full tensors on every rank (under FSDP a gather that all ranks join; otherwise the state dicts as they are)
        model_sd = distributed.full_state_dict(self.model.state_dict())
        ema_sd = distributed.full_state_dict(self.ema.state_dict()) if self.ema else None
        optim_sds = [distributed.full_optimizer_state(o) for o in self.optimizers]
        if self.dist.is_main:
            save_checkpoint(self.run_dir, self.step, model_sd, state, ema_sd, optim_sds, tensors,
                            self.cfg.train.keep_checkpoints)
        distributed.barrier(self.dist)
        self.saved_step = self.step

    def _restore(self, ckpt: Checkpoint):
        saved = from_dict(ckpt.state["config"])
        for section in ("task", "model", "data"):
            if getattr(saved, section) != getattr(self.cfg, section):
                raise TrmError(f"cannot resume {self.run_dir}: {_differences(saved, self.cfg, section)} "
                               f"(`trm train {self.run_dir} --resume` continues it with its own config)")
        if ckpt.state.get("world_size", 1) != self.dist.world_size and self.cfg.train.supervision == "per_step":
            raise TrmError(f"cannot resume {self.run_dir}: saved with {ckpt.state.get('world_size', 1)} processes, "
                           f"now {self.dist.world_size} (the ACT carry is sharded per process)")
        self._load_states(ckpt)
        self.step = self.saved_step = int(ckpt.state["step"])
        self.train_time = float(ckpt.state.get("train_time", 0.0))
        self.nonfinite = int(ckpt.state.get("nonfinite", 0))
        self.best_metric = ckpt.state.get("best_metric")
        try:
            torch.set_rng_state(ckpt.tensors["rng.torch"])
        except RuntimeError as e:
            raise TrmError(f"{ckpt.path / 'state.safetensors'} is damaged (RNG state: {str(e).splitlines()[0]})") \
                from None
        carry = {k[len("carry."):]: v for k, v in ckpt.tensors.items() if k.startswith("carry.")}
        if carry:
            carry = distributed.shard_carry(carry, self.dist)
            self.carry = {k: v.to(self.device) for k, v in carry.items()}
        self._truncate_metrics(self.step)
        self.log_line(f"resumed {self.run_dir} at step {self.step}")

    def _load_states(self, ckpt: Checkpoint):
        """Weights, EMA and optimizer state into the freshly built ones; a mismatch is one line, not a traceback."""
        if len(ckpt.optimizers) != len(self.optimizers):
            raise TrmError(f"cannot resume {self.run_dir}: {ckpt.path.name} holds {len(ckpt.optimizers)} optimizer "
                           f"state(s), train.optimizer={self.cfg.train.optimizer} builds {len(self.optimizers)}")
        try:
            distributed.load_full_state_dict(self.model, ckpt.model)
            if self.ema and ckpt.ema is not None:
                distributed.load_full_state_dict(self.ema.model, ckpt.ema)
            for opt, sd in zip(self.optimizers, ckpt.optimizers):
                distributed.load_full_optimizer_state(opt, sd)
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError) as e:
            raise TrmError(f"cannot resume {self.run_dir}: {ckpt.path.name} does not fit this model and optimizer "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})") from None

    def _truncate_metrics(self, step: int):
        """Drop log records written after the checkpoint we resume from (that work is being redone), and lines that
        are not a record (a crash mid-write leaves a torn last line), saying so."""
        f = self.run_dir / "metrics.jsonl"
        if not self.dist.is_main or not f.exists():
            return
        keep, torn = [], []
        for i, ln in enumerate(f.read_text(errors="replace").splitlines(), 1):
            record = _record(ln)
            if record is None and ln.strip():
                torn.append(i)
            elif record is not None and record.get("step", 0) <= step:
                keep.append(ln)
        if torn:
            self.note(f"{f}: dropped {len(torn)} unreadable line{'s' * (len(torn) > 1)} (line "
                      f"{', '.join(map(str, torn[:5]))}{', ...' if len(torn) > 5 else ''}; a crash mid-write)")
        f.write_text("".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------------ one optimizer step
    def _batch(self, step: int, rows: slice = slice(None)) -> dict:
        """This rank's slice of global batch ``step`` (loaded once per step), then the micro-batch ``rows`` of it."""
        if self._cached_batch[0] != step:
            b = self.task.batch(self.data, self.sampler, step, self.cfg.train.batch_size, self.dist.rank,
                                self.dist.world_size)
            self._cached_batch = (step, {k: v.to(self.device) for k, v in b.items()})
        return {k: v[rows] for k, v in self._cached_batch[1].items()}

    def _global_rows(self, rows: slice) -> slice:
        """Where this rank's micro-batch ``rows`` sits in the global batch (for per-sample randomness)."""
        offset = self.dist.rank * (self.cfg.train.batch_size // self.dist.world_size)
        return slice(offset + rows.start, offset + rows.stop)

    def _autocast(self):
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(self.cfg.train.dtype)
        return torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def _per_step_loss(self, step: int, rows: slice):
        """One supervision step of micro-slice ``rows`` of the carried batch; halted samples were swapped for fresh
        ones. The whole local batch is carried; each of the grad_accum micro-slices steps once per optimizer step."""
        fresh = self._batch(step, rows)
        c = None if self.carry is None else {k: v[rows] for k, v in self.carry.items()}
        batch, steps, reset = refill(c, fresh)
        carry = None if c is None or "y" not in c else self.model.make_carry(c["y"], c["z"])
        with self._autocast():
            out = self.forward(batch, carry, reset)
            loss_vec, correct, metrics = self.task.losses(out, {**batch, "sup_step": steps}, self.cfg)
        steps = steps + 1
        halted = halts(steps, out.q_logit.detach(), step, self._global_rows(rows), self.cfg.model, self.cfg.train)
        self._next_carry.append({**batch, "y": out.carry.y, "z": out.carry.z, "steps": steps, "halted": halted})
        metrics["exact_acc"] = correct.float()
        metrics["steps"] = steps.float()
        return loss_vec.mean(), metrics

    def _summed_loss(self, step: int, rows: slice):
        """All n_sup_train steps of micro-batch ``rows``, weighted, with the improvement reward; one backward."""
        m, t = self.cfg.model, self.cfg.train
        batch = self._batch(step, rows)
        carry, losses, metrics = None, [], {}
        with self._autocast():
            for k in range(m.n_sup_train):
                out = self.forward(batch, carry)
                carry = out.carry
                sup_step = torch.full((len(out.logits),), k, dtype=torch.long, device=out.logits.device)
                loss_vec, correct, metrics = self.task.losses(out, {**batch, "sup_step": sup_step}, self.cfg)
                losses.append(loss_vec.mean())
        losses_t = torch.stack(losses)
        loss = summed_objective(losses_t, t.supervision_weight_base, t.improvement_reward_scale, t.improvement_reward)
        metrics["exact_acc"] = correct.float()
        metrics["first_step_loss"] = losses_t[0].detach()
        metrics["last_step_loss"] = losses_t[-1].detach()
        return loss, metrics

    def train_step(self) -> dict:
        t = self.cfg.train
        lr_f = set_lr(self.optimizers, self.step, t)
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        with curriculum_depth(self.model, self.step, t):  # curriculum recursion: shallower early steps
            loss, metrics = self._accumulate(self.step)
        # loss and metrics averaged over ranks: every rank logs, and decides to skip, the same
        means = distributed.mean_over_ranks({"loss": loss, **{k: v.float().mean() if torch.is_tensor(v) else v
                                                              for k, v in metrics.items()}}, self.dist)
        loss, metrics = torch.as_tensor(means.pop("loss")), means
        record = {"step": self.step + 1, "loss": float(loss), "lr": t.lr * lr_f}
        if not torch.isfinite(loss):
            self.nonfinite += 1  # skipped, not fatal: the carry moved on and the next batch is fresh
            record["skipped_nonfinite"] = True
            self.carry = None
        else:
            distributed.sync_grads(self.model, self.dist)
            if t.grad_clip:
                record["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip))
            for opt in self.optimizers:
                opt.step()
            if self.ema:
                self.ema.update(self.model, self.step)
        for k, v in metrics.items():
            record[k] = float(v.float().mean()) if torch.is_tensor(v) else v
        self.step += 1
        return record

    def _accumulate(self, step: int):
        """train.grad_accum micro-batches of this rank's rows, each forward + backward (gradients add up, scaled
        by 1/grad_accum); returns the mean loss (detached) and the metrics of all micro-batches."""
        t = self.cfg.train
        loss_fn = self._per_step_loss if t.supervision == "per_step" else self._summed_loss
        slices = distributed.micro_slices(t.batch_size // self.dist.world_size, t.grad_accum)
        self._next_carry, losses, parts = [], [], []
        for i, rows in enumerate(slices):
            loss, metrics = loss_fn(step, rows)
            with distributed.accumulating(self.model, self.dist, last=i == len(slices) - 1):
                (loss / len(slices)).backward()  # a non-finite loss is backpropagated too, then the step is skipped
            losses.append(loss.detach())
            parts.append(metrics)
        if self._next_carry:
            self.carry = {k: torch.cat([c[k] for c in self._next_carry]) for k in self._next_carry[0]}
        merged = {k: torch.cat([p[k].float().reshape(-1) for p in parts]) if torch.is_tensor(parts[0][k])
                  else parts[-1][k] for k in parts[0]}
        return torch.stack(losses).mean(), merged

    # ------------------------------------------------------------------ evaluation and the loop
    def eval_model(self):
        return self.ema.model if self.ema else self.model

    def evaluate(self) -> dict:
        # A task whose evaluation also writes files (ARC: submission.json, pictures) takes an out_dir: the run's.
        out = {"out_dir": self.run_dir if self.dist.is_main else None}
        metrics = self.task.evaluate(self.eval_model(), self.data, self.cfg, self.device,
                                     max_samples=self.cfg.train.eval_samples, **out)
        self.log({"step": self.step, "eval": metrics})
        if self.cfg.train.keep_best:
            self._keep_best(metrics)
        return metrics

    def _keep_best(self, metrics: dict):
        """Save <run>/best (weights + EMA, no optimizer) when the task's headline metric beats every earlier eval."""
        value = metrics.get(self.task.metric)
        lower = self.task.lower_is_better
        if value is None or (self.best_metric is not None and
                             (value >= self.best_metric if lower else value <= self.best_metric)):
            return
        self.best_metric = value
        model_sd = distributed.full_state_dict(self.model.state_dict())  # every rank: FSDP gathers here
        ema_sd = distributed.full_state_dict(self.ema.state_dict()) if self.ema else None
        if self.dist.is_main:
            state = {"metric": self.task.metric, "value": value, "train_time": self.train_time,
                     "config": self.cfg.to_dict()}
            save_checkpoint(self.run_dir / "best", self.step, model_sd, state, ema_sd, keep=1)
        distributed.barrier(self.dist)

    def _should_stop(self) -> bool:
        t = self.cfg.train
        over_time = t.time_budget_s > 0 and self.train_time >= t.time_budget_s
        return self.step >= t.steps or distributed.any_true(over_time or self.interrupted, self.dist)

    @contextmanager
    def _ctrl_c_saves(self):
        """Ctrl-C (or SIGTERM: a cluster's preemption notice) lets the current step finish, then the run saves a
        checkpoint and stops (a step cut in half is never saved; every rank stops at the same step). A second
        signal stops at once, as before."""
        if threading.current_thread() is not threading.main_thread():  # signals reach only the main thread
            yield
            return

        def on_interrupt(signum, frame):
            if self.interrupted:
                raise Interrupted(signum)
            self.interrupted = signum  # truthy; which signal sets the exit code (130 SIGINT, 143 SIGTERM)
            self.log_line("interrupted: saving a checkpoint after this step (Ctrl-C again to stop at once)")

        previous = {sig: signal.signal(sig, on_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def fit(self) -> dict:
        t = self.cfg.train
        self.log_line(f"{self.cfg.name or 'run'}: {self.task.describe(self.model, self.cfg)}")
        # Under a time budget the step count is open-ended: show a counter and the rate, not a far-off total.
        bar = tqdm(total=None if t.time_budget_s else t.steps, initial=self.step,
                   disable=self.quiet or not self.dist.is_main,
                   desc=self.cfg.name or "train", dynamic_ncols=True)
        with self._ctrl_c_saves():
            self._loop(bar)
        bar.close()
        if distributed.any_true(self.interrupted, self.dist):
            self.save()
            self.tracker.close()
            raise Interrupted(self.interrupted or signal.SIGINT)
        self.tracker.close()
        if self.saved_step != self.step:  # before the final evaluation, so a Ctrl-C during it loses no training
            self.save()
        last_eval = self.last_eval
        if last_eval is None or (t.eval_interval and self.step % t.eval_interval):
            last_eval = self.evaluate()
            if t.keep_best:  # the evaluation may have moved best_metric, which the checkpoint carries
                self.save()
        return self.write_summary(last_eval)

    def _loop(self, bar):
        t = self.cfg.train
        while not self._should_stop():
            t0 = time.perf_counter()
            record = self.train_step()
            dt = time.perf_counter() - t0
            self.train_time += dt
            record["step_time"] = dt
            if self.step % t.log_interval == 0 or self.step == 1:
                self.log(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", acc=f"{record.get('exact_acc', 0):.3f}",
                            s_per_step=f"{dt:.2f}")
            if t.eval_interval and self.step % t.eval_interval == 0:
                self.last_eval = self.evaluate()
                metric = self.task.metric
                self.log_line(f"step {self.step}: eval {metric} {self.last_eval.get(metric, float('nan')):.4f}")
            if t.ckpt_interval and self.step % t.ckpt_interval == 0:
                self.save()

    def write_summary(self, eval_metrics: dict) -> dict:
        summary = {"name": self.cfg.name, "task": self.cfg.task, "steps": self.step, "train_time_s": self.train_time,
                   "s_per_step": self.train_time / max(self.step, 1), "nonfinite_steps": self.nonfinite,
                   **count_parameters(self.model), "effective_depth": self.cfg.model.effective_depth,
                   **matmul_params(self.model), "metric": self.task.metric,
                   "lower_is_better": self.task.lower_is_better, "eval": eval_metrics,
                   "device": str(self.device), "world_size": self.dist.world_size}
        if self.dist.is_main:
            write_summary(self.run_dir, summary)  # written last: the run's completion marker
        return summary


def _record(line: str) -> dict | None:
    """A metrics.jsonl line as a record, or None when it is not one (torn, garbage)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("step", 0), (int, float)) else None


def _differences(saved: Config, given: Config, section: str) -> str:
    """'model.n_embd is 32 in the run, 128 given' for the first few keys of ``section`` that differ."""
    a, b = saved.to_dict()[section], given.to_dict()[section]
    if not isinstance(a, dict) or not isinstance(b, dict):
        return f"{section} is {a!r} in the run, {b!r} given"
    keys = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    said = [f"{section}.{k} is {a.get(k)!r} in the run, {b.get(k)!r} given" for k in keys[:3]]
    return "; ".join(said) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")


def train(cfg: Config, run_dir: str | Path, **kw) -> dict:
    """Library entry point: train ``cfg`` into ``run_dir`` and return its summary."""
    return Trainer(cfg, run_dir, **kw).fit()

