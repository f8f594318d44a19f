"""Maze: find the unique shortest path from S to G on a grid (the paper's Maze-Hard is 30x30).

Beyond exact accuracy, every predicted grid is checked as a path (``data.maze.check_path``): ``path_valid`` is the
share of predictions that are a correct solution, ``path_shortest`` the share whose 'o' cells connect S to G in
the fewest steps (the two differ only when a prediction also rewrites walls, S or G).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np

from trmlab.data.maze import MAX_AUGMENTATIONS
from trmlab.errors import TrmError
from trmlab.tasks.base import SolveResult
from trmlab.tasks.puzzle import PuzzleTask


def _maze_size(data_cfg, data_root: str | Path = "data") -> int:
    """The maze side length a data config produces, without building the data when it can be avoided."""
    from trmlab.data.maze import HF_DATASET, load_csv
    from trmlab.data.puzzles import local_source, params_slug
    if data_cfg.source == "generate":
        return data_cfg.size
    meta = Path(data_root) / params_slug("maze", asdict(data_cfg)) / "metadata.json"
    if meta.exists():  # already built: the data knows best
        return int(json.loads(meta.read_text())["size"])
    src = local_source(data_cfg.source)
    if src is not None and src.is_dir():
        src = src / "train.csv"
    if src is not None and src.is_file():
        return int(load_csv(src, skipped=[])[0].shape[1])  # bad rows left out, as the build leaves them out
    # A Hugging Face name: Maze-Hard says its size in its name (sapientinc/maze-30x30-hard-1k).
    m = re.search(r"(\d+)x\1", data_cfg.source) or re.search(r"(\d+)x\1", HF_DATASET)
    return int(m.group(1))


def read_maze(text_or_file: str):
    """A maze for `trm solve`: a text file, the grid itself (lines), or one flat size*size string -> (grid, where)."""
    from trmlab.data.maze import CHARSET, parse_maze_text
    path = Path(text_or_file)
    is_file = len(text_or_file) < 4096 and "\n" not in text_or_file and path.is_file()
    where = str(path) if is_file else "maze text"
    if not is_file and "\n" not in text_or_file and set(text_or_file) - set(CHARSET):
        # neither a file nor a maze (a maze row holds only '# SGo'): most likely a mistyped file name
        raise TrmError(f"{text_or_file}: maze task: no such maze file (or pass the maze text itself)")
    try:
        text = path.read_text(encoding="utf-8") if is_file else text_or_file
    except UnicodeDecodeError as e:
        raise TrmError(f"{where}: maze task: not UTF-8 text (byte {e.start}); save the maze as UTF-8") from None
    except OSError as e:
        raise TrmError(f"{where}: maze task: cannot read the file ({e.strerror or type(e).__name__})") from None
    if "\n" not in text.strip():  # one flat row, as the Maze-Hard CSV stores mazes
        flat = text.strip("\r\n")
        size = math.isqrt(len(flat))
        if size > 1 and size * size == len(flat):
            text = "\n".join(flat[i * size:(i + 1) * size] for i in range(size))
    try:
        return parse_maze_text(text), where
    except TrmError as e:
        raise TrmError(f"{where}: maze task: {e}") from None


class MazeTask(PuzzleTask):
    name = "maze"
    train_size_keys = ("data.n_train",)
    max_augmentations = MAX_AUGMENTATIONS      # the 8 dihedral views of a square maze, less the maze itself
    demo_preset = "maze"

    @property
    def data_config(self):
        from trmlab.data.maze import MazeDataConfig
        return MazeDataConfig

    def build_data(self, data_cfg, data_root):
        from trmlab.data.maze import build_maze
        return build_maze(data_cfg, out_root=data_root)

    def shapes(self, cfg) -> dict:
        size = _maze_size(cfg.data)
        return {"vocab_size": 6, "seq_len": size * size, "num_puzzle_ids": 1}

    def extra_metrics(self, result, data, cfg, split) -> dict:
        from trmlab.data.maze import check_path
        inputs = data.splits[split].inputs[: len(result.predictions)]
        verdicts = [check_path(i, p) for i, p in zip(inputs, result.predictions)]
        share = {k: float(np.mean([v[k] for v in verdicts])) if verdicts else 0.0
                 for k in ("valid", "shortest", "connects")}
        return {"path_valid": share["valid"], "path_shortest": share["shortest"], "path_connects": share["connects"]}

    def read_puzzle_file(self, cfg, path, data_root="data"):
        """A Maze-Hard CSV as a one-split dataset; bad rows are left out and reported, as the builder does."""
        from trmlab.data.maze import load_csv, maze_to_tokens
        from trmlab.data.puzzles import PuzzleSplit
        from trmlab.tasks.puzzle import PuzzleData
        skipped: list[str] = []
        inputs, labels = load_csv(path, skipped)
        if inputs[0].size != cfg.model.seq_len:
            side = math.isqrt(cfg.model.seq_len)
            raise TrmError(f"{path}: the mazes are {inputs.shape[1]}x{inputs.shape[2]} but this run solves "
                           f"{side}x{side} mazes")
        n = len(inputs)
        split = PuzzleSplit(inputs=np.stack([maze_to_tokens(g) for g in inputs]),
                            labels=np.stack([maze_to_tokens(g) for g in labels]),
                            puzzle_ids=np.zeros(n, np.int32), group_ids=np.arange(n, dtype=np.int32))
        return PuzzleData(Path(path), {"test": split}, {"task": "maze", "skipped": skipped})

    def solve(self, model, cfg, text: str, n_sup: int, out: str = "", data_root="data",
              test_time=None) -> SolveResult:
        """The maze with the predicted path, whether it is a valid shortest path, the steps ACT used and the
        compute. ``test_time`` = (halting rule, InferenceOptions) from eval/test_time.py (None: one plain chain)."""
        from trmlab.eval.test_time import solve_one, solve_summary
        from trmlab.data.maze import check_path, maze_to_tokens, render_maze, tokens_to_text
        grid, where = read_maze(text)
        if grid.size != cfg.model.seq_len:
            side = math.isqrt(cfg.model.seq_len)
            raise TrmError(f"{where}: maze task: the maze is {grid.shape[0]}x{grid.shape[1]} but this model "
                           f"solves {side}x{side} mazes")
        # Encoded exactly as the dataset builder encodes its inputs: the flat token grid and the shared puzzle id 0.
        got = solve_one(model, self.name, maze_to_tokens(grid), n_sup, *(test_time or ()))
        pred = got["answer"].reshape(grid.shape)
        verdict = check_path(grid, pred)
        lines = [tokens_to_text(pred),
                 f"valid: {'yes' if verdict['valid'] else 'no'}   shortest: {'yes' if verdict['shortest'] else 'no'}   "
                 f"{solve_summary(got, n_sup)}"]
        if out:
            png = Path(out) if out.lower().endswith(".png") else Path(out) / "maze.png"
            render_maze(grid, pred, png, title=f"valid: {'yes' if verdict['valid'] else 'no'}")
            lines.append(f"picture: {png}")
        return SolveResult(lines, bool(verdict["valid"]))
