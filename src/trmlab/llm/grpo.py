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

The TRM itself stays fixed here (its latents are precomputed); training it through the policy gradient is left
for later. A run is a function of its seed: TRL seeds torch before building batches and sampling.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from trmlab.config import choice
from trmlab.errors import TrmError
from trmlab.llm.checker import safe_check


@dataclass
class RLConfig:
    mode: str = choice("latent", ("latent", "nothink", "think"), "what the policy answers from")
    steps: int = 60
    prompts_per_step: int = 8
    num_generations: int = 8       # the group size G
    lr: float = 2e-4
    beta: float = 0.04             # KL to the reference model
    temperature: float = 1.0
    max_completion_length: int = 0  # 0 = data.max_answer_tokens (latent/nothink) or + max_think_tokens (think)
    eval_interval: int = 10
    eval_samples: int = 200
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.prompts_per_step < 1 or self.num_generations < 2:
            raise TrmError("rl.steps and rl.prompts_per_step must be >= 1 and rl.num_generations >= 2 (a group)")


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

    __name__ = "correct"

    def __init__(self, checker, log=print):
        self.checker, self.log, self.skipped = checker, log, 0

    def __call__(self, prompts, completions, answer, **kwargs):
        out = []
        for c, a in zip(completions, answer):
            text = c if isinstance(c, str) else c[-1]["content"]
            ok = safe_check(self.checker, text, a, self.log)
            self.skipped += ok is None
            out.append(None if ok is None else float(ok))
        return out


def _prompts(mode: str, fmt, problems) -> list[str]:
    return [fmt.pre(p) if mode == "think" else fmt.nothink(p) for p in problems]


def _latents(cfg, data, phase2_run, task) -> dict[str, torch.Tensor]:
    """Decompressed TRM latents [N, K, D] for the train and test problems (latent mode)."""
    from trmlab.api import load
    if phase2_run is None:
        raise TrmError("trm latent rl in mode=latent needs a phase-2 run directory (trm latent train ...)")
    model, _ = load(phase2_run)
    comp = task.llm(data, cfg)["compressor"]
    out = {}
    for split in ("train", "test"):
        pred, _, _ = task.predict(model, data.splits[split]["x"], cfg, "cpu")
        with torch.no_grad():
            out[split] = comp.decompress(pred * data.meta["scale"])
    return out


