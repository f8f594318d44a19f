"""The task contract: what a task must provide, and the optional hooks with the defaults the trainer relies on.

A task is everything the one trainer does not know: how to build and load its data, its model, its batches, its
loss and its evaluation. The trainer and the CLI call these members and nothing else, so a new task subclasses
``Task``, fills in the required members, overrides the hooks it needs and registers itself in
``tasks/__init__.py`` (and a preset YAML); the loop, checkpoints, CLI and studies need no change.

Required (``NotImplementedError`` until a task provides them):
  data_config                the data section's dataclass
  build_data(data_cfg, root) build (or reuse) the dataset cache; returns its directory
  load(cfg, path)            read a built dataset; fills the model's shapes (``shapes``) from it
  build_model(cfg)           the model (a ``recursion.RecursiveModel`` or anything with the same ``forward``)
  sampler(data, seed)        what ``batch`` draws from: a pure function of the step, for exact resume
  batch(data, sampler, step, batch_size, rank, world_size)   this rank's slice of global batch ``step``
  losses(out, batch, cfg)    per-sample loss [B], exact-correct [B], per-sample metrics; ``batch`` also holds
                             ``sup_step`` [B], each sample's supervision step (0 = its first)
  evaluate(model, data, cfg, device, split, max_samples, out_dir, **options)   metrics on held-out data

Optional hooks (the defaults below): ``prepare`` (build + load), ``shapes``, ``init_weights``, ``save_run_files``,
``epoch_examples`` (what ``train.epochs`` counts), ``describe`` (the model line a run starts with), ``solve``
(``trm solve``), ``read_puzzle_file`` (``trm eval --puzzles``), and the class attributes ``metric`` /
``lower_is_better`` (what studies rank runs by) and ``test_time`` (whether ``evaluate`` takes the
test-time-compute options of ``trm eval``) and ``writes_files`` (whether ``evaluate`` writes into ``out_dir``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trmlab.errors import TrmError


@dataclass
class SolveResult:
    """What `trm solve` prints (the answer, its verdict, the compute, pictures written) and whether the answer is
    right: exit code 0 when solved (or valid), 1 when not."""
    lines: list[str]
    solved: bool


def fill_shapes(cfg, found: dict, where: str, exact: tuple = ()) -> None:
    """The one place model shapes are filled from data: each field of ``found`` the config left at 0 is set; one the
    config set must fit (at least as large; equal for the fields in ``exact``), else a one-line error."""
    for key, want in found.items():
        have = getattr(cfg.model, key)
        if not have:
            setattr(cfg.model, key, int(want))
        elif have < want or (key in exact and have != want):
            raise TrmError(f"model.{key}={have} does not fit {where} ({key}={want})")


class Task:
    name = "task"
    data_config: type = None
    metric = "exact_acc"       # the headline metric of an evaluation, as summary.json and studies name it
    lower_is_better = False    # True for a loss
    test_time = False          # evaluate() / solve() take a halting rule and test-time compute (Sudoku, Maze)
    writes_files = False       # evaluate() writes files into out_dir (ARC: submission.json, pictures)
    # What seed 004's data-scaling study varies, per task: the config keys that set the number of training puzzles,
    # and the most augmented views a puzzle has beyond itself (None: unbounded, as Sudoku's relabelings).
    train_size_keys: tuple = ()
    max_augmentations: int | None = None
    demo_preset = ""           # the CPU preset `trm study run --scale demo` runs this task's studies on

    # ----------------------------------------------------------------------------------------------- required
    def build_data(self, data_cfg, data_root: str | Path) -> Path:
        raise NotImplementedError

    def load(self, cfg, path):
        raise NotImplementedError

    def build_model(self, cfg):
        raise NotImplementedError

    def sampler(self, data, seed: int):
        raise NotImplementedError

    def batch(self, data, sampler, step: int, batch_size: int, rank: int = 0, world_size: int = 1) -> dict:
        raise NotImplementedError

    def losses(self, out, batch: dict, cfg):
        raise NotImplementedError

    def evaluate(self, model, data, cfg, device, split: str = "test", max_samples: int = 0, out_dir=None,
                 **options) -> dict:
        raise NotImplementedError

    # --------------------------------------------------------------------------------------- optional hooks
    def prepare(self, cfg, data_root: str | Path = "data"):
        """Build (or reuse) the dataset and load it (filling the model's shapes)."""
        return self.load(cfg, self.build_data(cfg.data, data_root))

    def shapes(self, cfg) -> dict:
        """Model fields the data determines ({"vocab_size": ..., "seq_len": ...}) without building it; {} = none."""
        return {}

    def init_weights(self, model, data) -> None:
        """Starting weights that depend on the data (the compressor: the data mean); a resume replaces them."""

    def save_run_files(self, data, run_dir: Path) -> None:
        """Files a run needs beside its weights (an LM: its tokenizer.json, for `trm generate`)."""

    def epoch_examples(self, data) -> float:
        raise TrmError(f"train.epochs is not defined for task '{self.name}'; set train.steps instead")

    def describe(self, model, cfg) -> str:
        from trmlab.recursion import model_summary
        return model_summary(model, cfg)

    def solve(self, model, cfg, text: str, n_sup: int, out: str = "", data_root="data",
              test_time=None) -> SolveResult:
        """The model's answer to one puzzle (a file or string the task reads), for `trm solve` to print."""
        raise TrmError(f"trm solve is not defined for task '{self.name}' (puzzle tasks: sudoku, maze, arc)")

    def read_puzzle_file(self, cfg, path, data_root="data"):
        raise TrmError(f"--puzzles {path}: the {self.name} task reads no puzzle files (sudoku, maze and arc do)")
