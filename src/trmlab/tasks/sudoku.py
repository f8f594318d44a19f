"""Sudoku: 81 cells, digits 1-9, exact accuracy and a validity check of every predicted grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trmlab.errors import TrmError
from trmlab.tasks.base import SolveResult
from trmlab.tasks.puzzle import PuzzleTask


class SudokuTask(PuzzleTask):
    name = "sudoku"
    # generated data counts n_train; a CSV/HF source keeps subsample_size of its puzzles (the paper's flag)
    train_size_keys = ("data.n_train", "data.subsample_size")
    demo_preset = "sudoku"

    @property
    def data_config(self):
        from trmlab.data.sudoku import SudokuDataConfig
        return SudokuDataConfig

    def build_data(self, data_cfg, data_root):
        from trmlab.data.sudoku import build_sudoku
        return build_sudoku(data_cfg, out_root=data_root)

    def shapes(self, cfg) -> dict:
        return {"vocab_size": 11, "seq_len": 81, "num_puzzle_ids": 1}

    def solve(self, model, cfg, text: str, n_sup: int, out: str = "", data_root="data",
              test_time=None) -> SolveResult:
        """The solved grid, whether it is a valid solution of the givens, the steps ACT used and the compute.
        ``test_time`` = (halting rule, InferenceOptions) from eval/test_time.py (None: one plain chain)."""
        from trmlab.eval.test_time import solve_one, solve_summary
        from trmlab.data.sudoku import (decode_tokens, encode_grid, format_grid, is_consistent,
                                        is_valid_solution, parse_puzzle, solve)
        puzzle = parse_puzzle(text)
        if not solve(puzzle, limit=1)[0]:  # the model would print some grid; no grid is right
            raise TrmError("puzzle: no two givens clash, but no grid completes them; it has no solution")
        got = solve_one(model, self.name, encode_grid(puzzle), n_sup, *(test_time or ()))
        grid = decode_tokens(got["answer"])
        ok = is_valid_solution(grid) and is_consistent(puzzle, grid)
        return SolveResult([format_grid(grid), f"valid: {'yes' if ok else 'no'}   {solve_summary(got, n_sup)}"], ok)

    def extra_metrics(self, result, data, cfg, split) -> dict:
        from trmlab.data.sudoku import decode_tokens, is_consistent, is_valid_solution
        inputs = data.splits[split].inputs[: len(result.predictions)]
        valid = [is_valid_solution(decode_tokens(p)) and is_consistent(decode_tokens(i), decode_tokens(p))
                 for i, p in zip(inputs, result.predictions)]
        # A valid grid that keeps the givens solves the puzzle even if it differs from the stored solution.
        metrics = {"valid_solution_acc": float(np.mean(valid)) if valid else 0.0}
        if data.meta.get("breakdown"):  # a puzzle file (`trm eval --puzzles`): accuracy by blanks and by rating
            metrics.update(self._breakdown(result, data.splits[split], data.meta.get("ratings")))
        return metrics

    @staticmethod
    def _breakdown(result, split, ratings) -> dict:
        from trmlab.eval.puzzle_files import accuracy_by, blank_bin, rating_bin
        n = len(result.predictions)
        correct = (np.asarray(result.predictions) == split.labels[:n]).all(axis=1)
        out = {"exact_acc_by_blanks": accuracy_by(correct, (split.inputs[:n] == 1).sum(axis=1), blank_bin)}
        if ratings is not None:
            out["exact_acc_by_rating"] = accuracy_by(correct, np.asarray(ratings)[:n], rating_bin)
        return out

    def read_puzzle_file(self, cfg, path, data_root="data"):
        """A Sudoku CSV (any layout of data.sudoku.CSV_LAYOUTS) or a text file of puzzles, as a one-split dataset."""
        from trmlab.data.puzzles import PuzzleSplit
        from trmlab.data.sudoku import TOKEN_DTYPE, read_puzzle_file
        from trmlab.tasks.puzzle import PuzzleData
        f = read_puzzle_file(path)
        n = len(f.puzzles)
        split = PuzzleSplit(inputs=(f.puzzles + 1).astype(TOKEN_DTYPE), labels=(f.solutions + 1).astype(TOKEN_DTYPE),
                            puzzle_ids=np.zeros(n, np.int32), group_ids=np.arange(n, dtype=np.int32))
        meta = {"task": "sudoku", "breakdown": True, "ratings": f.ratings, "skipped": f.skipped}
        return PuzzleData(Path(path), {"test": split}, meta)