def run_grpo(cfg, rl: RLConfig, run_dir: str | Path, phase2_run: str | Path | None = None,
             data_root: str | Path = "data", log=print) -> dict:
    """GRPO on ``cfg``'s latent-pairs problems into ``run_dir``; returns the summary (also in summary.json)."""
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trmlab.data.latent_pairs import load_checker
    from trmlab.llm.chat import THINK_CLOSE, ChatFormat
    from trmlab.llm.inject import KeyedInjection
    from trmlab.llm.problems import Problem
    from trmlab.tasks import get_task

    run_dir = Path(run_dir)
    if (run_dir / "summary.json").exists():
        raise TrmError(f"{run_dir} already holds a finished RL run; choose another --name")
    run_dir.mkdir(parents=True, exist_ok=True)
    task = get_task("latent")
    data = task.prepare(cfg, data_root)
    llm = task.llm(data, cfg)
    tokenizer, d = llm["tokenizer"], cfg.data
    fmt = ChatFormat(tokenizer, d.system)
    problems = {s: [Problem(**json.loads(x)) for x in (data.path / f"{s}.jsonl").read_text().splitlines()]
                for s in ("train", "test")}
    problems["test"] = problems["test"][:rl.eval_samples]
    checker = load_checker(d.checker)
    max_len = rl.max_completion_length or d.max_answer_tokens + (d.max_think_tokens if rl.mode == "think" else 0)
    layer, k = data.meta["layer"], d.n_latent
    latents = _latents(cfg, data, phase2_run, task) if rl.mode == "latent" else None
    (run_dir / "rl_config.json").write_text(json.dumps({"rl": asdict(rl), "config": cfg.to_dict(),
                                                        "phase2_run": str(phase2_run or "")}, indent=2))

    from trmlab.data.hidden_states import hub_reachable
    if not hub_reachable():  # TRL loads the reference model by name: from the local cache, without retries
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    policy = llm["model"]   # the loaded LLM becomes the policy (TRL loads its own frozen reference copy)
    injector = None
    if latents is not None:
        close = tokenizer(THINK_CLOSE, add_special_tokens=False)["input_ids"]
        injector = KeyedInjection(layer, close, tokenizer.pad_token_id, k)
        for split in ("train", "test"):
            texts = _prompts("latent", fmt, problems[split])
            # TRL tokenizes prompts with the tokenizer's special tokens, generate() here without: register both
            for special in (True, False):
                for ids, lat in zip(tokenizer(texts, add_special_tokens=special)["input_ids"], latents[split]):
                    injector.register(ids, lat)
    train_set = Dataset.from_list([{"prompt": t, "answer": p.answer} for t, p in
                                   zip(_prompts(rl.mode, fmt, problems["train"]), problems["train"])])
    reward = CorrectnessReward(checker, log)
    args = GRPOConfig(
        output_dir=str(run_dir / "trl"), per_device_train_batch_size=rl.prompts_per_step * rl.num_generations,
        num_generations=rl.num_generations, max_completion_length=max_len, max_steps=rl.steps,
        learning_rate=rl.lr, lr_scheduler_type="constant", warmup_steps=0, beta=rl.beta, temperature=rl.temperature,
        top_k=0, top_p=1.0, logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=rl.seed,
        data_seed=rl.seed, disable_tqdm=True, bf16=False, scale_rewards="group")
    trainer = GRPOTrainer(model=policy, reward_funcs=reward, args=args, train_dataset=train_set,
                          processing_class=tokenizer)
    if injector is not None:
        injector.attach(trainer.model)
        if trainer.ref_model is not None:
            injector.attach(trainer.ref_model)

    from trmlab.llm.inject import generate

    def evaluate() -> float:
        texts = _prompts(rl.mode, fmt, problems["test"])
        # in latent mode the keyed hook on the policy injects the test latents (their prompts are registered)
        comps = generate(trainer.model, tokenizer, texts, max_len)
        flags = [safe_check(checker, c, p.answer, log) for c, p in zip(comps, problems["test"])]
        scored = [f for f in flags if f is not None]
        return sum(scored) / max(len(scored), 1)

    metrics_file = run_dir / "metrics.jsonl"
    history: list[dict] = []

    def write(record: dict):
        history.append(record)
        with open(metrics_file, "a") as f:
            f.write(json.dumps(record) + "\n")

    class Log(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            trainer.model.eval()
            write({"step": 0, "eval": {"acc": evaluate(), "n": len(problems["test"])}})
            trainer.model.train()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "reward" in logs:
                write({"step": state.global_step, "reward": logs["reward"], "reward_std": logs.get("reward_std"),
                       "kl": logs.get("kl"), "loss": logs.get("loss"), "step_time": logs.get("step_time"),
                       "frac_reward_zero_std": logs.get("frac_reward_zero_std"),
                       "completion_length": logs.get("completions/mean_length")})

        def on_step_end(self, args, state, control, **kw):
            if rl.eval_interval and (state.global_step % rl.eval_interval == 0 or state.global_step == rl.steps):
                trainer.model.eval()
                write({"step": state.global_step, "eval": {"acc": evaluate(), "n": len(problems["test"])}})
                trainer.model.train()

    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)   # our callback writes metrics.jsonl; no dict dumps on stdout
    trainer.add_callback(Log())
    log(f"GRPO ({rl.mode}): {rl.steps} steps x {rl.prompts_per_step} prompts x G={rl.num_generations}, "
        f"beta {rl.beta}, lr {rl.lr}, seed {rl.seed} -> {run_dir}")
    t0 = time.perf_counter()
    trainer.train()
    train_time = time.perf_counter() - t0
    trainer.model.save_pretrained(run_dir / "model")
    tokenizer.save_pretrained(run_dir / "model")
    return _summary(run_dir, rl, history, train_time, reward.skipped, injector)


def _summary(run_dir: Path, rl: RLConfig, history: list[dict], train_time: float, skipped: int, injector) -> dict:
    rewards = [r["reward"] for r in history if "reward" in r]
    evals = [(r["step"], r["eval"]["acc"]) for r in history if "eval" in r]
    w = max(1, min(10, len(rewards) // 3))
    first, last = (sum(rewards[:w]) / w, sum(rewards[-w:]) / w) if rewards else (math.nan, math.nan)
    summary = {"mode": rl.mode, "steps": len(rewards), "seed": rl.seed, "train_time_s": train_time,
               "s_per_step": train_time / max(len(rewards), 1), "reward_first": first, "reward_last": last,
               "reward_window": w, "reward_gain": last - first, "eval_acc": evals,
               "eval_acc_gain": evals[-1][1] - evals[0][1] if len(evals) > 1 else 0.0,
               "checker_skipped": skipped, "injected_rows": injector.hits if injector else 0,
               "torch_threads": torch.get_num_threads()}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
