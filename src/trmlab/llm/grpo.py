"""Phase 3: GRPO fine-tuning on answer correctness, with TRL's ``GRPOTrainer``; only the glue TRL lacks is here.

TRL provides group sampling (``num_generations`` completions per prompt), group-normalised advantages
(``(r - mean) / (std + 1e-4)`` per group, std with Bessel's correction: see ``group_advantages``), the clipped
policy loss, the KL penalty to a frozen reference model (``beta``) and seeding. This module adds:

* the reward: 1 if the answer checker accepts the completion, 0 if not, None (TRL: unscorable, advantage 0) if
  the checker raises, which is logged and counted, never fatal;
* the latent hook (``mode=latent``): the policy answers from the no-thinking prompt with the phase-2 TRM's latent
  injected (``inject.KeyedInjection``, attached to both the policy and the reference model), so RL teaches the LLM
  to use the latent thoughts; ``mode=nothink`` / ``think`` run plain GRPO on those prompts for comparison;
* logging: TRL's reward (= the sampled completions' accuracy), KL, loss and step time go to ``metrics.jsonl`` every
  step, and the greedy held-out accuracy every ``eval_interval`` steps (and before the first), as ``eval`` records.

A GRPO run directory is a run like any other: ``config.yaml`` (the phase-2 config with an ``rl`` section,
``RLConfig`` in config.py), ``metrics.jsonl`` through the trainer's logger (train/loggers.py), ``summary.json``
written last and atomically (headline metric ``acc``, the held-out greedy accuracy, higher is better), and the
policy in ``model/``.

The TRM itself stays fixed here (its latents are precomputed); training it through the policy gradient is left
for later. A run is a function of its seed: TRL seeds torch before building batches and sampling, and the
completions are sampled on one CPU thread, so a rerun with the same seed logs the same rewards.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from contextlib import contextmanager
import copy
from dataclasses import fields, replace
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback

from trmlab.config import RLConfig, save_config
from trmlab.errors import TrmError
from trmlab.llm.checker import safe_check
from trmlab.train.loggers import MetricsLog, write_summary
from trmlab.train.run_dir import check_is_run, check_place, remove_run


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4, unbiased: bool = True
                     ) -> torch.Tensor:
    """GRPO's advantages as TRL computes them (scale_rewards='group'): per consecutive group of ``group_size``,
    (r - mean) / (std + eps) with the unbiased std (so [1, 0, 0, 1] -> +-0.866; ``unbiased=False``, the population
    std, gives +-1); a group whose rewards are all equal gets zeros."""
    g = rewards.float().view(-1, group_size)
    mean = g.mean(1, keepdim=True)
    std = g.std(1, keepdim=True, unbiased=unbiased)
    return ((g - mean) / (std + eps)).view(-1)


class CorrectnessReward:
    """TRL reward function: 1.0 right, 0.0 wrong, None when the checker raised (logged, counted in ``skipped``)."""

    __name__ = "correct"   # TRL names the logged reward column after the function

    def __init__(self, checker, log=print):
        self.checker, self.log, self.skipped = checker, log, 0

    def __call__(self, prompts, completions, answer, **kwargs):
        out = []
        for c, a in zip(completions, answer):
            text = c if isinstance(c, str) else c[-1]["content"]   # plain or conversational completions
            ok = safe_check(self.checker, text, a, self.log)
            self.skipped += ok is None
            out.append(None if ok is None else float(ok))
        return out


# ------------------------------------------------------------------------------------------- the pieces
def _prompts(mode: str, fmt, problems) -> list[str]:
    return [fmt.pre(p) if mode == "think" else fmt.nothink(p) for p in problems]


def _load_problems(data, rl: RLConfig) -> dict[str, list]:
    """The training prompts (one epoch: ``steps x prompts_per_step`` of them, so only those need a TRM latent)
    and the held-out prompts of the greedy evaluation (the first ``eval_samples`` test problems)."""
    from trmlab.llm.problems import Problem
    out = {s: [Problem(**json.loads(x)) for x in (data.path / f"{s}.jsonl").read_text().splitlines()]
           for s in ("train", "test")}
    out["train"] = out["train"][:rl.steps * rl.prompts_per_step]
    out["test"] = out["test"][:rl.eval_samples]
    return out


def _latents(cfg, data, phase2_run, task, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Decompressed TRM latents [n, K, D] for the first ``sizes[split]`` train and test problems (latent mode)."""
    from trmlab.api import load
    if phase2_run is None:
        raise TrmError("trm latent rl in mode=latent needs a phase-2 run directory (trm latent train ...)")
    model, _ = load(phase2_run)
    comp = task.llm(data, cfg)["compressor"]
    out = {}
    for split, n in sizes.items():
        pred, _, _ = task.predict(model, data.splits[split]["x"][:n], cfg, "cpu")
        with torch.no_grad():
            out[split] = comp.decompress(pred * data.meta["scale"])
    return out


