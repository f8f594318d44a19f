"""Halting at inference: when may a puzzle stop recursing without losing exact accuracy?

The paper halts a puzzle at the first supervision step whose Q-head says "my answer is right" (q > 0). On the
demo's Sudoku model that rule stops too early: it answered after ~2 of 8 steps and lost ~19 points of exact
accuracy (issue 15). The rules here, each a ``HaltRule``:

    all               every supervision step (no halting; the paper's headline evaluation)
    q                 sigmoid(q) > 0.5, the paper's ACT rule
    stable            q > 0 and the answer equals the previous step's (the answer stopped changing)
    unchanged         the answer equals the previous step's, whatever q says
    threshold         sigmoid(q) > t, t calibrated on held-out training views (below)
    threshold+stable  both
    auto              the run's calibrated rule (halting.json) if it has one, else ``stable``

Calibration (``calibrate``) runs the model on fresh augmented views of the run's *training* puzzles (never the test
split), replays every rule offline on the recorded per-step answers and Q-logits, and keeps the rule that uses the
fewest steps on average among those whose exact accuracy stays within ``tolerance`` of the all-steps figure. It is
stored as ``<run>/halting.json`` (small, human-readable; the checkpoint is not touched).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trmlab.errors import TrmError
from trmlab.recursion import HaltTracker

HALTING_FILE = "halting.json"
FIXED_RULES = ("all", "q", "stable", "unchanged")
CALIBRATED_RULES = ("threshold", "threshold+stable")
RULE_NAMES = ("auto",) + FIXED_RULES + CALIBRATED_RULES
THRESHOLDS = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998, 0.999)


@dataclass(frozen=True)
class HaltRule:
    """Halt a sample once sigmoid(q) > ``threshold`` (None: never), and, with ``stable``, its answer is unchanged."""

    name: str
    threshold: float | None = 0.5
    stable: bool = False

    def __call__(self, q_logit: torch.Tensor, pred: torch.Tensor, previous: torch.Tensor | None) -> torch.Tensor:
        if self.threshold is None:
            return torch.zeros_like(q_logit, dtype=torch.bool)
        # compare logits, not probabilities: sigmoid rounds tiny q to exactly 0.5, and "q" must stay "q > 0"
        says = q_logit > _logit(self.threshold)
        if self.stable:
            same = (pred == previous).flatten(1).all(-1) if previous is not None else torch.zeros_like(says)
            says = says & same
        return says

    @property
    def halts(self) -> bool:
        return self.threshold is not None

    def label(self) -> str:
        if self.name in CALIBRATED_RULES:
            return f"{self.name} (sigmoid(q) > {self.threshold:g})"
        return self.name


def _logit(p: float) -> float:
    if p <= 0:
        return -math.inf
    return math.log(p / (1 - p)) if p < 1 else math.inf


def fixed_rule(name: str) -> HaltRule:
    return {"all": HaltRule("all", None), "q": HaltRule("q", 0.5), "stable": HaltRule("stable", 0.5, True),
            "unchanged": HaltRule("unchanged", 0.0, True)}[name]


def resolve_rule(name: str, calibration: dict | None) -> HaltRule:
    """The rule a user named; ``auto`` and the calibrated ones read the run's calibration (``load_calibration``)."""
    if name not in RULE_NAMES:
        raise TrmError(f"--halt {name}: unknown rule (choose from {', '.join(RULE_NAMES)})")
    if name in FIXED_RULES:
        return fixed_rule(name)
    if calibration is None:
        if name == "auto":
            return fixed_rule("stable")
        raise TrmError(f"--halt {name}: the run has no halting calibration ({HALTING_FILE}); "
                       "run `trm eval RUN --calibrate-halting` first")
    if name == "auto":
        chosen = calibration["rule"]
        return HaltRule(chosen["name"], chosen["threshold"], chosen["stable"])
    best = calibration["best_threshold"][name]
    return HaltRule(name, best, name.endswith("+stable"))


# --------------------------------------------------------------------------------------------- offline replay
def replay(preds: torch.Tensor, q_logits: torch.Tensor, rule: HaltRule):
    """The answers and steps ``rule`` gives from recorded per-step answers [N, S, L] and Q-logits [N, S]:
    the same HaltTracker the live evaluation uses, fed step by step."""
    tracker = HaltTracker(preds.shape[1], rule)
    for k in range(preds.shape[1]):
        tracker.update(preds[:, k], q_logits[:, k] if rule.halts else None)
    return tracker.answer, tracker.steps


def curve(preds, q_logits, labels, rules) -> list[dict]:
    """Exact accuracy and mean supervision steps of each rule on recorded steps: the accuracy/steps trade-off."""
    valid = labels != 0
    rows = []
    for rule in rules:
        answer, steps = replay(preds, q_logits, rule)
        exact = ((answer == labels) | ~valid).all(-1).float().mean().item()
        rows.append({"name": rule.name, "threshold": rule.threshold, "stable": rule.stable,
                     "exact_acc": round(exact, 5), "mean_steps": round(steps.float().mean().item(), 4)})
    return rows


