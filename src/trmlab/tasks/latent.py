"""Latent thinking (seed 001, phase 2): a TRM maps compressed pre-thinking LLM states to the post-thinking latent.

Model: ``RecursiveModel`` with a linear embedding D' -> n_embd of the n_context prompt states, followed by K learned
query slots; the answer y is read out at the slots by a linear head n_embd -> D' (the slots are the engine's
"answer" positions, the prompt states its prefix). Loss, per sample, in the compressed (and scaled) space:
``cosine`` = mean over the K positions of 1 - cos(pred, target), ``mse`` = mean squared error, ``both`` = their
sum, ``contrastive`` = both + an InfoNCE term over the batch (data.loss; ``contrastive_loss`` says why). ACT's
halting target: the mean cosine to the final target exceeds data.halt_cosine (``exact_acc`` in the logs).

What each supervision step is trained towards (data.supervise): ``final``, the state after the whole thinking at
every step; ``lines``, step k (0-based) towards the state after the trace's first k+1 worked lines, and from the
trace's last line on the final state. Why: trained on the final state only, the TRM learned the mean thought
(docs/latent.md); the step-wise target gives each recursion the next worked step to reach, as thinking does.

Evaluation reports the cosine to the target after every supervision step, and what matters in the end: the answer
accuracy of the LLM when the predicted latent replaces the thinking (see ``llm/latent_pairs.py`` for the
injection), next to no thinking, full thinking and the true target injected, on the same test problems.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from trmlab.errors import TrmError
from trmlab.llm.latent_pairs import LatentDataConfig, build_latent_pairs, flag_accuracy, load_checker
from trmlab.recursion import HaltTracker, RecursiveModel, lecun_init_
from trmlab.tasks.base import Task
from trmlab.tasks.puzzle import EpochSampler, rank_slice
from trmlab.train.losses import halt_loss

BASELINES = ("nothink", "think", "oracle", "oracle_raw")


@dataclass
class LatentData:
    path: Path
    splits: dict            # split -> {"x", "x_mask", "target", baselines...}
    meta: dict
    llm: dict = field(default_factory=dict)   # loaded on first evaluation: model, tokenizer, compressor


class LatentEmbed(nn.Module):
    """[B, n_context, D'] prompt states -> [B, n_context + K, n_embd]: projected states, then K query slots."""

    def __init__(self, d_compressed: int, n_embd: int, n_latent: int):
        super().__init__()
        self.proj = nn.Linear(d_compressed, n_embd)
        self.slots = nn.Parameter(torch.randn(n_latent, n_embd) / n_embd ** 0.5)

    def forward(self, batch: dict) -> torch.Tensor:
        x = self.proj(batch["inputs"])
        return torch.cat([x, self.slots.to(x.dtype).expand(len(x), -1, -1)], dim=1)


def build_latent_model(cfg) -> RecursiveModel:
    from trmlab.nn.block import ReasoningCore
    d, m = cfg.data, cfg.model
    if d.d_compressed < 1:
        raise TrmError("data.d_compressed is unknown: build the data first or set it (the compressor's D')")
    embed = LatentEmbed(d.d_compressed, m.n_embd, d.n_latent)
    core = ReasoningCore(m, d.n_context + d.n_latent)
    head = nn.Linear(m.n_embd, d.d_compressed)
    lecun_init_(core)
    lecun_init_(head)
    lecun_init_(embed)
    return RecursiveModel(m, embed, core, head, prefix_len=d.n_context)


def contrastive_loss(pred: torch.Tensor, target: torch.Tensor, tau: float = 0.1) -> torch.Tensor:
    """Per-sample InfoNCE over the batch: each prediction must be nearer (cosine, after removing the batch's mean
    target) to its own target than to the other samples'. Why: on the offline task the mean target already has
    cosine 0.81 to every target, so the cosine/MSE losses have a wide plateau at "predict the mean thought"; here
    the mean scores log(B), the worst, and only problem-specific content lowers the loss."""
    center = target.float().mean(0, keepdim=True).detach()
    p = F.normalize((pred.float() - center).flatten(1), dim=-1)
    t = F.normalize((target.float() - center).flatten(1), dim=-1)
    logits = p @ t.t() / tau
    return F.cross_entropy(logits, torch.arange(len(p), device=p.device), reduction="none")


def step_target(batch: dict) -> torch.Tensor:
    """[B, K, D']: each sample's target at its supervision step, the state after its first sup_step + 1 lines
    (``target_lines`` repeats the final state past a trace's last line, so a late step reaches the final one)."""
    lines = batch["target_lines"]
    k = batch["sup_step"].clamp(max=lines.shape[1] - 1)
    return lines[torch.arange(len(lines), device=lines.device), k]


def latent_losses(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (mean cosine over the K positions [B], mean squared error [B])."""
    cos = F.cosine_similarity(pred.float(), target.float(), dim=-1, eps=1e-6).mean(-1)
    mse = (pred.float() - target.float()).pow(2).mean((-1, -2))
    return cos, mse


class LatentTask(Task):
    name = "latent"
    data_config = LatentDataConfig
    metric = "latent_acc"

    def build_data(self, data_cfg, data_root="data") -> Path:
        return build_latent_pairs(data_cfg, data_root)

    def load(self, cfg, path) -> LatentData:
        from safetensors.torch import load_file
        path = Path(path)
        meta_file = path / "metadata.json"
        if not meta_file.exists():
            raise TrmError(f"{path} is not a latent-pairs dataset (no metadata.json); build it with trm latent data")
        meta = json.loads(meta_file.read_text())
        if cfg.data.d_compressed == 0:
            cfg.data.d_compressed = int(meta["d_compressed"])
        for key in ("d_compressed", "n_context", "n_latent"):
            if int(getattr(cfg.data, key)) != int(meta[key]):
                raise TrmError(f"data.{key}={getattr(cfg.data, key)} does not match the dataset at {path} "
                               f"({key}={meta[key]})")
        cfg.model.seq_len = cfg.data.n_context + cfg.data.n_latent
        splits = {s: load_file(str(path / f"{s}.safetensors")) for s in ("train", "test")}
        return LatentData(path, splits, meta)

    def shapes(self, cfg) -> dict:
        return {"seq_len": cfg.data.n_context + cfg.data.n_latent}

    def build_model(self, cfg):
        return build_latent_model(cfg)

    def sampler(self, data: LatentData, seed: int) -> EpochSampler:
        return EpochSampler(len(data.splits["train"]["x"]), seed)

    def batch(self, data: LatentData, sampler, step: int, batch_size: int, rank: int = 0, world_size: int = 1):
        idx = sampler.indices(step, batch_size)[rank_slice(batch_size, rank, world_size)]
        s = data.splits["train"]
        keys = ("x", "target", "target_lines") if "target_lines" in s else ("x", "target")
        return {"inputs" if k == "x" else k: s[k][idx].float() for k in keys}

    def losses(self, out, batch: dict, cfg):
        goal = step_target(batch) if "target_lines" in batch else batch["target"]
        cos, mse = latent_losses(out.logits, goal)
        kind = cfg.data.loss
        loss = {"cosine": 1 - cos, "mse": mse, "both": 1 - cos + mse}.get(kind, 1 - cos + mse)
        if kind == "contrastive":   # both + InfoNCE: the latent stays where injection needs it, and must be specific
            loss = loss + contrastive_loss(out.logits, goal)
        final_cos = cos if goal is batch["target"] else latent_losses(out.logits, batch["target"])[0]
        correct = final_cos.detach() > cfg.data.halt_cosine   # halt when the thinking is done, not a step of it
        if cfg.model.halting == "act":
            loss = loss + cfg.train.halt_loss_weight * halt_loss(out.q_logit, correct)
        metrics = {"cosine": final_cos.detach(), "mse": mse.detach()}
        if goal is not batch["target"]:
            metrics["step_cosine"] = cos.detach()
        return loss, correct, metrics

    # ------------------------------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, model, x: torch.Tensor, cfg, device, batch_size: int = 256):
        """(latents after the step ACT halted at [N, K, D'], cosine-ready per-step outputs, steps used [N])."""
        n_sup, act = cfg.model.n_sup_inference, cfg.model.halting == "act"
        preds, per_step, steps = [], [], []
        for b in range(0, len(x), batch_size):
            batch = {"inputs": x[b:b + batch_size].float().to(device)}
            carry, tracker, outs = None, HaltTracker(n_sup), []
            for _ in range(n_sup):
                out = model.step(batch, carry)
                carry = out.carry
                outs.append(out.logits.float().cpu())
                tracker.update(out.logits.float(), out.q_logit if act else None)
            preds.append(tracker.answer.cpu())
            per_step.append(torch.stack(outs))
            steps.append(tracker.steps.cpu())
        return torch.cat(preds), torch.cat(per_step, dim=1), torch.cat(steps)

    def evaluate(self, model, data: LatentData, cfg, device, split: str = "test", max_samples: int = 0,
                 out_dir=None, **options) -> dict:
        if split not in data.splits:
            raise TrmError(f"split must be one of {', '.join(data.splits)}, got {split!r}")
        s = data.splits[split]
        n = min(max_samples or len(s["x"]), len(s["x"]))
        was_training = model.training
        model.eval()
        pred, per_step, steps = self.predict(model, s["x"][:n], cfg, device)
        model.train(was_training)
        target = s["target"][:n].float()
        cos_steps = [float(latent_losses(p, target)[0].mean()) for p in per_step]
        cos, mse = latent_losses(pred, target)
        m = {"cosine": float(cos.mean()), "mse": float(mse.mean()), "cosine_per_step": cos_steps,
             "halt_frac": float((cos > cfg.data.halt_cosine).float().mean()), "steps_mean": float(steps.float().mean()),
             "n": n}
        # the per-step cosines again as scalars, so `trm eval` (which prints scalars) shows them
        m.update({f"cosine_step{k}": c for k, c in enumerate(cos_steps, 1)})
        # what the cosine means: the mean training target scores `mean_target_cosine` without looking at the
        # problem, and `centered_cosine` (both sides minus that mean) is near 0 for a TRM that only learned it
        mean = data.splits["train"]["target"].float().mean(0, keepdim=True)
        m["mean_target_cosine"] = float(latent_losses(mean.expand_as(target), target)[0].mean())
        m["centered_cosine"] = float(latent_losses(pred - mean, target - mean)[0].mean())
        if split == "test":
            m.update(self.answer_accuracy(pred, data, cfg, n))
        return m

    def answer_accuracy(self, pred: torch.Tensor, data: LatentData, cfg, n: int) -> dict:
        """LLM answer accuracy with the predicted latent injected, beside the stored baselines (same problems)."""
        from trmlab.llm.chat import ChatFormat
        from trmlab.llm.checker import safe_check
        from trmlab.llm.inject import generate
        from trmlab.llm.problems import Problem
        llm = self.llm(data, cfg)
        probs = [Problem(**json.loads(line)) for line in (data.path / "test.jsonl").read_text().splitlines()][:n]
        fmt = ChatFormat(llm["tokenizer"], cfg.data.system)
        checker = load_checker(cfg.data.checker)
        # "mean": the average training target in every sample, a thought that carries no problem-specific content
        mean = data.splits["train"]["target"].float().mean(0, keepdim=True).expand_as(pred)
        out = {}
        for name, latent in (("latent", pred), ("mean_latent", mean)):
            with torch.no_grad():
                latents = llm["compressor"].decompress(latent * data.meta["scale"])
            completions = generate(llm["model"], llm["tokenizer"], [fmt.nothink(p) for p in probs],
                                   cfg.data.max_answer_tokens, latents=latents, layer=data.meta["layer"],
                                   batch_size=cfg.data.extract_batch_size)
            flags = torch.tensor([-1 if f is None else int(f) for f in
                                  (safe_check(checker, c, p.answer) for c, p in zip(completions, probs))])
            out[f"{name}_acc"], out[f"{name}_skipped"] = flag_accuracy(flags), int((flags < 0).sum())
        s = data.splits["test"]
        for b in BASELINES:
            if b in s:
                out[f"{b}_acc"] = flag_accuracy(s[b][:n])
        return out

    def llm(self, data: LatentData, cfg) -> dict:
        """The source LLM and the compressor, loaded once per dataset object."""
        if not data.llm:
            from trmlab.llm.pretrained import load_llm
            from trmlab.models.compressor import load_compressor
            model, tok = load_llm(cfg.data.llm, cfg.data.tiny_spec(), data.path.parent / "llm",
                                  dtype=cfg.data.llm_dtype)
            comp, _ = load_compressor(data.path / "compressor")
            data.llm.update(model=model, tokenizer=tok, compressor=comp.eval())
        return data.llm
