"""Exact-match evaluation of puzzle models on a held-out split, per supervision step and with ACT halting.

All ``n_sup_inference`` steps run for every puzzle (the paper's evaluation); the halted answer is the one of the
step where ``halt_rule`` (``eval/halting.py``; default the paper's q > 0) first says stop, else the last step's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from trmlab.data.puzzles import PuzzleSplit
from trmlab.recursion import HaltTracker


@dataclass
class PuzzleEval:
    exact_per_step: np.ndarray   # [n_sup] fraction of puzzles entirely right after step k+1
    cell_per_step: np.ndarray    # [n_sup] fraction of labelled cells right after step k+1
    blank_per_step: np.ndarray   # [n_sup] the same over cells whose answer differs from the input (the blanks)
    exact_halted: float          # answer taken where the Q-head first says halt (else the last step)
    mean_steps_halted: float     # supervision steps used under ACT halting
    predictions: np.ndarray      # [N, L] final-step answer tokens
    halted_predictions: np.ndarray
    q_logits: np.ndarray         # [N] final-step halting logits (ARC voting ranks ties by them)
    halt_rule: str = "q"         # the rule exact_halted and mean_steps_halted were scored with
    core_calls_per_step: int = 0  # core applications per puzzle and supervision step: T_recursion x (n_loops + 1)

    def metrics(self) -> dict:
        n = len(self.exact_per_step)
        return {"exact_acc": float(self.exact_per_step[-1]), "cell_acc": float(self.cell_per_step[-1]),
                "exact_acc_per_step": [round(float(v), 5) for v in self.exact_per_step],
                "cell_acc_per_step": [round(float(v), 5) for v in self.cell_per_step],
                "blank_acc": float(self.blank_per_step[-1]),
                "blank_acc_per_step": [round(float(v), 5) for v in self.blank_per_step],
                "exact_acc_act": self.exact_halted, "mean_steps_act": self.mean_steps_halted,
                "halt_rule": self.halt_rule,
                # compute per puzzle: all steps, and what ACT spends when halted puzzles leave the batch
                "core_calls_per_puzzle": n * self.core_calls_per_step,
                "core_calls_per_puzzle_act": round(self.mean_steps_halted * self.core_calls_per_step, 3),
                "n_sup_inference": n, "eval_samples": int(len(self.predictions))}


@torch.no_grad()
def evaluate_puzzles(model, split: PuzzleSplit, cfg, device, max_samples: int = 0,
                     batch_size: int = 0, halt_rule=None) -> PuzzleEval:
    """Run every held-out puzzle for ``n_sup_inference`` steps (all steps, as the paper's eval) and score each step."""
    n = len(split) if not max_samples else min(max_samples, len(split))
    batch_size = batch_size or max(cfg.train.batch_size, 64)
    n_sup = cfg.model.n_sup_inference
    exact = np.zeros(n_sup)
    cells, fills = np.zeros(n_sup), np.zeros(n_sup)
    total_cells = total_fills = 0
    preds, halted_preds, qs, steps_used, halted_exact = [], [], [], [], 0
    was_training = model.training
    model.eval()
    # a bar only on a terminal (disable=None): a full ARC test split is 10^5 puzzles x n_sup steps
    for start in tqdm(range(0, n, batch_size), desc=f"eval ({n:,} puzzles x {n_sup} steps)", unit="batch",
                      leave=False, disable=None):
        idx = np.arange(start, min(start + batch_size, n))
        batch = {"inputs": torch.from_numpy(split.inputs[idx].astype(np.int64)).to(device),
                 "puzzle_ids": torch.from_numpy(split.puzzle_ids[idx].astype(np.int64)).to(device)}
        labels = torch.from_numpy(split.labels[idx].astype(np.int64)).to(device)
        valid = labels != 0
        to_fill = valid & (labels != batch["inputs"])  # givens are copied; the blanks are the real work
        total_cells += int(valid.sum())
        total_fills += int(to_fill.sum())
        carry, tracker = None, HaltTracker(n_sup, halt_rule)
        for k in range(n_sup):
            out = model.step(batch, carry)
            carry, pred = out.carry, out.logits.argmax(-1)
            exact[k] += float(((pred == labels) | ~valid).all(-1).sum())
            cells[k] += float(((pred == labels) & valid).sum())
            fills[k] += float(((pred == labels) & to_fill).sum())
            tracker.update(pred, out.q_logit)
        halted_exact += int((((tracker.answer == labels) | ~valid).all(-1)).sum())
        preds.append(pred.cpu().numpy())
        halted_preds.append(tracker.answer.cpu().numpy())
        qs.append(out.q_logit.float().cpu().numpy())
        steps_used.append(tracker.steps.cpu().numpy())
    model.train(was_training)
    return PuzzleEval(exact / max(n, 1), cells / max(total_cells, 1), fills / max(total_fills, 1),
                      halted_exact / max(n, 1),
                      float(np.concatenate(steps_used).mean()) if steps_used else 0.0,
                      np.concatenate(preds) if preds else np.zeros((0, split.inputs.shape[1]), np.int64),
                      np.concatenate(halted_preds) if preds else np.zeros((0, split.inputs.shape[1]), np.int64),
                      np.concatenate(qs) if qs else np.zeros(0),
                      halt_rule=halt_rule.label() if halt_rule is not None else "q",
                      core_calls_per_step=model.T_recursion * (model.n_loops + 1))
