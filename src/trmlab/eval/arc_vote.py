"""ARC voting and scoring: undo each view's augmentation, vote across views, rank, score pass@k, write a submission.

As in the paper's evaluator: every augmented view of a test input predicts a grid; the grids are mapped back to the
original frame and counted; candidates rank by (votes, mean halting confidence). A test pair is solved at k when one
of its top-k candidates equals the expected output; a task scores the mean over its test pairs and a split the mean
over its tasks (ARC Prize scoring; the headline ARC number is pass@2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trmlab.data.arc import decode_grid, parse_row_key
from trmlab.errors import TrmError

BLANK_ATTEMPT = [[0]]  # the ARC Prize format wants two attempts per test pair, even when we have none


@dataclass
class Candidate:
    grid: np.ndarray   # in the task's original frame
    votes: int         # how many views predicted it
    confidence: float  # mean q confidence of those views


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, possibly on an accelerator
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def vote(rows_meta, predicted_tokens, q_confidence) -> dict[tuple[str, int], list[Candidate]]:
    """Ranked candidates per (task id, test index), best first.

    ``rows_meta`` is the dataset's ``metadata["test_rows"]`` (one "task|index|augmentation" per row), aligned with
    ``predicted_tokens`` [N, 900] and ``q_confidence`` [N]. A view whose prediction holds no grid casts no vote; a
    test pair none of whose views decode maps to an empty list.
    """
    tokens = _numpy(predicted_tokens)
    conf = np.nan_to_num(_numpy(q_confidence).astype(np.float64).reshape(-1), nan=-np.inf)  # NaN ranks last
    if not (len(rows_meta) == len(tokens) == len(conf)):
        raise TrmError(f"vote: {len(rows_meta)} test rows but {len(tokens)} predictions and {len(conf)} confidences")
    tally: dict[tuple[str, int], dict[bytes, list]] = {}
    for key, pred, q in zip(rows_meta, tokens, conf):
        task_id, index, aug = parse_row_key(key)
        slot = tally.setdefault((task_id, index), {})
        grid = decode_grid(pred)
        if grid is None:
            continue
        grid = aug.invert(grid)
        entry = slot.setdefault(bytes(grid.shape) + grid.tobytes(), [grid, 0, 0.0])
        entry[1] += 1
        entry[2] += float(q)
    return {pair: sorted((Candidate(g, n, total / n) for g, n, total in slot.values()),
                         key=lambda c: (c.votes, c.confidence), reverse=True)
            for pair, slot in tally.items()}


def solutions_from_split(rows_meta, labels) -> dict[str, list[np.ndarray]]:
    """The expected outputs {task id: [grid per test index]} read back from a built test split's labels."""
    found: dict[str, dict[int, np.ndarray]] = {}
    for key, row in zip(rows_meta, _numpy(labels)):
        task_id, index, aug = parse_row_key(key)
        if index not in found.setdefault(task_id, {}):
            grid = decode_grid(row)
            if grid is None:
                raise TrmError(f"ARC test row {key!r}: its label holds no grid")
            found[task_id][index] = aug.invert(grid)
    return {task_id: [outs[i] for i in sorted(outs)] for task_id, outs in found.items()}


def score(ranked: dict[tuple[str, int], list[Candidate]], solutions: dict[str, list], ks=(1, 2)) -> dict:
    """pass@k for each k: per test pair 1 if a top-k candidate equals the expected grid; mean per task; mean of tasks.

    Every task and test pair in ``solutions`` counts; one with no candidates scores 0.
    """
    per_task = {}
    for task_id, outputs in solutions.items():
        ranks = []
        for index, expected in enumerate(outputs):
            if expected is None:
                raise TrmError(f"ARC task {task_id} test[{index}]: no expected output, cannot score")
            expected = np.asarray(expected)
            candidates = ranked.get((task_id, index), [])
            ranks.append(next((r for r, c in enumerate(candidates) if np.array_equal(c.grid, expected)), None))
        per_task[task_id] = {f"pass@{k}": float(np.mean([r is not None and r < k for r in ranks])) for k in ks}
    result = {f"pass@{k}": float(np.mean([s[f"pass@{k}"] for s in per_task.values()])) if per_task else 0.0
              for k in ks}
    result.update(num_tasks=len(per_task), num_test_pairs=sum(len(o) for o in solutions.values()), per_task=per_task)
    return result