def candidate_rules(q_logits: torch.Tensor | None = None) -> list[HaltRule]:
    """The fixed rules, and both threshold families over THRESHOLDS plus (given recorded Q-logits) the 5 %, 10 %,
    ... 95 % quantiles of the recorded confidences: a Q-head whose confidence never passes 0.9 still gets a fine grid."""
    thresholds = set(THRESHOLDS)
    if q_logits is not None and q_logits.numel():
        conf = torch.sigmoid(q_logits.float().flatten())
        thresholds |= {round(float(v), 4) for v in torch.quantile(conf, torch.linspace(0.05, 0.95, 19))}
    rules = [fixed_rule(n) for n in FIXED_RULES]
    for t in sorted(t for t in thresholds if 0 < t < 1):
        rules += [HaltRule("threshold", t), HaltRule("threshold+stable", t, True)]
    return rules


@torch.no_grad()
def record_steps(model, inputs: np.ndarray, labels: np.ndarray, n_sup: int, device, batch_size: int = 256,
                 puzzle_ids: np.ndarray | None = None):
    """Run every puzzle for all ``n_sup`` steps and keep each step's answer and Q-logit: (preds, qs, labels)."""
    was_training = model.training
    model.eval()
    preds, qs = [], []
    for start in range(0, len(inputs), batch_size):
        sl = slice(start, start + batch_size)
        ids = puzzle_ids[sl] if puzzle_ids is not None else np.zeros(len(inputs[sl]))
        batch = {"inputs": torch.from_numpy(inputs[sl].astype(np.int64)).to(device),
                 "puzzle_ids": torch.from_numpy(ids.astype(np.int64)).to(device)}
        carry, p, q = None, [], []
        for _ in range(n_sup):
            out = model.step(batch, carry)
            carry = out.carry
            p.append(out.logits.argmax(-1).cpu())
            q.append(out.q_logit.float().cpu())
        preds.append(torch.stack(p, 1))
        qs.append(torch.stack(q, 1))
    model.train(was_training)
    return torch.cat(preds), torch.cat(qs), torch.from_numpy(labels.astype(np.int64))


# --------------------------------------------------------------------------------------------- calibration
def choose(rows: list[dict], tolerance: float) -> dict:
    """The rule with the fewest mean steps whose exact accuracy is within ``tolerance`` of all steps' (ties: the
    more accurate, then the simpler rule as listed)."""
    reference = next(r for r in rows if r["name"] == "all")["exact_acc"]
    ok = [r for r in rows if r["exact_acc"] >= reference - tolerance]
    return min(ok, key=lambda r: (r["mean_steps"], -r["exact_acc"]))


def calibrate(model, task_name: str, train_split, n_sup: int, device, n_views: int = 1000, seed: int = 0,
              tolerance: float = 0.005) -> dict:
    """Calibrate halting on ``n_views`` fresh views of training puzzles; returns the halting.json dict."""
    from trmlab.eval.views import held_out_views
    inputs, labels, about = held_out_views(task_name, train_split, n_views, seed)
    preds, qs, labels_t = record_steps(model, inputs, labels, n_sup, device)
    rows = curve(preds, qs, labels_t, candidate_rules(qs))
    chosen = choose(rows, tolerance)
    best_threshold = {}
    for family in CALIBRATED_RULES:
        fam = [r for r in rows if r["name"] == family]
        reference = next(r for r in rows if r["name"] == "all")["exact_acc"]
        ok = [r for r in fam if r["exact_acc"] >= reference - tolerance] or fam[-1:]
        best_threshold[family] = min(ok, key=lambda r: (r["mean_steps"], -r["exact_acc"]))["threshold"]
    return {"rule": {"name": chosen["name"], "threshold": chosen["threshold"], "stable": chosen["stable"]},
            "best_threshold": best_threshold, "tolerance": tolerance, "n_sup_inference": n_sup,
            "calibration_set": about, "n_views": int(len(inputs)), "seed": seed, "curve": rows}


def calibrated_rule(model, cfg, data, device, n_views: int = 1000) -> HaltRule:
    """The rule a training-time evaluation scores ACT with: calibrated in memory on ``n_views`` held-out training
    views (nothing stored); every step for a run trained without ACT; ``stable`` where there is nothing to
    calibrate on (no training split, or a task without views)."""
    from trmlab.eval.views import VIEW_TASKS
    if cfg.model.halting != "act":
        return fixed_rule("all")
    train = data.splits.get("train")
    if cfg.task not in VIEW_TASKS or train is None or not len(train):
        return fixed_rule("stable")
    return resolve_rule("auto", calibrate(model, cfg.task, train, cfg.model.n_sup_inference, device, n_views))


def load_calibration(run_dir) -> dict | None:
    path = Path(run_dir) / HALTING_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        rule = data["rule"]
        HaltRule(rule["name"], rule["threshold"], rule["stable"])
        return data
    except (ValueError, KeyError, TypeError) as e:
        raise TrmError(f"{path}: not a halting calibration ({type(e).__name__}: {e}); delete it or rerun "
                       "`trm eval RUN --calibrate-halting`") from None


