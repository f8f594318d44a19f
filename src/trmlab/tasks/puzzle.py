"""Puzzle tasks (Sudoku, Maze, ARC): grid tokens in, grid tokens out, exact-match accuracy on held-out puzzles."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trmlab.data.puzzles import PuzzleSplit, load_puzzle_dataset
from trmlab.errors import TrmError
from trmlab.tasks.base import Task, fill_shapes
from trmlab.train.losses import halt_loss, prediction_stats, token_losses


@dataclass
class PuzzleData:
    path: Path
    splits: dict[str, PuzzleSplit]
    meta: dict


class EpochSampler:
    """Global batch ``step`` = the next ``batch_size`` items of a fresh permutation per epoch, seeded by (seed, epoch).

    A pure function of the step number, so a resumed run sees exactly the batches it would have seen, and
    data-parallel ranks take disjoint slices of the same global batch.
    """

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perms = {epoch: torch.randperm(self.n, generator=g)}  # keep one epoch cached
        return self._perms[epoch]

    def indices(self, step: int, batch_size: int) -> torch.Tensor:
        out, pos = [], step * batch_size
        while len(out) < batch_size:
            epoch, offset = divmod(pos, self.n)
            take = self._perm(epoch)[offset: offset + batch_size - len(out)]
            out.extend(take.tolist())
            pos += len(take)
        return torch.tensor(out)


def rank_slice(batch_size: int, rank: int, world_size: int) -> slice:
    if batch_size % world_size:
        raise TrmError(f"train.batch_size ({batch_size}) must be divisible by the number of processes ({world_size})")
    per = batch_size // world_size
    return slice(rank * per, (rank + 1) * per)


def split_tensors(split: PuzzleSplit, idx) -> dict:
    return {"inputs": torch.from_numpy(split.inputs[idx].astype(np.int64)),
            "labels": torch.from_numpy(split.labels[idx].astype(np.int64)),
            "puzzle_ids": torch.from_numpy(split.puzzle_ids[idx].astype(np.int64))}


class PuzzleTask(Task):
    """Shared by every grid puzzle; subclasses name their data config and builder."""

    name = "puzzle"
    test_time = True   # evaluate() takes a halting rule and the test-time-compute options

    def load(self, cfg, path) -> PuzzleData:
        """Read a built dataset and fill the model's vocab_size / seq_len / num_puzzle_ids from it."""
        splits, meta = load_puzzle_dataset(path)
        if "train" not in splits or "test" not in splits:
            raise TrmError(f"{path}: dataset needs a train and a test split, found {sorted(splits)}")
        fill_shapes(cfg, {k: int(meta[k]) for k in ("vocab_size", "seq_len", "num_puzzle_ids")},
                    f"the dataset at {path}", exact=("seq_len",))
        return PuzzleData(Path(path), splits, meta)

    def base_puzzles(self, data: PuzzleData) -> int:
        """How many distinct puzzles the training views were made from (Sudoku, Maze: one group per puzzle)."""
        return len(np.unique(data.splits["train"].group_ids))

    def epoch_examples(self, data: PuzzleData) -> float:
        """Training examples in one epoch as the paper counts them: one augmented view of every base puzzle per
        epoch, times the examples a view has (1 for Sudoku and Maze; an ARC view holds its task's demo pairs)."""
        train = data.splits["train"]
        views = len(np.unique(train.puzzle_ids)) if int(data.meta["num_puzzle_ids"]) > 1 else len(train)
        return self.base_puzzles(data) * len(train) / views

    def build_model(self, cfg):
        from trmlab.models.puzzle import build_puzzle_model
        return build_puzzle_model(cfg.model)

    def sampler(self, data: PuzzleData, seed: int) -> EpochSampler:
        return EpochSampler(len(data.splits["train"]), seed)

    def batch(self, data: PuzzleData, sampler: EpochSampler, step: int, batch_size: int,
              rank: int = 0, world_size: int = 1) -> dict:
        idx = sampler.indices(step, batch_size)[rank_slice(batch_size, rank, world_size)]
        return split_tensors(data.splits["train"], idx.numpy())

    def losses(self, out, batch: dict, cfg):
        """Per-sample loss [B] (token loss + weighted halting loss), exact-correct [B], and metric sums."""
        tok = token_losses(out.logits, batch["labels"], cfg.train.loss)
        n_hit, n_valid, correct = prediction_stats(out.logits, batch["labels"])
        loss = tok
        if cfg.model.halting == "act":
            loss = loss + cfg.train.halt_loss_weight * halt_loss(out.q_logit, correct)
        return loss, correct, {"token_loss": tok.detach(), "cell_acc": (n_hit / n_valid.clamp(min=1)).float()}

    @torch.no_grad()
    def evaluate(self, model, data: PuzzleData, cfg, device, split: str = "test", max_samples: int = 0,
                 out_dir=None, halt_rule=None) -> dict:
        """``halt_rule`` (eval/halting.py) scores exact_acc_act. None (a training run's evaluation): a rule calibrated
        now on held-out views of the training puzzles, as many as the puzzles evaluated (200 to 1000); `trm eval`
        passes the run's stored calibration (halting.json)."""
        from trmlab.eval.halting import calibrated_rule
        from trmlab.eval.puzzle import evaluate_puzzles
        if halt_rule is None:
            n = len(data.splits[split]) if not max_samples else min(max_samples, len(data.splits[split]))
            halt_rule = calibrated_rule(model, cfg, data, device, n_views=min(1000, max(200, n)))
        result = evaluate_puzzles(model, data.splits[split], cfg, device, max_samples=max_samples,
                                  halt_rule=halt_rule)
        metrics = result.metrics()
        metrics.update(self.extra_metrics(result, data, cfg, split))
        return metrics

    def extra_metrics(self, result, data, cfg, split) -> dict:
        return {}
