"""Sudoku data: a fast solver, a unique-solution puzzle generator, validity-preserving augmentation, CSV/HF import.

Token convention (as the TRM paper): input token = cell value + 1, so PAD = 0 (unused), blank = 1 and digits
1..9 = 2..10; labels are the solution digit + 1 for all 81 cells. vocab_size = 11, seq_len = 81.

Grids are flat ``np.ndarray[81]`` of ints 0..9 (0 = blank), row-major.
"""

from __future__ import annotations

import csv
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trmlab.data.puzzles import PuzzleSplit, absolute_source, cached_dataset, save_puzzle_dataset
from trmlab.errors import TrmError

VOCAB_SIZE = 11
SEQ_LEN = 81
PAD_ID = 0
IGNORE_LABEL_ID = 0
TOKEN_DTYPE = np.uint8  # 11 tokens fit a byte; a 1M-row augmented set stays ~80 MB per array (cast to long to embed)

# -----------------------------------------------------------------------------
# tokens

def encode_grid(grid) -> np.ndarray:
    """Grid values 0..9 (0 = blank) -> tokens 1..10."""
    grid = np.asarray(grid)
    if grid.size != 81 or grid.min() < 0 or grid.max() > 9:
        raise TrmError(f"encode_grid: expected 81 values in 0..9, got shape {grid.shape}")
    return (grid.reshape(81) + 1).astype(TOKEN_DTYPE)


def decode_tokens(tokens) -> np.ndarray:
    """Tokens 1..10 -> grid values 0..9; anything else (PAD, junk predictions) decodes as blank."""
    t = np.asarray(tokens).reshape(-1).astype(np.int64)
    return np.where((t >= 1) & (t <= 10), t - 1, 0).astype(np.int8)

# -----------------------------------------------------------------------------
# solver: bitmask candidates (bit d set = digit d used), most-constrained cell first, naked singles propagated