def _injector(cfg, data, phase2_run, task, fmt, problems):
    """The keyed latent hook with every train and test prompt registered with its TRM latent."""
    from trmlab.llm.chat import THINK_CLOSE
    from trmlab.llm.inject import KeyedInjection
    latents = _latents(cfg, data, phase2_run, task, {s: len(p) for s, p in problems.items()})
    tok = fmt.tokenizer
    injector = KeyedInjection(data.meta["layer"], tok(THINK_CLOSE, add_special_tokens=False)["input_ids"],
                              tok.pad_token_id, cfg.data.n_latent)
    for split in ("train", "test"):
        texts = _prompts("latent", fmt, problems[split])
        # TRL tokenizes prompts with the tokenizer's special tokens, inject.generate without: register both
        for special in (True, False):
            for ids, lat in zip(tok(texts, add_special_tokens=special)["input_ids"], latents[split]):
                injector.register(ids, lat)
    return injector


def _grpo_args(rl: RLConfig, run_dir: Path, max_len: int):
    from trl import GRPOConfig
    return GRPOConfig(
        output_dir=str(run_dir / "trl"), per_device_train_batch_size=rl.prompts_per_step * rl.num_generations,
        num_generations=rl.num_generations, max_completion_length=max_len, max_steps=rl.steps,
        learning_rate=rl.lr, lr_scheduler_type="constant", warmup_steps=0, beta=rl.beta, temperature=rl.temperature,
        top_k=0, top_p=1.0, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=rl.seed,
        data_seed=rl.seed, disable_tqdm=True, bf16=False, scale_rewards="group",
        **checkpointing_args(True))   # TRL's default, set explicitly so it is named the non-deprecated way


def checkpointing_args(on: bool) -> dict:
    """transformers renamed ``gradient_checkpointing`` to ``activation_checkpointing`` and the old name now warns
    (TRL's configs set it by default); releases before the rename only know the old name."""
    from trl import GRPOConfig
    new = any(f.name == "activation_checkpointing" for f in fields(GRPOConfig))
    return {"activation_checkpointing" if new else "gradient_checkpointing": on}


# TRL's generation step still calls transformers' deprecated gradient_checkpointing* model methods; not ours to fix
_TRL_CHECKPOINTING_DEPRECATION = r"`(is_)?gradient_checkpointing(_enable|_disable)?` is deprecated"