def write_submission(ranked: dict[tuple[str, int], list[Candidate]], path,
                     test_counts: dict[str, int] | None = None) -> Path:
    """The ARC Prize submission: {task id: [{"attempt_1": grid, "attempt_2": grid} per test input, in test order]}.

    ``test_counts`` ({task id: number of test inputs}) lists every task to answer, so a task or test input with no
    candidate still gets its entry ([[0]] attempts); by default the tasks and inputs ``ranked`` holds.
    """
    if test_counts is None:
        test_counts = {}
        for task_id, index in ranked:
            test_counts[task_id] = max(test_counts.get(task_id, 0), index + 1)
    submission = {task_id: [_attempts(ranked.get((task_id, i), [])) for i in range(test_counts[task_id])]
                  for task_id in sorted(test_counts)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(submission))
    return path


def _attempts(candidates: list[Candidate]) -> dict:
    grids = [c.grid.tolist() for c in candidates[:2]]
    grids += [BLANK_ATTEMPT] * (2 - len(grids))
    return {"attempt_1": grids[0], "attempt_2": grids[1]}


# ----------------------------------------------------------------------------------------------------------------
# Scoring a submission file as the ARC Prize does, from the public formats alone

def score_submission(submission: dict, solutions: dict) -> dict:
    """Score an ARC Prize submission against ARC Prize solutions ({task id: [output grid per test input]}).

    A test input counts 1 when attempt_1 or attempt_2 equals its output exactly; a task scores the mean over its test
    inputs, the submission the mean over the solutions' tasks (a task missing from the submission scores 0 and is
    listed under ``missing``). A malformed submission raises TrmError naming the task.
    """
    if not isinstance(submission, dict):
        raise TrmError("submission: expected an object {task id: [{\"attempt_1\": grid, \"attempt_2\": grid}, ...]}")
    per_task, missing = {}, []
    for task_id, outputs in solutions.items():
        entries = submission.get(task_id)
        if entries is None:
            missing.append(task_id)
            per_task[task_id] = 0.0
            continue
        if not isinstance(entries, list) or len(entries) != len(outputs):
            n = len(entries) if isinstance(entries, list) else "no list of"
            raise TrmError(f"submission: task {task_id}: {n} entries, but it has {len(outputs)} test inputs")
        solved = []
        for i, (entry, expected) in enumerate(zip(entries, outputs)):
            if not isinstance(entry, dict) or not {"attempt_1", "attempt_2"} <= set(entry):
                raise TrmError(f"submission: task {task_id} test {i}: expected {{\"attempt_1\": grid, "
                               f"\"attempt_2\": grid}}")
            solved.append(any(_same_grid(entry[k], expected) for k in ("attempt_1", "attempt_2")))
        per_task[task_id] = float(np.mean(solved))
    unknown = sorted(set(submission) - set(solutions))
    return {"score": float(np.mean(list(per_task.values()))) if per_task else 0.0, "num_tasks": len(per_task),
            "per_task": per_task, "missing": missing, "unknown_tasks": unknown}


def _same_grid(attempt, expected) -> bool:
    """Exact equality of two grids given as lists of rows (no broadcasting, no type coercion beyond int == int)."""
    return (isinstance(attempt, list) and len(attempt) == len(expected)
            and all(isinstance(row, list) and list(row) == list(want) for row, want in zip(attempt, expected)))


def score_submission_files(submission_path, solutions_path) -> dict:
    """``score_submission`` on a submission.json and an ARC Prize ``*_solutions.json``."""
    loaded = []
    for path in (submission_path, solutions_path):
        try:
            loaded.append(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise TrmError(f"{path}: invalid JSON ({e.msg}, line {e.lineno})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TrmError(f"{path}: unreadable ({type(e).__name__})") from None
    if not isinstance(loaded[1], dict):
        raise TrmError(f"{solutions_path}: expected an object {{task id: [output grid per test input]}}")
    return score_submission(*loaded)