ROW = tuple(i // 9 for i in range(81))
COL = tuple(i % 9 for i in range(81))
BOX = tuple((i // 27) * 3 + (i % 9) // 3 for i in range(81))
ALL = 0b1111111110  # bits 1..9
DIGITS = tuple(tuple(d for d in range(1, 10) if m >> d & 1) for m in range(1024))  # digits in a candidate mask


class _Search:
    """Backtracking state; masks are undone on the way back so no copies are made."""

    def __init__(self, cells: list[int], limit: int, rand: random.Random | None = None):
        self.cells = cells
        self.rows, self.cols, self.boxes = [0] * 9, [0] * 9, [0] * 9
        self.limit, self.rand = limit, rand
        self.solutions: list[list[int]] = []
        self.backtracks = 0
        self.ok = True
        for i, v in enumerate(cells):
            if v:
                bit = 1 << v
                if (self.rows[ROW[i]] | self.cols[COL[i]] | self.boxes[BOX[i]]) & bit:
                    self.ok = False  # the givens already clash: no solution
                self._set(i, v)

    def _set(self, i: int, v: int) -> None:
        bit = 1 << v
        self.cells[i] = v
        self.rows[ROW[i]] |= bit
        self.cols[COL[i]] |= bit
        self.boxes[BOX[i]] |= bit

    def _unset(self, i: int) -> None:
        bit = ~(1 << self.cells[i])
        self.cells[i] = 0
        self.rows[ROW[i]] &= bit
        self.cols[COL[i]] &= bit
        self.boxes[BOX[i]] &= bit

    def run(self, empties: list[int]) -> None:
        cells, rows, cols, boxes = self.cells, self.rows, self.cols, self.boxes
        placed = []  # cells filled at this level, undone before returning
        dead = False
        while True:
            # one sweep: place every naked single found, remember the most constrained remaining cell
            empties = [i for i in empties if not cells[i]]
            best, best_n, progress = -1, 10, False
            for i in empties:
                m = ALL & ~(rows[ROW[i]] | cols[COL[i]] | boxes[BOX[i]])
                n = len(DIGITS[m])
                if n == 0:
                    dead = True
                    break
                if n == 1:
                    self._set(i, DIGITS[m][0])
                    placed.append(i)
                    progress = True
                elif n < best_n:
                    best, best_n = i, n
            if dead or not progress:
                break
        if dead:
            self.backtracks += 1
        elif best < 0:  # nothing left to fill
            self.solutions.append(list(cells))
        else:
            m = ALL & ~(rows[ROW[best]] | cols[COL[best]] | boxes[BOX[best]])
            digits = list(DIGITS[m])
            if self.rand is not None:
                self.rand.shuffle(digits)
            for d in digits:
                self._set(best, d)
                self.run(empties)
                self._unset(best)
                if len(self.solutions) >= self.limit:
                    break
        for i in placed:
            self._unset(i)


def _check_grid(grid, what: str = "grid") -> np.ndarray:
    g = np.asarray(grid)
    if g.size != 81:
        raise TrmError(f"{what}: expected 81 cells, got {g.size}")
    g = g.reshape(81).astype(np.int64)
    if g.min() < 0 or g.max() > 9:
        raise TrmError(f"{what}: cell values must be 0..9 (0 = blank)")
    return g


def solve(grid, limit: int = 2, rand: random.Random | None = None) -> tuple[list[np.ndarray], int]:
    """Find up to ``limit`` solutions of ``grid`` (81 values, 0 = blank); returns (solutions, backtracks).

    A puzzle is unique iff ``len(solve(p, 2)[0]) == 1``. ``backtracks`` counts dead ends hit by the search,
    a difficulty measure (0 = solvable by naked singles alone). ``rand`` shuffles the branching order.
    """
    if limit < 1:
        raise TrmError(f"solve: limit must be >= 1, got {limit}")
    g = _check_grid(grid)
    s = _Search([int(v) for v in g], limit, rand)
    if s.ok:
        s.run([i for i in range(81) if not g[i]])
    return [np.array(sol, dtype=np.int8) for sol in s.solutions], s.backtracks


def _groups(g: np.ndarray) -> np.ndarray:
    """The 27 units (rows, columns, boxes) of a 9x9 grid as a [..., 27, 9] array."""
    g = g.reshape(*g.shape[:-1], 9, 9)
    boxes = g.reshape(*g.shape[:-2], 3, 3, 3, 3).swapaxes(-3, -2).reshape(*g.shape[:-2], 9, 9)
    return np.concatenate([g, g.swapaxes(-1, -2), boxes], axis=-2)


def _valid_rows(sols: np.ndarray) -> np.ndarray:
    """Vectorised validity for [N, 81] solutions: every unit is exactly 1..9."""
    return (np.sort(_groups(sols), axis=-1) == np.arange(1, 10)).all(axis=(-1, -2))


def is_valid_solution(grid) -> bool:
    """True iff every row, column and box holds 1..9 exactly once (so no blanks)."""
    g = np.asarray(grid)
    return g.size == 81 and bool(_valid_rows(g.reshape(1, 81).astype(np.int64))[0])


def is_consistent(puzzle, solution) -> bool:
    """True iff ``solution`` keeps every given of ``puzzle``."""
    p, s = np.asarray(puzzle).reshape(81), np.asarray(solution).reshape(81)
    return bool(((p == 0) | (p == s)).all())

# -----------------------------------------------------------------------------
# generator

def random_full_grid(rng: np.random.Generator) -> np.ndarray:
    """A random complete grid: the three diagonal boxes are independent, so fill them with random permutations,
    then complete the rest by backtracking in random digit order."""
    cells = np.zeros((9, 9), dtype=np.int64)
    for b in range(3):
        cells[3 * b:3 * b + 3, 3 * b:3 * b + 3] = (rng.permutation(9) + 1).reshape(3, 3)
    sols, _ = solve(cells.reshape(81), limit=1, rand=random.Random(int(rng.integers(2**63))))
    return sols[0]


def generate_puzzle(rng: np.random.Generator, n_blanks: int, max_tries: int = 50):
    """A puzzle with exactly ``n_blanks`` blanks and a unique solution; returns (puzzle, solution, rating).

    First try a few random sets of ``n_blanks`` cells at once (nearly always unique up to ~45 blanks); failing that,
    blank cells one by one in random order, skipping any whose removal would make the puzzle ambiguous (slower, but
    reaches ~55+ blanks). rating = backtracks the solver needed to solve the puzzle and prove it unique.
    """
    if not 0 <= n_blanks <= 64:
        raise TrmError(f"n_blanks must be in 0..64 (a unique Sudoku has at least 17 givens), got {n_blanks}")
    for _ in range(max_tries):
        solution = random_full_grid(rng)
        for _ in range(5):
            puzzle = solution.copy()
            puzzle[rng.choice(81, size=n_blanks, replace=False)] = 0
            sols, backtracks = solve(puzzle, limit=2)
            if len(sols) == 1:
                return puzzle, solution, backtracks
        puzzle, blanks = solution.copy(), 0
        for i in rng.permutation(81):
            puzzle[i] = 0
            sols, bt = solve(puzzle, limit=2)
            if len(sols) != 1:
                puzzle[i] = solution[i]  # this cell is needed for uniqueness: keep it given
                continue
            blanks, backtracks = blanks + 1, bt
            if blanks == n_blanks:
                return puzzle, solution, backtracks
    raise TrmError(f"could not generate a unique puzzle with {n_blanks} blanks in {max_tries} grids; "
                   "use fewer blanks (random grids rarely have unique puzzles above ~58 blanks)")

# -----------------------------------------------------------------------------
# augmentation (the paper's shuffle_sudoku): digit relabel, transpose, band/row and stack/column permutations

def _line_perms(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 9] orders of rows (or columns): permute the 3 bands, then the 3 rows inside each band."""
    bands = rng.permuted(np.tile(np.arange(3), (n, 1)), axis=1)
    inner = rng.permuted(np.tile(np.arange(3), (n * 3, 1)), axis=1).reshape(n, 3, 3)
    return (bands[:, :, None] * 3 + inner).reshape(n, 9)


def augment_many(puzzle, solution, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` independent random augmentations of one (puzzle, solution) pair, as two [n, 81] arrays."""
    digit_map = np.concatenate([np.zeros((n, 1), np.int64),
                                rng.permuted(np.tile(np.arange(1, 10), (n, 1)), axis=1)], axis=1)
    transpose = rng.random(n) < 0.5
    rows, cols = _line_perms(rng, n), _line_perms(rng, n)
    out = []
    for g in (puzzle, solution):
        g = np.broadcast_to(np.asarray(g, dtype=np.int64).reshape(1, 9, 9), (n, 9, 9))
        g = np.where(transpose[:, None, None], g.transpose(0, 2, 1), g)
        g = np.take_along_axis(g, rows[:, :, None], axis=1)
        g = np.take_along_axis(g, cols[:, None, :], axis=2)
        out.append(np.take_along_axis(digit_map, g.reshape(n, 81), axis=1).astype(np.int8))  # blank 0 -> 0
    return out[0], out[1]


def augment(puzzle, solution, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One random validity-preserving transform, applied identically to puzzle and solution."""
    p, s = augment_many(puzzle, solution, rng, 1)
    return p[0], s[0]

# -----------------------------------------------------------------------------
# puzzle files: the CSV layouts in use ('.' or '0' = blank) and plain text, one puzzle per line

# (puzzle column, solution column) of each CSV layout read; `source` and `rating` columns are optional in all of them.
CSV_LAYOUTS = (("question", "answer"),   # sapientinc/sudoku-extreme train.csv / test.csv: source,question,answer,rating
               ("q", "a"),               # trmlab's older files
               ("puzzle", "solution"),   # a common layout elsewhere
               ("quizzes", "solutions")) # Kaggle's "1 million Sudoku games"
LAYOUT_NAMES = "source,question,answer,rating (Sudoku-Extreme), q,a, puzzle,solution or quizzes,solutions"
_CHUNK = 100_000  # rows parsed per vectorised batch, bounding the memory of the string lists


@dataclass
class SudokuFile:
    """The puzzles of one file, checked: [N, 81] int8 grids (0 = blank), ratings [N] or None when the file has none,
    and a message per line left out (text files: no solution, or several)."""
    puzzles: np.ndarray
    solutions: np.ndarray
    ratings: np.ndarray | None
    skipped: list[str]


def _strings_to_grids(strings: list[str], lines: list[int], path, col: str) -> np.ndarray:
    """[N] strings of 81 chars -> [N, 81] int8, or TrmError naming the first bad line and character."""
    raw = np.frombuffer("".join(strings).encode("ascii", errors="replace"), dtype=np.uint8).reshape(-1, 81)
    raw = np.where(raw == ord("."), ord("0"), raw).astype(np.int16) - ord("0")
    bad = (raw < 0) | (raw > 9)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise TrmError(f"{path}: line {lines[r]}: column {col!r} has bad character {strings[r][c]!r} "
                       f"at position {c + 1} (expected '.', '0'-'9')")
    return raw.astype(np.int8)


def _parse_chunk(path, lines, qs, as_, ratings, names):
    for name, strs in zip(names, (qs, as_)):
        for line, s in zip(lines, strs):
            if len(s) != 81:
                raise TrmError(f"{path}: line {line}: column {name!r} has {len(s)} characters, expected 81")
    p = _strings_to_grids(qs, lines, path, names[0])
    s = _strings_to_grids(as_, lines, path, names[1])
    bad = ~_valid_rows(s) | ((p != 0) & (p != s)).any(axis=1)
    if bad.any():
        r = int(np.argmax(bad))
        why = "is not a valid solution" if not _valid_rows(s[r:r + 1])[0] else "contradicts the puzzle's givens"
        raise TrmError(f"{path}: line {lines[r]}: {names[1]} {why}")
    return p, s, np.array(ratings, dtype=np.int64)


def csv_layout(header: list[str], path) -> tuple[int, int, int | None]:
    """Column indices (puzzle, solution, rating or None) of a CSV header in one of ``CSV_LAYOUTS``; else TrmError
    naming the columns found and the layouts read."""
    names = [h.strip().lower() for h in header]
    for puzzle, solution in CSV_LAYOUTS:
        if puzzle in names and solution in names:
            return names.index(puzzle), names.index(solution), names.index("rating") if "rating" in names else None
    raise TrmError(f"{path}: line 1: header has columns {','.join(header) or '(none)'}; a Sudoku CSV has a puzzle "
                   f"and a solution column: {LAYOUT_NAMES} (rating optional)")


def read_csv(path) -> SudokuFile:
    """Read a Sudoku CSV in any of ``CSV_LAYOUTS``; every row is checked (81 cells, a valid solution keeping the
    givens) and a bad one raises TrmError naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise TrmError(f"{path}: no such CSV file")
    parts, qs, as_, ratings, lines = [], [], [], [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of "source"
            reader = csv.reader(f)
            header = next(reader, [])
            iq, ia, ir = csv_layout(header, path)
            names = (header[iq].strip(), header[ia].strip())
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    raise TrmError(f"{path}: line {reader.line_num}: {len(row)} fields, expected {len(header)}")
                rating = 0
                if ir is not None:
                    try:
                        rating = int(float(row[ir]))
                    except ValueError:
                        raise TrmError(f"{path}: line {reader.line_num}: rating {row[ir]!r} is not a number") from None
                qs.append(row[iq].strip())
                as_.append(row[ia].strip())
                ratings.append(rating)
                lines.append(reader.line_num)
                if len(qs) >= _CHUNK:
                    parts.append(_parse_chunk(path, lines, qs, as_, ratings, names))
                    qs, as_, ratings, lines = [], [], [], []
    except UnicodeDecodeError as e:
        raise TrmError(f"{path}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8") from None
    except csv.Error as e:  # e.g. a NUL byte: not a CSV at all
        raise TrmError(f"{path}: not a readable CSV ({e})") from None
    if qs:
        parts.append(_parse_chunk(path, lines, qs, as_, ratings, names))
    if not parts:
        raise TrmError(f"{path}: no puzzles in the file")
    p, s, r = (np.concatenate(x) for x in zip(*parts))
    return SudokuFile(p, s, r if ir is not None else None, [])


def load_csv(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a Sudoku CSV (see ``read_csv``); returns puzzles [N, 81], solutions [N, 81] (int8, 0 = blank), ratings
    [N] (0 where the file has no rating column)."""
    f = read_csv(path)
    return f.puzzles, f.solutions, f.ratings if f.ratings is not None else np.zeros(len(f.puzzles), np.int64)


def read_text(path) -> SudokuFile:
    """A text file with one 81-character puzzle per line ('.' or '0' = blank; blank lines ignored), solved by the
    project's solver. A line of the wrong length or with another character raises TrmError naming file and line; a
    puzzle with no solution or several is left out, its line reported in ``skipped``."""
    path = Path(path)
    puzzles, solutions, skipped = [], [], []
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as e:
        raise TrmError(f"{path}: not UTF-8 text (byte {e.start}); save the file as UTF-8") from None
    except OSError as e:
        raise TrmError(f"{path}: cannot read the file ({e.strerror or type(e).__name__})") from None
    for n, text in tqdm(lines, desc="solve puzzles", unit="puzzle", leave=False, disable=len(lines) < 1000):
        if len(text) != 81:
            raise TrmError(f"{path}: line {n}: {len(text)} characters, expected 81 (one puzzle per line, "
                           f"'.' or '0' = blank)")
        bad = next((i for i, ch in enumerate(text) if ch != "." and not "0" <= ch <= "9"), None)
        if bad is not None:
            raise TrmError(f"{path}: line {n}: bad character {text[bad]!r} at position {bad + 1} "
                           f"(expected '.', '0'-'9')")
        grid = np.array([0 if ch == "." else int(ch) for ch in text], dtype=np.int8)
        found, _ = solve(grid, limit=2)
        if len(found) != 1:
            skipped.append(f"{path}: line {n}: {'no solution' if not found else 'several solutions'}")
            continue
        puzzles.append(grid)
        solutions.append(found[0])
    if not puzzles:
        raise TrmError(f"{path}: no puzzle with exactly one solution"
                       + (f" (all {len(skipped)} left out; first: {skipped[0]})" if skipped else " (empty file)"))
    return SudokuFile(np.stack(puzzles), np.stack(solutions), None, skipped)


def read_puzzle_file(path) -> SudokuFile:
    """A CSV in any of ``CSV_LAYOUTS`` (a ``.csv`` name or a first line with a comma), else a text file of puzzles."""
    path = Path(path)
    if not path.is_file():
        raise TrmError(f"{path}: no such puzzle file")
    if path.suffix.lower() == ".csv":
        return read_csv(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        first = next((line for line in f if line.strip()), "")
    return read_csv(path) if "," in first else read_text(path)


def load_hf(name: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Download ``{split}.csv`` of the HF dataset repo ``name`` (e.g. sapientinc/sudoku-extreme) and read it."""
    try:
        from huggingface_hub import hf_hub_download
        path = hf_hub_download(repo_id=name, filename=f"{split}.csv", repo_type="dataset")
    except Exception as e:  # offline, missing repo, auth: all the same to the user
        raise TrmError(f"cannot download {split}.csv of dataset {name} ({type(e).__name__}); "
                       "pass a local CSV with data.source=path/to.csv") from None
    return load_csv(path)

# -----------------------------------------------------------------------------
# text in/out

_SEPARATORS = set(" \t\r\n|-+")


def parse_puzzle(text: str) -> np.ndarray:
    """An 81-char puzzle string ('.' or '0' = blank) -> grid[81]; whitespace and | - + are ignored, so a pasted
    9-line grid works too."""
    digits = []
    for pos, ch in enumerate(text, 1):
        if ch in _SEPARATORS:
            continue
        if ch == "." or "0" <= ch <= "9":
            digits.append(0 if ch == "." else int(ch))
        else:
            raise TrmError(f"puzzle: bad character {ch!r} at position {pos} (expected '.', '0'-'9')")
    if len(digits) != 81:
        raise TrmError(f"puzzle: found {len(digits)} cells, expected 81")
    grid = np.array(digits, dtype=np.int8)
    clash = givens_conflict(grid)
    if clash:   # no grid satisfies these givens, so any "solution" the model prints would be meaningless
        raise TrmError(f"puzzle: contradictory givens, {clash}; it has no solution")
    return grid


# the 27 units a digit may appear in only once, named as a user counts them (1-based, boxes left to right)
_UNITS = ([(f"row {r + 1}", [9 * r + c for c in range(9)]) for r in range(9)]
          + [(f"column {c + 1}", [9 * r + c for r in range(9)]) for c in range(9)]
          + [(f"box {b + 1}", [9 * (3 * (b // 3) + r) + 3 * (b % 3) + c for r in range(3) for c in range(3)])
             for b in range(9)])


def givens_conflict(grid) -> str | None:
    """The first digit given twice in a row, column or box, e.g. '5 twice in row 1 (r1c1 and r1c5)'; None if the
    givens obey the rules."""
    g = _check_grid(grid)
    for unit, cells in _UNITS:
        seen: dict[int, int] = {}
        for i in (i for i in cells if g[i]):
            d = int(g[i])
            if d in seen:
                j = seen[d]
                return f"{d} twice in {unit} (r{j // 9 + 1}c{j % 9 + 1} and r{i // 9 + 1}c{i % 9 + 1})"
            seen[d] = i
    return None


def format_grid(grid) -> str:
    """A readable 9x9 grid with box separators; blanks print as '.'."""
    g = _check_grid(grid)
    out = []
    for r in range(9):
        if r and r % 3 == 0:
            out.append("------+-------+------")
        row = [str(v) if v else "." for v in g[9 * r:9 * r + 9]]
        out.append(" | ".join(" ".join(row[c:c + 3]) for c in (0, 3, 6)))
    return "\n".join(out)

# -----------------------------------------------------------------------------
# dataset builder

@dataclass
class SudokuDataConfig:
    source: str = "generate"     # "generate", a local CSV path (any of CSV_LAYOUTS), or a HF dataset name
                                 # (e.g. sapientinc/sudoku-extreme)
    n_train: int = 1000          # base puzzles for training (generate mode)
    n_test: int = 200            # held-out base puzzles (never augmented, never share a base puzzle with train)
    min_blanks: int = 30
    max_blanks: int = 40
    min_rating: int = 0
    subsample_size: int = 0      # CSV/HF: keep this many training puzzles at random (0 = all), as the paper's --subsample-size
    num_aug: int = 0             # augmented copies per training puzzle (the paper uses 1000); index 0 is the original
    seed: int = 0

    def __post_init__(self):
        def need(ok, field, rule):
            if not ok:
                raise TrmError(f"data.{field}={getattr(self, field)!r}: {rule}")
        need(isinstance(self.source, str) and self.source.strip() != "", "source",
             "must be 'generate', a CSV path or a HF dataset name")
        for f in ("n_train", "n_test", "min_blanks", "max_blanks", "min_rating", "subsample_size", "num_aug", "seed"):
            need(isinstance(getattr(self, f), int) and not isinstance(getattr(self, f), bool), f, "must be an integer")
        need(self.n_train > 0, "n_train", "must be > 0")
        need(self.n_test >= 0, "n_test", "must be >= 0")
        need(0 <= self.min_blanks <= 64, "min_blanks", "must be in 0..64")
        need(self.min_blanks <= self.max_blanks <= 64, "max_blanks", f"must be in min_blanks({self.min_blanks})..64")
        need(self.min_rating >= 0, "min_rating", "must be >= 0")
        self.source = absolute_source(self.source)
        need(self.subsample_size >= 0, "subsample_size", "must be >= 0 (0 = keep all)")
        need(self.num_aug >= 0, "num_aug", "must be >= 0")
        need(self.seed >= 0, "seed", "must be >= 0")


def _generate_split(cfg: SudokuDataConfig, n: int, rng: np.random.Generator, desc: str, exclude: set):
    """``n`` distinct generated puzzles, none of whose grids is in ``exclude`` (the test set's)."""
    puzzles, solutions, ratings, seen = [], [], [], set(exclude)
    tries = 0
    with tqdm(total=n, desc=desc, unit="puzzle", leave=False, disable=n == 0) as bar:
        while len(puzzles) < n:
            tries += 1
            if tries > 100 * n + 1000:
                raise TrmError(f"data.min_rating={cfg.min_rating}: too few generated puzzles reach this rating; "
                               "lower min_rating or raise max_blanks")
            p, s, r = generate_puzzle(rng, int(rng.integers(cfg.min_blanks, cfg.max_blanks + 1)))
            if r < cfg.min_rating or p.tobytes() in seen:
                continue
            seen.add(p.tobytes())
            puzzles.append(p), solutions.append(s), ratings.append(r)
            bar.update(1)
    return np.array(puzzles, np.int8).reshape(n, 81), np.array(solutions, np.int8).reshape(n, 81), np.array(ratings)


def _load_source(cfg: SudokuDataConfig):
    """(train, test) tuples of (puzzles, solutions, ratings) from a CSV path or a HF dataset."""
    src = cfg.source
    path = Path(src).expanduser()
    if path.exists() or src.endswith(".csv"):
        train = load_csv(path)
        test_path = path.with_name(path.name.replace("train", "test"))
        if test_path != path and test_path.is_file():
            test = load_csv(test_path)
        else:  # a single file: hold out 10% of its puzzles
            if len(train[0]) < 2:  # nothing left to test on: say so rather than train against an empty test set
                raise TrmError(f"{path}: only {len(train[0])} puzzle, too few to hold one out for testing (a single "
                               f"CSV keeps 10 %, at least 1, as its test set); add rows or put a test.csv beside it")
            order = np.random.default_rng([cfg.seed, 3]).permutation(len(train[0]))
            n_test = max(1, len(order) // 10)
            test = tuple(x[order[:n_test]] for x in train)
            train = tuple(x[order[n_test:]] for x in train)
    elif "/" in src:
        train, test = load_hf(src, "train"), load_hf(src, "test")
    else:
        raise TrmError(f"data.source={src!r}: not 'generate', an existing CSV file or a HF dataset name (owner/name)")
    # the paper's --min-difficulty filters by rating; keep the test set free of any training puzzle
    train = tuple(x[train[2] >= cfg.min_rating] for x in train)
    test = tuple(x[test[2] >= cfg.min_rating] for x in test)
    if len(test[0]) == 0:
        raise TrmError(f"data.source={src!r}: no test puzzles left (check min_rating={cfg.min_rating})")
    test_keys = {row.tobytes() for row in test[0]}
    keep = np.array([row.tobytes() not in test_keys for row in train[0]], dtype=bool)
    train = tuple(x[keep] for x in train)
    if cfg.subsample_size and cfg.subsample_size < len(train[0]):
        idx = np.sort(np.random.default_rng([cfg.seed, 4]).choice(len(train[0]), cfg.subsample_size, replace=False))
        train = tuple(x[idx] for x in train)
    if len(train[0]) == 0:
        raise TrmError(f"data.source={src!r}: no training puzzles left (check min_rating={cfg.min_rating})")
    return train, test


def _split(puzzles, solutions, num_aug: int, rng: np.random.Generator | None, desc: str) -> PuzzleSplit:
    """Rows = each base puzzle then its ``num_aug`` augmentations; group id = base index."""
    n, k = len(puzzles), 1 + num_aug
    inputs = np.empty((n * k, SEQ_LEN), TOKEN_DTYPE)
    labels = np.empty((n * k, SEQ_LEN), TOKEN_DTYPE)
    for i in tqdm(range(n), desc=desc, unit="puzzle", leave=False, disable=num_aug == 0):
        p, s = puzzles[i][None], solutions[i][None]
        if num_aug:
            ap, as_ = augment_many(puzzles[i], solutions[i], rng, num_aug)
            p, s = np.concatenate([p, ap]), np.concatenate([s, as_])
        inputs[i * k:(i + 1) * k] = p + 1
        labels[i * k:(i + 1) * k] = s + 1
    return PuzzleSplit(inputs=inputs, labels=labels, puzzle_ids=np.zeros(n * k, np.int32),
                       group_ids=np.repeat(np.arange(n, dtype=np.int32), k))


def build_sudoku(cfg: SudokuDataConfig, out_root="data", force: bool = False) -> Path:
    """Build (or reuse) the dataset for ``cfg`` under ``out_root``; returns its directory."""
    out_dir, ready = cached_dataset("sudoku", asdict(cfg), out_root, force)
    if ready:
        return out_dir
    if cfg.source == "generate":
        # separate streams: the test set does not change when n_train does
        test = _generate_split(cfg, cfg.n_test, np.random.default_rng([cfg.seed, 1]), "sudoku test", set())
        train = _generate_split(cfg, cfg.n_train, np.random.default_rng([cfg.seed, 0]), "sudoku train",
                                {p.tobytes() for p in test[0]})
    else:
        train, test = _load_source(cfg)
    splits = {
        "train": _split(train[0], train[1], cfg.num_aug, np.random.default_rng([cfg.seed, 2]), "augment train"),
        "test": _split(test[0], test[1], 0, None, "test"),
    }
    stats = {name: {"base_puzzles": int(len(p)),
                    "mean_blanks": float((p == 0).sum(1).mean()) if len(p) else 0.0,
                    "mean_rating": float(r.mean()) if len(r) else 0.0}
             for name, (p, _, r) in (("train", train), ("test", test))}
    meta = {"task": "sudoku", "vocab_size": VOCAB_SIZE, "seq_len": SEQ_LEN, "num_puzzle_ids": 1,
            "pad_id": PAD_ID, "ignore_label_id": IGNORE_LABEL_ID, "config": asdict(cfg), "stats": stats}
    return save_puzzle_dataset(out_dir, splits, meta)
