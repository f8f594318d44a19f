"""Maze puzzles (the paper's Maze-Hard): generation, path checking, dihedral augmentation, CSV import, dataset build.

Token convention (as the paper's builder): the charset ``"# SGo"`` (wall, open, start, goal, path) maps to tokens
1..5 and PAD is 0, so ``vocab_size = 6``; a ``size x size`` maze is a sequence of ``size*size`` tokens
(Maze-Hard: 30x30 = 900).
The input is the maze without its path; the label is the same maze with the shortest path's cells marked ``o``.

Grids are 2-D numpy arrays of tokens (``[size, size]``); ``maze_to_tokens`` flattens one into the model's sequence.
"""

from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trmlab.data.puzzles import (PuzzleSplit, absolute_source, cached_dataset, local_source, save_puzzle_dataset,
                                 source_signature)
from trmlab.errors import TrmError

CHARSET = "# SGo"
PAD, WALL, OPEN, START, GOAL, PATH = 0, 1, 2, 3, 4, 5
VOCAB_SIZE = len(CHARSET) + 1
CHAR_TO_TOKEN = {ch: i + 1 for i, ch in enumerate(CHARSET)}
TOKEN_TO_CHAR = {i + 1: ch for i, ch in enumerate(CHARSET)}
HF_DATASET = "sapientinc/maze-30x30-hard-1k"
FOLDER_READS = ("train.csv", "test.csv")  # what the builder reads of a folder source (its cache checks these)


# ----------------------------------------------------------------------------------------------------------------
# text <-> tokens

def text_to_grid(text: str) -> np.ndarray:
    """A maze as text (newline-separated rows, or one flat ``size*size`` CSV string) -> [size, size] tokens."""
    rows = text.splitlines() if "\n" in text else None
    if rows is None:
        size = math.isqrt(len(text))
        if size * size != len(text) or size == 0:
            raise TrmError(f"maze string has length {len(text)}, which is not a square (size*size)")
        rows = [text[i * size:(i + 1) * size] for i in range(size)]
    if len({len(r) for r in rows}) != 1:
        raise TrmError("maze text has rows of different lengths")
    bad = set("".join(rows)) - set(CHARSET)
    if bad:
        raise TrmError(f"maze text has characters outside {CHARSET!r}: {''.join(sorted(bad))!r}")
    return np.array([[CHAR_TO_TOKEN[ch] for ch in r] for r in rows], dtype=np.int32)


def maze_to_tokens(grid: np.ndarray) -> np.ndarray:
    """A [size, size] grid -> the model's flat token sequence [size*size] (int32)."""
    return np.asarray(grid, dtype=np.int32).reshape(-1)


def tokens_to_text(tokens: np.ndarray) -> str:
    """Tokens (flat or 2-D) -> newline-separated rows; tokens outside 1..5 (PAD, garbage) show as '?'."""
    grid = _as_grid(tokens)
    return "\n".join("".join(TOKEN_TO_CHAR.get(int(t), "?") for t in row) for row in grid)


def _as_grid(tokens: np.ndarray) -> np.ndarray:
    """Accept a flat square sequence or a 2-D grid; return the 2-D grid."""
    a = np.asarray(tokens)
    if a.ndim == 1:
        size = math.isqrt(a.size)
        if size * size != a.size:
            raise TrmError(f"maze sequence has {a.size} tokens, which is not a square (size*size)")
        a = a.reshape(size, size)
    if a.ndim != 2:
        raise TrmError(f"a maze grid must be 2-D, got shape {a.shape}")
    return a


# ----------------------------------------------------------------------------------------------------------------
# shortest paths (BFS on 4-neighbours; 'o' counts as open so labels and inputs both work)

def _adjacency(passable: np.ndarray) -> list[list[int]]:
    """4-neighbour lists over flat cell indices of a 2-D boolean mask (empty for blocked cells)."""
    h, w = passable.shape
    flat = passable.reshape(-1).tolist()
    adj: list[list[int]] = [[] for _ in flat]
    for v in np.flatnonzero(passable).tolist():
        r, c = divmod(v, w)
        adj[v] = [u for u, ok in ((v - w, r > 0), (v + w, r < h - 1), (v - 1, c > 0), (v + 1, c < w - 1))
                  if ok and flat[u]]
    return adj


