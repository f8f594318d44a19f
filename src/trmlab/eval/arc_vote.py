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


def write_submission(ranked: dict[tuple[str, int], list[Candidate]], path) -> Path:
    """ARC Prize JSON: {task id: [{"attempt_1": grid, "attempt_2": grid} per test index]}; gaps get [[0]]."""
    by_task: dict[str, dict[int, list[Candidate]]] = {}
    for (task_id, index), candidates in ranked.items():
        by_task.setdefault(task_id, {})[index] = candidates
    submission = {}
    for task_id in sorted(by_task):
        pairs = by_task[task_id]
        submission[task_id] = [_attempts(pairs.get(i, [])) for i in range(max(pairs) + 1)]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(submission))
    return path


def _attempts(candidates: list[Candidate]) -> dict:
    grids = [c.grid.tolist() for c in candidates[:2]]
    grids += [BLANK_ATTEMPT] * (2 - len(grids))
    return {"attempt_1": grids[0], "attempt_2": grids[1]}