def save_calibration(run_dir, calibration: dict) -> Path:
    """Write ``<run>/halting.json`` atomically (a temporary file, then a rename)."""
    path = Path(run_dir) / HALTING_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(calibration, indent=2))
    os.replace(tmp, path)
    return path


def describe(calibration: dict) -> str:
    r = calibration["rule"]
    rule = HaltRule(r["name"], r["threshold"], r["stable"]).label()
    row = next(c for c in calibration["curve"] if c["name"] == r["name"] and c["threshold"] == r["threshold"])
    ref = next(c for c in calibration["curve"] if c["name"] == "all")
    return (f"halting rule {rule}: on {calibration['n_views']} held-out training views exact {row['exact_acc']:.4f} "
            f"in {row['mean_steps']:.2f} steps (all {calibration['n_sup_inference']} steps: {ref['exact_acc']:.4f})")



# --------------------------------------------------------------------------------------------- a run's rule
def fingerprint(model) -> str:
    """Which weights a calibration belongs to: a hash of the halting and output heads (EMA and raw weights differ,
    and so does every checkpoint of a run that trained on)."""
    import hashlib
    h = hashlib.sha1()
    for t in (model.q_head.weight, model.q_head.bias, model.head.weight):
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def rule_for_run(name: str, model, task_name: str, train_split, n_sup: int, run_dir, device="cpu",
                 recalibrate: bool = False, note=print, trained_to_halt: bool = True, n_views: int = 1000) -> HaltRule:
    """The halting rule ``name`` for this run: ``auto`` and the calibrated rules use ``<run>/halting.json`` when it
    belongs to these weights and this many steps, else calibrate now (on held-out training views) and store it.
    A run trained without ACT has an untrained Q-head: ``auto`` runs every step."""
    if name in FIXED_RULES:
        return fixed_rule(name)
    if name == "auto" and not trained_to_halt:
        return fixed_rule("all")
    calibration = load_calibration(run_dir) if run_dir is not None else None
    current = calibration is not None and calibration.get("weights") == fingerprint(model) and \
        calibration.get("n_sup_inference") == n_sup
    if recalibrate or not current:
        if task_name not in ("sudoku", "maze") or train_split is None:
            return resolve_rule(name, None)  # nothing to calibrate on: auto falls back to ``stable``
        calibration = calibrate(model, task_name, train_split, n_sup, device, n_views)
        calibration["weights"] = fingerprint(model)
        try:
            where = f"stored in {save_calibration(run_dir, calibration)}" if run_dir is not None else "not stored"
        except OSError as e:  # a read-only run still evaluates; the calibration just is not kept
            where = f"not stored ({Path(run_dir) / HALTING_FILE}: {e.strerror or type(e).__name__})"
        note(f"{describe(calibration)}; {where}")
    return resolve_rule(name, calibration)


# --------------------------------------------------------------------------------------------- the curve, for docs
def split_curve(model, split, n_sup: int, device="cpu", max_samples: int = 0, calibrated: HaltRule | None = None):
    """Exact accuracy vs mean steps of every rule on an evaluated split (one recorded pass, replayed per rule);
    the run's calibrated rule is added when it is not on the grid."""
    n = len(split) if not max_samples else min(max_samples, len(split))
    preds, qs, labels = record_steps(model, split.inputs[:n], split.labels[:n], n_sup, device,
                                     puzzle_ids=split.puzzle_ids[:n])
    rules = candidate_rules()
    if calibrated is not None and calibrated not in rules:
        rules.append(calibrated)
    rows = curve(preds, qs, labels, rules)
    if calibrated is not None:
        for r in rows:
            r["calibrated"] = (r["name"], r["threshold"], r["stable"]) == \
                (calibrated.name, calibrated.threshold, calibrated.stable)
    return rows


def plot_curve(rows: list[dict], path, title: str = "") -> Path:
    """The accuracy / mean-steps trade-off as a PNG: the two threshold families as lines, the fixed rules as points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for family, style in (("threshold", "o-"), ("threshold+stable", "s--")):
        pts = sorted((r["mean_steps"], r["exact_acc"]) for r in rows if r["name"] == family)
        ax.plot(*zip(*pts), style, ms=3, lw=1, label=f"{family} (sigmoid(q) > t)")
    for name, marker in (("all", "k*"), ("q", "rv"), ("stable", "g^"), ("unchanged", "mD")):
        r = next(r for r in rows if r["name"] == name)
        ax.plot(r["mean_steps"], r["exact_acc"], marker, ms=9, label=f"{name}")
    chosen = [r for r in rows if r.get("calibrated")]
    if chosen:
        ax.plot(chosen[0]["mean_steps"], chosen[0]["exact_acc"], "o", ms=14, mfc="none", mec="C3", mew=2,
                label=f"calibrated: {HaltRule(chosen[0]['name'], chosen[0]['threshold'], chosen[0]['stable']).label()}")
    ax.set_xlabel("mean supervision steps per puzzle")
    ax.set_ylabel("exact accuracy (held-out)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