def _bfs(adj: list[list[int]], src: int) -> tuple[list[int], list[int]]:
    """BFS from ``src``: distance (-1 = unreachable) and number of shortest paths to every cell.

    The path count is the usual BFS dynamic programme: count[v] = sum of count[u] over neighbours u one step closer.
    Plain Python lists, because per-element numpy indexing is ~10x slower on grids this small.
    """
    dist, count = [-1] * len(adj), [0] * len(adj)
    dist[src], count[src] = 0, 1
    queue = [src]
    for v in queue:  # the list grows while we iterate over it: a FIFO queue without deque bookkeeping
        d = dist[v] + 1
        for u in adj[v]:
            if dist[u] == -1:
                dist[u] = d
                queue.append(u)
            if dist[u] == d:
                count[u] += count[v]
    return dist, count


def _endpoints(grid: np.ndarray) -> tuple[int, int]:
    """Flat indices of the single S and the single G; TrmError if either is missing or repeated."""
    flat = grid.reshape(-1)
    ends = []
    for tok, name in ((START, "S"), (GOAL, "G")):
        where = np.flatnonzero(flat == tok)
        if len(where) != 1:
            raise TrmError(f"maze must have exactly one {name}, found {len(where)}")
        ends.append(int(where[0]))
    return ends[0], ends[1]


def _solve(grid: np.ndarray) -> tuple[list[int], list[int], int, int]:
    grid = _as_grid(grid)
    s, g = _endpoints(grid)
    dist, count = _bfs(_adjacency(grid != WALL), s)
    return dist, count, s, g


def shortest_path_length(grid: np.ndarray) -> int | None:
    """Number of steps of the shortest S->G path (walls block; 'o' is open), or None when G is unreachable."""
    dist, _, _, g = _solve(grid)
    return dist[g] if dist[g] >= 0 else None


def count_shortest_paths(grid: np.ndarray) -> int:
    """How many distinct shortest S->G paths the maze has (0 when G is unreachable)."""
    _, count, _, g = _solve(grid)
    return count[g]


def check_path(input_grid: np.ndarray, predicted_grid: np.ndarray) -> dict:
    """Judge a predicted solution grid against its input maze.

    walls_ok: every input cell is unchanged except open cells that became 'o' (so no path cell on a wall, S/G kept).
    connects: the 'o' cells plus S and G form one 4-connected set (a path from S to G with no stray pieces).
    shortest: it connects and has exactly shortest_path_length + 1 cells (a connected set that small *is* a shortest
              path, so branches and detours fail here).
    valid:    all three, i.e. the prediction is a correct solution.
    """
    inp, pred = _as_grid(input_grid), _as_grid(predicted_grid)
    if inp.shape != pred.shape:
        raise TrmError(f"prediction shape {pred.shape} does not match the maze shape {inp.shape}")
    walls_ok = bool(np.all((pred == inp) | ((inp == OPEN) & (pred == PATH))))
    s, g = _endpoints(inp)
    on_path = pred == PATH
    on_path.reshape(-1)[[s, g]] = True
    dist, _ = _bfs(_adjacency(on_path), s)
    n_cells = int(on_path.sum())
    reached = sum(1 for d in dist if d >= 0)
    connects = reached == n_cells  # S reaches every path cell, G included
    best = shortest_path_length(inp)
    shortest = connects and best is not None and n_cells - 1 == best
    return dict(valid=walls_ok and connects and shortest, connects=connects, shortest=shortest, walls_ok=walls_ok)


# ----------------------------------------------------------------------------------------------------------------
MAX_AUGMENTATIONS = 7  # extra views of a maze beyond itself: the square's 8 symmetries, less the identity

# dihedral augmentation: the 8 symmetries of the square (k = 0..3 rotations, 4..7 transpose then rotate)

def dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Apply symmetry ``k`` in 0..7 to a grid (or a flat square sequence, returned flat)."""
    if not 0 <= k < 8:
        raise TrmError(f"dihedral index must be in 0..7, got {k}")
    a = _as_grid(grid)
    out = np.rot90(a.T if k >= 4 else a, k % 4)
    return np.ascontiguousarray(out).reshape(np.shape(grid))


def inverse_dihedral(grid: np.ndarray, k: int) -> np.ndarray:
    """Undo ``dihedral(., k)``: rotate back, then undo the transpose."""
    if not 0 <= k < 8:
        raise TrmError(f"dihedral index must be in 0..7, got {k}")
    a = np.rot90(_as_grid(grid), -(k % 4))
    out = a.T if k >= 4 else a
    return np.ascontiguousarray(out).reshape(np.shape(grid))


def _canonical_key(grid: np.ndarray) -> bytes:
    """The same key for all 8 views of a maze, so a test maze can't be a rotated copy of a train maze."""
    return min(dihedral(grid, k).astype(np.uint8).tobytes() for k in range(8))


# ----------------------------------------------------------------------------------------------------------------
# generator

def _perfect_maze(n: int, rng: np.random.Generator) -> np.ndarray:
    """Randomised-DFS perfect maze on an odd n x n lattice: cells at odd coordinates, walls between, wall border."""
    grid = np.full((n, n), WALL, dtype=np.int32)
    flat = grid.reshape(-1)  # a view: carving into it carves the grid
    # Walk the grid itself in steps of 2 (cell to cell); a cell is unvisited while it is still a wall, and the
    # border/out-of-range cells are rejected by the bounds check, so no separate visited array is needed.
    steps = (-2 * n, 2 * n, -2, 2)
    coins = rng.random(n * n).tolist()  # one batch of random numbers: much faster than an rng call per step
    m = (n - 1) // 2
    v = (2 * int(rng.integers(m)) + 1) * n + 2 * int(rng.integers(m)) + 1
    flat[v] = OPEN
    stack, i = [v], 0
    while stack:
        v = stack[-1]
        c = v % n
        nbrs = [v + d for d in steps if 0 < v + d < n * n and (d in (-2 * n, 2 * n) or 0 < c + d < n)
                and flat[v + d] == WALL]
        if not nbrs:
            stack.pop()
            continue
        u = nbrs[int(coins[i] * len(nbrs))]
        i += 1
        flat[u] = OPEN
        flat[(u + v) // 2] = OPEN  # the wall between the two cells
        stack.append(u)
    return grid


def _open_loops(grid: np.ndarray, fraction: float, rng: np.random.Generator) -> None:
    """Knock down ``fraction`` of the remaining inner walls between two lattice cells, creating loops (in place)."""
    n = grid.shape[0]
    rr, cc = np.meshgrid(np.arange(1, n - 1), np.arange(1, n - 1), indexing="ij")
    between = ((rr + cc) % 2 == 1) & (grid[1:-1, 1:-1] == WALL)  # one odd, one even coordinate: joins two cells
    cand_r, cand_c = rr[between], cc[between]
    k = int(round(fraction * len(cand_r)))
    if k:
        pick = rng.choice(len(cand_r), size=k, replace=False)
        grid[cand_r[pick], cand_c[pick]] = OPEN


def _walls(size: int, rng: np.random.Generator, loop_fraction: float) -> np.ndarray:
    """Walls and open cells of a size x size maze; an even size puts the odd lattice inside an extra wall row/column."""
    n = size if size % 2 else size - 1
    lattice = _perfect_maze(n, rng)
    _open_loops(lattice, loop_fraction, rng)
    if n == size:
        return lattice
    grid = np.full((size, size), WALL, dtype=np.int32)
    oy, ox = int(rng.integers(2)), int(rng.integers(2))  # which side gets the extra wall, so views stay unbiased
    grid[oy:oy + n, ox:ox + n] = lattice
    return grid


def _place_endpoints(grid: np.ndarray, rng: np.random.Generator, min_path_len: int,
                     tries: int = 6) -> tuple[int, int, list[int]] | None:
    """Pick S and G with a unique shortest path of >= min_path_len steps; None when this maze has no such pair.

    A double-sweep BFS finds a far end A of the maze and (nearly) its diameter: a maze too short for min_path_len is
    rejected after two BFS. Otherwise S is drawn from the cells at least min_path_len from A (so some G exists), and G
    uniformly from the cells far enough from S whose shortest path is unique.
    """
    adj = _adjacency(grid != WALL)
    cells = np.flatnonzero(grid.reshape(-1) != WALL)
    far, _ = _bfs(adj, int(cells[rng.integers(len(cells))]))
    a = int(np.argmax(far))
    dist_a, _ = _bfs(adj, a)
    pool = [v for v in cells.tolist() if dist_a[v] >= min_path_len]
    if not pool:
        return None
    for s in [int(pool[rng.integers(len(pool))]) for _ in range(tries)] + [a]:
        dist, count = _bfs(adj, s)
        goals = [v for v in cells.tolist() if dist[v] >= min_path_len and count[v] == 1]
        if goals:
            return s, goals[int(rng.integers(len(goals)))], dist
    return None


def _trace_path(grid: np.ndarray, dist: list[int], g: int) -> list[int]:
    """The cells strictly between S and G on the (unique) shortest path, walking back from G one step at a time."""
    adj = _adjacency(grid != WALL)
    path, v = [], g
    while dist[v] > 1:
        v = next(u for u in adj[v] if dist[u] == dist[v] - 1)
        path.append(v)
    return path


def generate_maze(size: int, rng: np.random.Generator, min_path_len: int, loop_fraction: float = 0.1,
                  max_tries: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """One random maze -> (input_grid, label_grid), each [size, size] tokens.

    Walls come from a randomised-DFS perfect maze plus ``loop_fraction`` of extra openings (loops, as Maze-Hard has);
    S and G are placed so the shortest path has >= ``min_path_len`` steps and is unique. Mazes that can't satisfy
    that are discarded; after ``max_tries`` failures in a row it raises TrmError rather than loop forever.
    """
    for _ in range(max_tries):
        grid = _walls(size, rng, loop_fraction)
        placed = _place_endpoints(grid, rng, min_path_len)
        if placed is None:
            continue
        s, g, dist = placed
        inp = grid.copy()
        inp.reshape(-1)[[s, g]] = [START, GOAL]
        label = inp.copy()
        label.reshape(-1)[_trace_path(grid, dist, g)] = PATH
        return inp, label
    raise TrmError(f"could not generate a {size}x{size} maze with a unique shortest path of >= {min_path_len} steps "
                   f"in {max_tries} tries; lower data.min_path_len or data.loop_fraction, or raise data.size")


# ----------------------------------------------------------------------------------------------------------------
# Maze-Hard CSV layout: source,question,answer,rating with question/answer as flat size*size strings over "# SGo"

def load_csv(path: str | Path, skipped: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read a Maze-Hard style CSV -> (inputs, labels) as [N, size, size] token arrays.

    A bad row (unreadable maze, no path, an answer that is not the shortest path) raises TrmError naming the file and
    line; with a ``skipped`` list the row is left out instead and its message appended there (a builder reading many
    mazes reports bad ones rather than dying on the first).
    """
    path = Path(path)
    if not path.is_file():
        raise TrmError(f"{path}: no such CSV file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: a byte-order mark is not part of "source"
            inputs, labels, bad = _read_csv_rows(csv.DictReader(f), path, skipped is not None)
    except UnicodeDecodeError as e:
        raise TrmError(f"{path}: not UTF-8 text (byte {e.start}); save the CSV as UTF-8") from None
    except csv.Error as e:  # e.g. a NUL byte: the file is not a CSV at all
        raise TrmError(f"{path}: not a readable CSV ({e})") from None
    if skipped is not None:
        skipped.extend(bad)
    if not inputs:
        raise TrmError(f"{path}: CSV has no mazes" + (f" (all {len(bad)} rows bad; first: {bad[0]})" if bad else ""))
    return np.stack(inputs), np.stack(labels)


def _read_csv_rows(reader: csv.DictReader, path: Path, skip_bad: bool) -> tuple[list, list, list[str]]:
    """The good rows' (input, label) grids, and a message for each bad row (which raises unless ``skip_bad``)."""
    found = reader.fieldnames or []
    missing = [c for c in ("question", "answer") if c not in found]
    if missing:
        raise TrmError(f"{path}: line 1: header has columns {','.join(found) or '(none)'}, lacks "
                       f"{','.join(missing)}; a Maze-Hard CSV has source,question,answer,rating "
                       f"(question and answer needed)")
    inputs, labels, size, bad = [], [], None, []
    for row in reader:
        try:
            inp, lab = _csv_row(row, size)
        except TrmError as e:
            message = f"{path}, line {reader.line_num}: {e}"
            if not skip_bad:
                raise TrmError(message) from None
            bad.append(message)
            continue
        size = inp.shape[0]
        inputs.append(inp)
        labels.append(lab)
    return inputs, labels, bad


def _csv_row(row: dict, size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One CSV row -> (input grid, label grid), checked: square, same size as the first row, label a shortest path."""
    inp, lab = text_to_grid(row["question"] or ""), text_to_grid(row["answer"] or "")
    size = inp.shape[0] if size is None else size
    if inp.shape != (size, size) or lab.shape != (size, size):
        raise TrmError(f"question is {inp.shape[0]}x{inp.shape[1]} and answer is "
                       f"{lab.shape[0]}x{lab.shape[1]}, expected {size}x{size} like the first row")
    if (inp == PATH).any():
        raise TrmError("question contains path cells 'o'")
    if shortest_path_length(inp) is None:
        raise TrmError("maze has no path from S to G")
    verdict = check_path(inp, lab)
    if not verdict["valid"]:
        failed = [k for k in ("walls_ok", "connects", "shortest") if not verdict[k]]
        raise TrmError(f"answer is not a valid shortest path for the question (fails {', '.join(failed)})")
    return inp, lab


def _flat_text(grid: np.ndarray) -> str:
    return tokens_to_text(grid).replace("\n", "")


def write_csv(path: str | Path, inputs: np.ndarray, labels: np.ndarray, source: str = "trmlab") -> Path:
    """Write mazes in the Maze-Hard CSV layout (rating = shortest path length), e.g. to share generated data."""
    path = Path(path)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "question", "answer", "rating"])
        for inp, lab in zip(inputs, labels):
            w.writerow([source, _flat_text(inp), _flat_text(lab), shortest_path_length(inp)])
    return path


def load_hf(name: str = HF_DATASET, split: str = "train",
            skipped: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Download ``{split}.csv`` of a Hugging Face dataset in the Maze-Hard layout (or take it from the local Hugging
    Face cache) and load it."""
    try:
        from huggingface_hub import hf_hub_download
        kw = dict(repo_id=name, filename=f"{split}.csv", repo_type="dataset")
        try:
            local = hf_hub_download(**kw, local_files_only=True)  # cached: no network, no retry messages
        except Exception:
            local = _quietly(hf_hub_download, **kw)
    except Exception as e:  # offline, unknown repo, missing file: all the same advice to the user
        raise TrmError(f"cannot download {name}/{split}.csv ({type(e).__name__}); "
                       f"pass a local CSV with data.source=path.csv") from None
    return load_csv(local, skipped)


def _quietly(fn, **kw):
    """Call ``fn`` with huggingface_hub's retry warnings silenced (offline, they print one line per retry)."""
    import logging
    log = logging.getLogger("huggingface_hub")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return fn(**kw)
    finally:
        log.setLevel(level)


# ----------------------------------------------------------------------------------------------------------------
# config and dataset builder

@dataclass
class MazeDataConfig:
    source: str = "generate"   # "generate", a local CSV path (or folder with train.csv/test.csv), or a HF dataset name
    size: int = 11             # generate only; CSV mazes keep their own size
    min_path_len: int = 12     # generate only: shortest path has at least this many steps
    loop_fraction: float = 0.1 # fraction of extra walls opened after the perfect maze (creates loops)
    n_train: int = 1000
    n_test: int = 200
    num_aug: int = 0           # 0 = none; 1..7 = that many random extra dihedral views per train maze
                               # (7 = all 8 views, the paper's --aug)
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source:
            raise TrmError("data.source must be 'generate', a CSV path or a Hugging Face dataset name")
        if not isinstance(self.size, int) or self.size < 5:
            raise TrmError(f"data.size must be an integer >= 5, got {self.size!r}")
        # No path in an m x m-cell lattice maze exceeds 2*m*m - 2 steps, and random ones rarely reach m*m + m:
        # cap at m*m so an impossible request fails here rather than after minutes of rejected mazes.
        m = ((self.size if self.size % 2 else self.size - 1) - 1) // 2
        if not isinstance(self.min_path_len, int) or not 1 <= self.min_path_len <= m * m:
            raise TrmError(f"data.min_path_len must be in 1..{m * m} for size {self.size}, got {self.min_path_len!r}")
        if not isinstance(self.loop_fraction, (int, float)) or not 0.0 <= self.loop_fraction <= 1.0:
            raise TrmError(f"data.loop_fraction must be in [0, 1], got {self.loop_fraction!r}")
        if not isinstance(self.n_train, int) or self.n_train <= 0:
            raise TrmError(f"data.n_train must be a positive integer, got {self.n_train!r}")
        if not isinstance(self.n_test, int) or self.n_test < 0:
            raise TrmError(f"data.n_test must be an integer >= 0, got {self.n_test!r}")
        if not isinstance(self.num_aug, int) or not 0 <= self.num_aug <= MAX_AUGMENTATIONS:
            raise TrmError(f"data.num_aug must be in 0..{MAX_AUGMENTATIONS} ({MAX_AUGMENTATIONS} = all "
                           f"{MAX_AUGMENTATIONS + 1} dihedral views), got {self.num_aug!r}")
        if not isinstance(self.seed, int):
            raise TrmError(f"data.seed must be an integer, got {self.seed!r}")
        self.source = absolute_source(self.source)


def _generate_split_mazes(cfg: MazeDataConfig, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Distinct mazes for train then test; a maze equal to an earlier one up to symmetry is redrawn."""
    from tqdm import tqdm

    seen, out = set(), {}
    budget = 20 * (cfg.n_train + cfg.n_test) + 100  # small sizes have few distinct mazes: fail instead of spinning
    with tqdm(total=cfg.n_train + cfg.n_test, desc=f"maze {cfg.size}x{cfg.size}", unit="maze") as bar:
        for split, n in (("train", cfg.n_train), ("test", cfg.n_test)):
            inputs, labels = [], []
            while len(inputs) < n:
                budget -= 1
                if budget < 0:
                    raise TrmError(f"only {len(seen)} distinct {cfg.size}x{cfg.size} mazes found; lower data.n_train/"
                                   f"data.n_test or data.min_path_len, or raise data.size")
                inp, lab = generate_maze(cfg.size, rng, cfg.min_path_len, cfg.loop_fraction)
                key = _canonical_key(inp)
                if key in seen:
                    continue
                seen.add(key)
                inputs.append(inp)
                labels.append(lab)
                bar.update(1)
            shape = (0, cfg.size, cfg.size)
            out[split] = (np.stack(inputs) if inputs else np.zeros(shape, np.int32),
                          np.stack(labels) if labels else np.zeros(shape, np.int32))
    return out


def _subsample(arrays: tuple[np.ndarray, np.ndarray], n: int, rng: np.random.Generator, what: str, where: str):
    inputs, labels = arrays
    if n > len(inputs):
        raise TrmError(f"{where}: data.n_{what}={n} but the {what} CSV has only {len(inputs)} good mazes")
    idx = np.sort(rng.choice(len(inputs), size=n, replace=False)) if n < len(inputs) else np.arange(n)
    return inputs[idx], labels[idx]


def _csv_split_mazes(cfg: MazeDataConfig, rng: np.random.Generator,
                     skipped: list) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """train/test from a HF dataset, a folder with train.csv/test.csv, a train.csv beside a test.csv, or one CSV.

    Bad rows are left out, their messages appended to ``skipped``."""
    src = local_source(cfg.source)
    if src is None:
        files = {split: f"{cfg.source}/{split}.csv" for split in ("train", "test")}
        loaded = {split: load_hf(cfg.source, split, skipped) for split in ("train", "test")}
    elif not src.exists():
        raise TrmError(f"data.source: no such file or folder: {src}")
    elif src.is_dir() or (src.name.lower() == "train.csv" and (src.parent / "test.csv").is_file()):
        folder = src if src.is_dir() else src.parent
        files = {split: str(folder / f"{split}.csv") for split in ("train", "test")}
        loaded = {split: load_csv(files[split], skipped) for split in ("train", "test")}
    else:
        # One file: shuffle once, then the first n_train rows train and the next n_test rows test (disjoint by row).
        inputs, labels = load_csv(src, skipped)
        if cfg.n_train + cfg.n_test > len(inputs):  # say so, rather than train against a short or empty test set
            raise TrmError(f"{src}: only {len(inputs)} mazes, too few for data.n_train={cfg.n_train} training and "
                           f"data.n_test={cfg.n_test} test mazes; lower data.n_train, or pass a folder with "
                           f"train.csv and test.csv")
        perm = rng.permutation(len(inputs))
        tr, te = perm[:cfg.n_train], perm[cfg.n_train:cfg.n_train + cfg.n_test]
        return {"train": (inputs[tr], labels[tr]), "test": (inputs[te], labels[te])}
    return {split: _subsample(loaded[split], n, rng, split, files[split])
            for split, n in (("train", cfg.n_train), ("test", cfg.n_test))}


def _augment(inputs: np.ndarray, labels: np.ndarray, num_aug: int, rng: np.random.Generator) -> PuzzleSplit:
    """Each base maze followed by ``num_aug`` distinct non-identity dihedral views; group_ids = base index."""
    rows_in, rows_lab, groups = [], [], []
    for i, (inp, lab) in enumerate(zip(inputs, labels)):
        ks = [0] + (sorted(rng.choice(np.arange(1, 8), size=num_aug, replace=False).tolist()) if num_aug else [])
        for k in ks:  # the same symmetry on input and label keeps the label a valid path for its input
            rows_in.append(maze_to_tokens(dihedral(inp, k)))
            rows_lab.append(maze_to_tokens(dihedral(lab, k)))
            groups.append(i)
    return _split(rows_in, rows_lab, groups, inputs.shape[1] * inputs.shape[2])


def _split(rows_in: list, rows_lab: list, groups: list, seq_len: int) -> PuzzleSplit:
    n = len(rows_in)
    shape = (n, seq_len)
    return PuzzleSplit(
        inputs=np.stack(rows_in).astype(np.int32) if n else np.zeros(shape, np.int32),
        labels=np.stack(rows_lab).astype(np.int32) if n else np.zeros(shape, np.int32),
        puzzle_ids=np.zeros(n, np.int32),
        group_ids=np.asarray(groups, dtype=np.int32),
    )


def _mean_path_len(split: PuzzleSplit) -> float | None:
    # S -> G takes one more step than there are 'o' cells between them.
    return float(((split.labels == PATH).sum(axis=1) + 1).mean()) if len(split) else None


def build_maze(cfg: MazeDataConfig, out_root: str | Path = "data", force: bool = False) -> Path:
    """Build (or reuse) the maze dataset for ``cfg`` under ``out_root/params_slug('maze', cfg)``; returns its path."""
    out_dir, ready = cached_dataset("maze", asdict(cfg), out_root, force, reads=FOLDER_READS)
    if ready:
        return out_dir
    source_files = source_signature(asdict(cfg), FOLDER_READS)  # signed before reading: edits while building count
    rng = np.random.default_rng(cfg.seed)
    t0 = time.time()
    skipped: list[str] = []
    mazes = _generate_split_mazes(cfg, rng) if cfg.source == "generate" else _csv_split_mazes(cfg, rng, skipped)
    for message in skipped[:5]:
        print(f"warning: skipping maze: {message}")
    if len(skipped) > 5:
        print(f"warning: skipping {len(skipped) - 5} more bad mazes (all listed in metadata.json, skipped_rows)")
    size = mazes["train"][0].shape[1]
    splits = {
        "train": _augment(*mazes["train"], cfg.num_aug, rng),
        "test": _augment(*mazes["test"], 0, rng),  # test mazes are never augmented
    }
    meta = dict(
        task="maze", vocab_size=VOCAB_SIZE, seq_len=size * size, num_puzzle_ids=1, pad_id=PAD, ignore_label_id=0,
        size=size, charset=CHARSET, config=asdict(cfg),
        mean_path_len={name: _mean_path_len(s) for name, s in splits.items()},
        build_seconds=round(time.time() - t0, 2), skipped_rows=skipped, source_files=source_files,
    )
    return save_puzzle_dataset(out_dir, splits, meta)


# ----------------------------------------------------------------------------------------------------------------
# user-facing text input and pictures

def parse_maze_text(text: str) -> np.ndarray:
    """A maze typed as text (equal-length lines over '# SG'; 'o' is cleared) -> [size, size] grid for `trm solve`."""
    lines = [ln.rstrip("\r") for ln in text.split("\n")]
    while lines and not lines[-1].strip():  # tolerate blank lines around the maze, never spaces inside it
        lines.pop()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise TrmError("maze text is empty")
    width = len(lines[0])
    for i, ln in enumerate(lines, 1):
        if len(ln) != width:
            raise TrmError(f"maze text line {i} has {len(ln)} characters, expected {width} like line 1")
        for j, ch in enumerate(ln, 1):
            if ch not in CHARSET:
                raise TrmError(f"maze text line {i}, column {j}: bad character {ch!r} (allowed: '#', ' ', 'S', 'G')")
    if len(lines) != width:
        raise TrmError(f"maze must be square, got {len(lines)} rows of {width} columns")
    grid = np.array([[CHAR_TO_TOKEN[ch] for ch in ln] for ln in lines], dtype=np.int32)
    grid[grid == PATH] = OPEN  # a pasted solution is fine: solve it from scratch
    for tok, name in ((START, "S"), (GOAL, "G")):
        n = int((grid == tok).sum())
        if n != 1:
            raise TrmError(f"maze has {'no' if n == 0 else n} {name}{'' if n == 0 else ' cells'}; it needs exactly one")
    if shortest_path_length(grid) is None:
        raise TrmError("maze has no path from S to G")
    return grid


def render_maze(input_grid: np.ndarray, label_or_pred_grid: np.ndarray | None, path_png: str | Path,
                title: str | None = None) -> Path:
    """Draw a maze (walls black, open white, S green, G red) and a path (blue; 'o' on walls orange) to a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global backend state to disturb
    from matplotlib.figure import Figure

    inp = _as_grid(input_grid)
    rgb = np.ones(inp.shape + (3,))
    rgb[inp == WALL] = (0.1, 0.1, 0.1)
    if label_or_pred_grid is not None:
        pred = _as_grid(label_or_pred_grid)
        rgb[(pred == PATH) & (inp == OPEN)] = (0.25, 0.45, 0.95)
        rgb[(pred == PATH) & (inp != OPEN)] = (1.0, 0.55, 0.0)  # a predicted path cell where none can be
    rgb[inp == START] = (0.1, 0.75, 0.2)
    rgb[inp == GOAL] = (0.9, 0.15, 0.15)
    fig = Figure(figsize=(max(2.0, inp.shape[1] / 6), max(2.0, inp.shape[0] / 6)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=8)
    path_png = Path(path_png)
    path_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path_png, dpi=100, bbox_inches="tight")
    return path_png