@contextmanager
def trl_deprecations_silenced():
    """Hides only the FutureWarnings that TRL triggers inside transformers; every other warning still shows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_TRL_CHECKPOINTING_DEPRECATION, category=FutureWarning)
        yield


def _evaluator(model, tokenizer, prompts: list[str], answers: list[str], checker, rl: RLConfig, max_len: int,
               log=print):
    """The held-out evaluation: greedy accuracy, and the expected reward from ``eval_draws`` sampled answers per
    problem at the training temperature. The draws are the same for a seed at every evaluation (a forked RNG, so
    training's random stream is untouched): before and after are compared on the same prompts and draws. In latent
    mode the keyed hook on ``model`` injects the latents of these prompts."""
    from trmlab.llm.inject import generate

    def score(completions, golds) -> float:
        flags = [safe_check(checker, c, a, log) for c, a in zip(completions, golds)]
        scored = [f for f in flags if f is not None]
        return sum(scored) / max(len(scored), 1)

    def evaluate() -> dict:
        out = {"acc": score(generate(model, tokenizer, prompts, max_len), answers), "n": len(answers)}
        if rl.eval_draws:
            with torch.random.fork_rng():
                torch.manual_seed(rl.seed + 1)
                comps = generate(model, tokenizer, prompts * rl.eval_draws, max_len, do_sample=True,
                                 temperature=rl.temperature)
            out["reward"] = score(comps, answers * rl.eval_draws)
        return out

    return evaluate


class RunLog(TrainerCallback):
    """Writes TRL's per-step reward/KL/loss and our greedy held-out accuracy to ``metrics.jsonl`` (and keeps them)."""

    def __init__(self, path: Path, evaluate, eval_interval: int, steps: int):
        self.metrics, self.evaluate, self.eval_interval, self.steps = MetricsLog(path), evaluate, eval_interval, steps
        self.history: list[dict] = []
        self.model = None   # set by run_grpo: the policy as TRL wraps it

    def write(self, record: dict):
        self.history.append(record)
        self.metrics.log(record)

    def _eval(self, step: int):
        self.model.eval()
        self.write({"step": step, "eval": self.evaluate()})
        self.model.train()

    def on_train_begin(self, args, state, control, **kw):
        self._eval(0)   # the accuracy before any RL step: the "before" of before-vs-after

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "reward" in logs:
            self.write({"step": state.global_step, "reward": logs["reward"], "reward_std": logs.get("reward_std"),
                        "kl": logs.get("kl"), "loss": logs.get("loss"), "step_time": logs.get("step_time"),
                        "frac_reward_zero_std": logs.get("frac_reward_zero_std"),
                        "completion_length": logs.get("completions/mean_length")})

    def on_step_end(self, args, state, control, **kw):
        step = state.global_step
        if self.eval_interval and (step % self.eval_interval == 0 or step == self.steps):
            self._eval(step)


# ------------------------------------------------------------------------------------------- the run
def run_grpo(cfg, rl: RLConfig, run_dir: str | Path, phase2_run: str | Path | None = None,
             data_root: str | Path = "data", log=print, overwrite: bool = False) -> dict:
    """GRPO on ``cfg``'s latent-pairs problems into ``run_dir``; returns the summary (also in summary.json).

    ``overwrite`` replaces a finished RL run there (a trmlab run only, deleted once data and model are ready)."""
    from datasets import Dataset
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer

    from trmlab.llm.latent_pairs import load_checker
    from trmlab.llm.chat import ChatFormat
    from trmlab.tasks import get_task

    run_dir = Path(run_dir)
    replaces = _check_run_dir(run_dir, overwrite)
    phase2_run = phase2_run or rl.phase2_run or None
    task = get_task("latent")
    data = task.prepare(cfg, data_root)
    llm = task.llm(data, cfg)
    tokenizer, d = llm["tokenizer"], cfg.data
    fmt = ChatFormat(tokenizer, d.system)
    problems = _load_problems(data, rl)
    checker = load_checker(d.checker)
    max_len = rl.max_completion_length or d.max_answer_tokens + (d.max_think_tokens if rl.mode == "think" else 0)
    injector = _injector(cfg, data, phase2_run, task, fmt, problems) if rl.mode == "latent" else None
    if replaces:
        remove_run(run_dir)   # checked again: loading the LLM may have taken a while
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)   # an unfinished earlier attempt: start its log afresh
    run_cfg = copy.deepcopy(cfg)   # the phase-2 config (its shapes filled by prepare) + what GRPO ran with
    run_cfg.rl = replace(rl, phase2_run=str(phase2_run or ""))
    save_config(run_cfg, run_dir / "config.yaml")

    from trmlab.data.hidden_states import hub_reachable
    if not hub_reachable():  # TRL loads the reference model by name: from the local cache, without retries
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    train_set = Dataset.from_list([{"prompt": t, "answer": p.answer} for t, p in
                                   zip(_prompts(rl.mode, fmt, problems["train"]), problems["train"])])
    reward = CorrectnessReward(checker, log)
    # the loaded LLM becomes the policy; TRL loads its own frozen reference copy for the KL term
    trainer = GRPOTrainer(model=llm["model"], reward_funcs=reward, args=_grpo_args(rl, run_dir, max_len),
                          train_dataset=train_set, processing_class=tokenizer)
    if injector is not None:
        for m in (trainer.model, trainer.ref_model):
            if m is not None:
                injector.attach(m)

    evaluate = _evaluator(trainer.model, tokenizer, _prompts(rl.mode, fmt, problems["test"]),
                          [p.answer for p in problems["test"]], checker, rl, max_len, log)
    run_log = RunLog(run_dir / "metrics.jsonl", evaluate, rl.eval_interval, rl.steps)
    run_log.model = trainer.model
    trainer.remove_callback(PrinterCallback)   # metrics.jsonl has it all; no dict dumps on stdout
    trainer.add_callback(run_log)
    log(f"GRPO ({rl.mode}): {rl.steps} steps x {rl.prompts_per_step} prompts x G={rl.num_generations}, "
        f"beta {rl.beta}, lr {rl.lr}, seed {rl.seed} -> {run_dir}")
    t0 = time.perf_counter()
    with trl_deprecations_silenced():
        trainer.train()
    train_time = time.perf_counter() - t0
    trainer.model.save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    return _summary(run_dir, rl, run_log.history, train_time, reward.skipped, injector)


