"""`trm eval <run> --puzzles FILE`: score a trained run on every puzzle of a file, with no training split around it.

Each puzzle task reads its own files (``read_puzzle_file``: Sudoku CSVs in any layout and text files of puzzles, the
Maze-Hard CSV, ARC task JSONs / folders / ARC Prize challenges+solutions) into a one-split dataset, and the task's own
evaluation scores it, so the numbers mean what they mean after training. A file of another task's puzzles is
refused before any puzzle is read.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np

from trmlab.errors import TrmError

SHOWN_SKIPS = 10  # skipped lines printed by `trm eval --puzzles` (--json lists them all)


def puzzle_kind(path) -> str | None:
    """Which task's puzzles a file holds, from its first puzzle: "sudoku" (81 cells of '.' and digits), "maze" (a
    square string over '# SGo'), "arc" (JSON, or a folder of it); None when it cannot tell (the task's reader then
    says what is wrong)."""
    p = Path(path).expanduser()
    if p.is_dir() or p.suffix.lower() == ".json":
        return "arc"
    try:
        with open(p, encoding="utf-8-sig", errors="replace") as f:
            head = [line for _, line in zip(range(50), f) if line.strip()][:2]
    except OSError:
        return None
    if not head:
        return None
    first = head[0].strip()
    if first.startswith(("{", "[")):
        return "arc"
    cell = first
    if "," in first and len(head) > 1:  # a CSV: the puzzle column of its first row
        header = [h.strip().lower() for h in next(csv.reader(io.StringIO(head[0])))]
        row = next(csv.reader(io.StringIO(head[1])), [])
        column = next((header.index(c) for c in ("question", "q", "puzzle", "quizzes") if c in header), None)
        cell = row[column] if column is not None and column < len(row) else ""
    if len(cell) == 81 and set(cell) <= set(".0123456789"):
        return "sudoku"
    if len(cell) > 1 and math.isqrt(len(cell)) ** 2 == len(cell) and set(cell) <= set("# SGo") and "S" in cell:
        return "maze"
    return None


def evaluate_file(model, cfg, path, device, max_samples: int = 0, out_dir=None, data_root="data",
                  **eval_kwargs) -> dict:
    """Read the puzzles of ``path`` with the run's task and score them with its evaluation; returns its metrics plus
    ``puzzles_file``, ``skipped`` (how many lines or tasks were left out) and ``skipped_lines`` (why)."""
    from trmlab.tasks import get_task
    task = get_task(cfg.task)
    if not Path(path).expanduser().exists():
        raise TrmError(f"{path}: no such puzzle file")
    kind = puzzle_kind(path)
    if kind is not None and kind != cfg.task:
        raise TrmError(f"{path}: holds {kind} puzzles, but the run is a {cfg.task} run; evaluate it with a run "
                       f"trained on {kind}")
    data = task.read_puzzle_file(cfg, Path(path).expanduser(), data_root=data_root)
    if out_dir is not None and task.writes_files:
        eval_kwargs["out_dir"] = out_dir
    elif out_dir is not None:
        raise TrmError(f"--out {out_dir}: the {cfg.task} evaluation writes no files")
    metrics = task.evaluate(model, data, cfg, device, split="test", max_samples=max_samples, **eval_kwargs)
    skipped = list(data.meta.get("skipped", []))
    metrics.update(puzzles_file=str(path), skipped=len(skipped), skipped_lines=skipped)
    return metrics


# ----------------------------------------------------------------------------------------------------------------
# accuracy by number of blanks and by rating (Sudoku)

def blank_bin(blanks: int) -> str:
    low = blanks // 10 * 10
    return f"{low}-{low + 9}"


def rating_bin(rating: int) -> str:
    """Decades of the rating (solver backtracks in Sudoku-Extreme: 0 up to thousands)."""
    if rating <= 0:
        return "0"
    low = 10 ** int(math.log10(rating))
    return f"{low}-{10 * low - 1}" if low < 1000 else "1000+"


def accuracy_by(correct: np.ndarray, values: np.ndarray, bin_of) -> dict:
    """{bin label: {"puzzles": n, "exact_acc": share correct}} in increasing order of the values."""
    out: dict[str, list] = {}
    for v in np.sort(np.unique(values)):
        out.setdefault(bin_of(int(v)), []).append(v)
    result = {}
    for label, members in out.items():
        hit = correct[np.isin(values, members)]
        result[label] = {"puzzles": int(hit.size), "exact_acc": round(float(hit.mean()), 5)}
    return result


def report_lines(metrics: dict) -> list[str]:
    """The breakdowns and skipped lines of a puzzle-file evaluation as text (the per-step table is print_eval's)."""
    lines = []
    for key, name in (("exact_acc_by_blanks", "blanks"), ("exact_acc_by_rating", "rating")):
        table = metrics.get(key)
        if not table:
            continue
        lines.append(f"exact accuracy by {name} (final supervision step):")
        lines.append(f"  {name:>9}  {'puzzles':>8}  {'exact acc':>9}")
        lines += [f"  {label:>9}  {row['puzzles']:>8,}  {row['exact_acc']:>9.4f}" for label, row in table.items()]
    skipped = metrics.get("skipped_lines") or []
    for message in skipped[:SHOWN_SKIPS]:
        lines.append(f"skipped: {message}")
    if len(skipped) > SHOWN_SKIPS:
        lines.append(f"skipped {len(skipped) - SHOWN_SKIPS} more (--json lists them all)")
    return lines
