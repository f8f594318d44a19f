"""Sudoku: 81 cells, digits 1-9, exact accuracy and a validity check of every predicted grid."""

from __future__ import annotations

import numpy as np
import torch

from trmlab.errors import TrmError
from trmlab.tasks.puzzle import PuzzleTask


class SudokuTask(PuzzleTask):
    name = "sudoku"

    @property
    def data_config(self):
        from trmlab.data.sudoku import SudokuDataConfig
        return SudokuDataConfig

    def build_data(self, data_cfg, data_root):
        from trmlab.data.sudoku import build_sudoku
        return build_sudoku(data_cfg, out_root=data_root)

    def shapes(self, cfg) -> dict:
        return {"vocab_size": 11, "seq_len": 81, "num_puzzle_ids": 1}

    def solve(self, model, cfg, text: str, n_sup: int, out: str = "") -> int:
        """Print the solved grid, whether it is a valid solution of the givens, and the steps ACT used."""
        from trmlab.data.sudoku import (decode_tokens, encode_grid, format_grid, is_consistent,
                                        is_valid_solution, parse_puzzle, solve)
        puzzle = parse_puzzle(text)
        if not solve(puzzle, limit=1)[0]:  # the model would print some grid; no grid is right
            raise TrmError("puzzle: no two givens clash, but no grid completes them; it has no solution")
        batch = {"inputs": torch.from_numpy(encode_grid(puzzle).astype(np.int64))[None],
                 "puzzle_ids": torch.zeros(1, dtype=torch.long)}
        answer, steps = model.predict(batch, n_sup=n_sup, halt=cfg.model.halting == "act")
        grid = decode_tokens(answer[0].numpy())
        ok = is_valid_solution(grid) and is_consistent(puzzle, grid)
        print(format_grid(grid))
        print(f"valid: {'yes' if ok else 'no'}   supervision steps used: {int(steps[0])} of {n_sup}")
        return 0 if ok else 1

    def extra_metrics(self, result, data, cfg, split) -> dict:
        from trmlab.data.sudoku import decode_tokens, is_consistent, is_valid_solution
        inputs = data.splits[split].inputs[: len(result.predictions)]
        valid = [is_valid_solution(decode_tokens(p)) and is_consistent(decode_tokens(i), decode_tokens(p))
                 for i, p in zip(inputs, result.predictions)]
        # A valid grid that keeps the givens solves the puzzle even if it differs from the stored solution.
        return {"valid_solution_acc": float(np.mean(valid)) if valid else 0.0}
