"""Validity-preserving views of Sudoku and Maze puzzles, for augmentation voting and halting calibration.

A view permutes the cells and relabels the tokens, so it maps a puzzle and its solution to another puzzle and its
solution, and it is undone exactly. The transforms are the dataset builders':

- Sudoku (``data.sudoku.augment_many``): relabel the digits 1-9, maybe transpose, permute the three bands and the
  rows inside each band, the three stacks and the columns inside each stack;
- Maze (``data.maze.dihedral``): the 8 symmetries of the square (identity, 3 rotations, transpose + rotations).

View 0 of every puzzle is the identity, so one view is the plain evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trmlab.errors import TrmError

VIEW_TASKS = ("sudoku", "maze")


@dataclass
class Views:
    """One view per row: ``view[i] = tokens[grid[positions[i]]]`` for a grid of ``L`` cell tokens."""

    positions: np.ndarray  # [n, L] which cell of the original each cell of the view comes from
    tokens: np.ndarray     # [n, vocab] the view's token for each original token

    def apply(self, grids: np.ndarray) -> np.ndarray:
        """[n, L] grids (row i seen through view i) -> [n, L]."""
        moved = np.take_along_axis(np.asarray(grids, np.int64), self.positions, axis=1)
        return np.take_along_axis(self.tokens, moved, axis=1)

    def invert(self, grids: np.ndarray) -> np.ndarray:
        """Undo ``apply``: a prediction made in view i, mapped back to the original frame."""
        untoken = np.take_along_axis(np.argsort(self.tokens, axis=1), np.asarray(grids, np.int64), axis=1)
        return np.take_along_axis(untoken, np.argsort(self.positions, axis=1), axis=1)


def _line_orders(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 9] row (or column) orders: the 3 bands permuted, then the 3 lines inside each band."""
    bands = rng.permuted(np.tile(np.arange(3), (n, 1)), axis=1)
    inner = rng.permuted(np.tile(np.arange(3), (n * 3, 1)), axis=1).reshape(n, 3, 3)
    return (bands[:, :, None] * 3 + inner).reshape(n, 9)


def sudoku_views(n: int, rng: np.random.Generator) -> Views:
    """``n`` random Sudoku transforms. Tokens: 0 PAD and 1 blank stay; digit d (token d + 1) -> perm[d] + 1."""
    rows, cols = _line_orders(rng, n), _line_orders(rng, n)
    transpose = rng.random(n) < 0.5
    # view cell (r, c) = original (rows[r], cols[c]), or (cols[c], rows[r]) after a transpose
    straight = rows[:, :, None] * 9 + cols[:, None, :]
    flipped = cols[:, None, :] * 9 + rows[:, :, None]
    positions = np.where(transpose[:, None, None], flipped, straight).reshape(n, 81)
    digits = rng.permuted(np.tile(np.arange(1, 10), (n, 1)), axis=1)
    tokens = np.concatenate([np.tile([0, 1], (n, 1)), digits + 1], axis=1)
    return Views(positions, tokens)


def maze_views(ks, seq_len: int, vocab: int | None = None) -> Views:
    """The dihedral symmetries ``ks`` (0..7 each) of a flat square maze; tokens are unchanged."""
    from trmlab.data.maze import VOCAB_SIZE, dihedral
    vocab = vocab or VOCAB_SIZE
    side = int(round(seq_len ** 0.5))
    index = np.arange(seq_len).reshape(side, side)
    positions = np.stack([dihedral(index, int(k)).reshape(seq_len) for k in ks]) if len(ks) else \
        np.zeros((0, seq_len), np.int64)
    return Views(positions.astype(np.int64), np.tile(np.arange(vocab), (len(ks), 1)))


def identity_views(n: int, seq_len: int, vocab: int) -> Views:
    return Views(np.tile(np.arange(seq_len), (n, 1)), np.tile(np.arange(vocab), (n, 1)))


def voting_views(task_name: str, n_puzzles: int, n_views: int, seq_len: int, vocab: int,
               rng: np.random.Generator) -> Views:
    """``n_views`` views of each of ``n_puzzles`` puzzles, puzzle-major (row = puzzle * n_views + view); view 0 of
    each puzzle is the identity. Sudoku: random transforms; Maze: the symmetries 0..n_views-1 (at most 8)."""
    if n_views < 1:
        raise TrmError(f"--views {n_views}: must be >= 1 (1 = the puzzle as given)")
    if n_views > 1 and task_name not in VIEW_TASKS:
        raise TrmError(f"--views {n_views}: augmentation voting is for {' and '.join(VIEW_TASKS)} "
                       f"(ARC votes over its dataset's own views); this is a {task_name} run")
    if task_name == "maze":
        if n_views > 8:
            raise TrmError(f"--views {n_views}: a maze has 8 symmetries (use at most 8)")
        return maze_views(np.tile(np.arange(n_views), n_puzzles), seq_len, vocab)
    views = identity_views(n_puzzles * n_views, seq_len, vocab)
    if task_name == "sudoku" and n_views > 1:
        rest = np.arange(n_puzzles * n_views) % n_views != 0
        drawn = sudoku_views(int(rest.sum()), rng)
        views.positions[rest], views.tokens[rest] = drawn.positions, drawn.tokens
    return views


def held_out_views(task_name: str, train_split, n: int, seed: int = 0):
    """(inputs, labels, description): ``n`` fresh views of training puzzles, for halting calibration.

    Each drawn training puzzle (its original row, not one of its stored augmentations) is seen through one new
    random view: a Sudoku transform (2 x 6^8 x 9! of them: a coincidence with a trained augmentation is
    negligible) or a non-identity maze symmetry (unseen in training when the run's data.num_aug is 0).
    """
    if task_name not in VIEW_TASKS:
        raise TrmError(f"halting calibration needs held-out views: it is for {' and '.join(VIEW_TASKS)}, "
                       f"not {task_name}")
    rng = np.random.default_rng([seed, 7])
    _, first = np.unique(train_split.group_ids, return_index=True)  # the original row of each base puzzle
    pick = rng.choice(first, size=n, replace=len(first) < n)
    inputs, labels = train_split.inputs[pick].astype(np.int64), train_split.labels[pick].astype(np.int64)
    if task_name == "sudoku":
        views = sudoku_views(n, rng)
        about = f"a fresh random transform of each of {n} training Sudoku puzzles (seed {seed})"
    else:
        views = maze_views(rng.integers(1, 8, size=n), inputs.shape[1])
        about = (f"a non-identity symmetry of each of {n} training mazes (seed {seed}); unseen in training only "
                 "when the run's data.num_aug is 0")
    return views.apply(inputs), views.apply(labels), about