def _summary(run_dir: Path, rl: RLConfig, history: list[dict], train_time: float, skipped: int, injector) -> dict:
    """Training reward before vs after (the mean over the first and the last ``w`` steps: different prompts, so
    noisy), and the held-out curves on fixed prompts: greedy accuracy and expected (sampled) reward."""
    rewards = [r["reward"] for r in history if "reward" in r]
    step_times = [r["step_time"] for r in history if r.get("step_time") is not None]
    evals = [(r["step"], r["eval"]["acc"]) for r in history if "eval" in r]
    eval_reward = [(r["step"], r["eval"]["reward"]) for r in history if "reward" in r.get("eval", {})]
    w = max(1, min(10, len(rewards) // 3))
    first, last = (sum(rewards[:w]) / w, sum(rewards[-w:]) / w) if rewards else (math.nan, math.nan)
    summary = {"task": "latent", "mode": rl.mode, "steps": len(rewards), "seed": rl.seed, "train_time_s": train_time,
               "s_per_step": train_time / max(len(rewards), 1),   # with our evaluations
               "step_time_s": sum(step_times) / len(step_times) if step_times else math.nan,   # TRL's, without
               "reward_first": first, "reward_last": last,
               "reward_window": w, "reward_gain": last - first, "eval_acc": evals,
               "eval_acc_gain": evals[-1][1] - evals[0][1] if len(evals) > 1 else 0.0,
               "eval_reward": eval_reward,
               "eval_reward_gain": eval_reward[-1][1] - eval_reward[0][1] if len(eval_reward) > 1 else 0.0,
               "checker_skipped": skipped, "injected_rows": injector.hits if injector else 0,
               "torch_threads": torch.get_num_threads(),
               # the run contract every run keeps: the headline metric, its direction, the last evaluation
               "metric": "acc", "lower_is_better": False,
               "eval": next((r["eval"] for r in reversed(history) if "eval" in r), {})}
    write_summary(run_dir, summary)
    return summary


def _check_run_dir(run_dir: Path, overwrite: bool = False) -> bool:
    """A GRPO run goes into a fresh directory or an unfinished GRPO attempt (TRL keeps no mid-run checkpoint, so
    it restarts at step 0), never over another run's files; a finished one only with ``overwrite``. Returns
    whether the directory is to be replaced."""
    check_place(run_dir, "run directory")
    config = run_dir / "config.yaml"
    try:
        ours = not config.exists() or "rl" in (yaml.safe_load(config.read_text()) or {})
    except (OSError, yaml.YAMLError, TypeError):
        ours = False
    if not ours:
        raise TrmError(f"{run_dir} holds another run (its config.yaml has no rl section); choose another --name")
    if not (run_dir / "summary.json").exists():
        return False
    if not overwrite:
        raise TrmError(f"{run_dir} already holds a finished RL run; pass --overwrite to replace it, or choose "
                       f"another --name")
    check_is_run(run_dir)
    return True
