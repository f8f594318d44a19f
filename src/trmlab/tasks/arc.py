"""ARC-AGI: one puzzle id per task x augmentation; voting over augmentations gives pass@1 / pass@2.

Evaluation predicts every augmented view of each held-out test input, maps the predictions back to the original
frame, votes (ties broken by the halting head's confidence, sigmoid(q)) and scores pass@k per task as the ARC
Prize does; pass@2 is the headline number. The evaluation tasks' demonstration pairs are in the training split
(as in the paper), and the metrics say so.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from trmlab.errors import TrmError
from trmlab.tasks.base import SolveResult
from trmlab.tasks.puzzle import PuzzleTask

N_PICTURES = 4  # tasks drawn into <run>/pictures after an evaluation with an out_dir
TRAINED_ON_EVAL_DEMOS = "the evaluation tasks' demonstration pairs were trained on (as in the paper)"
NOT_TRAINED_ON_EVAL_DEMOS = "no pair of the evaluation tasks was trained on (data.train_on_eval_demos=false)"


def sigmoid(x) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def dataset_dir(data_cfg, data_root: str | Path = "data") -> Path:
    """Where the dataset ``data_cfg`` builds lives under ``data_root`` (built or not)."""
    from trmlab.data.puzzles import params_slug
    return Path(data_root) / params_slug("arc", asdict(data_cfg))


def dataset_meta(data_cfg, data_root: str | Path = "data") -> dict | None:
    """The metadata of the dataset ``data_cfg`` builds, when it has been built under ``data_root``."""
    f = dataset_dir(data_cfg, data_root) / "metadata.json"
    return json.loads(f.read_text()) if f.exists() else None


def _count_tasks(source: str, split: str) -> int:
    from trmlab.data.arc import count_tasks
    return count_tasks(source, split)


def num_puzzle_ids(data_cfg, data_root: str | Path = "data") -> int:
    """Puzzle ids of the dataset: exact once built, else an upper bound (1 blank + num_aug views per task)."""
    meta = dataset_meta(data_cfg, data_root)
    if meta is not None:
        return int(meta["num_puzzle_ids"])
    n = 0
    for split in (data_cfg.train_split, data_cfg.eval_split):
        count = _count_tasks(data_cfg.source, split)
        n += min(count, data_cfg.max_tasks) if data_cfg.max_tasks else count
    return 1 + n * data_cfg.num_aug


def _png_path(out: str, task_id: str, index: int, n_pairs: int) -> Path:
    """``out`` as a file (``x.png``; ``x_<i>.png`` for several test pairs) or a directory (``<task>_test<i>.png``)."""
    if out.lower().endswith(".png"):
        p = Path(out)
        return p if n_pairs == 1 else p.with_name(f"{p.stem}_{index}{p.suffix}")
    return Path(out or ".") / f"{task_id}_test{index}.png"


def _grid_text(grid) -> str:
    return "\n".join("".join(str(int(c)) for c in row) for row in np.asarray(grid))


def _pair_key(inp, out) -> bytes:
    """One (input, output) pair as bytes, to compare pairs from task files with pairs decoded from a dataset."""
    inp, out = np.asarray(inp, np.uint8), np.asarray(out, np.uint8)
    return bytes(inp.shape) + inp.tobytes() + bytes(out.shape) + out.tobytes()


class TrainedTasks:
    """The tasks of a run's built dataset: their views (puzzle id, augmentation), found by task id or by content.

    A task file's name need not be its task id (``task.json``), so a file whose name is no trained task is matched
    by its demonstration pairs: those of a trained task are in the training rows of that task's first view, which
    are decoded once, on first need (a few rows per task, read through a memory map of the training split).
    """

    def __init__(self, meta: dict, folder: Path):
        from trmlab.data.arc import Augmentation
        self.meta, self.folder, self._pairs = meta, Path(folder), None
        self.views: dict[str, list] = {}
        for pid, key in enumerate(meta["puzzles"]):
            if key is not None:
                task_id, aug = key.rsplit("|", 1)  # from the right: a task id may itself hold "|"
                self.views.setdefault(task_id, []).append((pid, Augmentation.parse(aug)))

    @classmethod
    def of(cls, data_cfg, data_root) -> TrainedTasks | None:
        meta = dataset_meta(data_cfg, data_root)
        return None if meta is None else cls(meta, dataset_dir(data_cfg, data_root))

    def match(self, task) -> tuple[str | None, str]:
        """(trained task id, how it was matched), or (None, "") when no trained task has this name or these demos."""
        if task.id in self.views:
            return task.id, "matched by file name"
        demos = {_pair_key(inp, out) for inp, out in task.train}
        found = sorted(t for t, pairs in self.known_pairs().items() if demos <= pairs)
        if not found:
            return None, ""
        also = f" (and task {', '.join(found[1:])}'s)" if len(found) > 1 else ""
        return found[0], f"matched by content: its demonstration pairs are that task's{also}"

    def known_pairs(self) -> dict[str, set[bytes]]:
        """{task id: its trained pairs in the original frame}, decoded from the rows of each task's first view."""
        if self._pairs is None:
            from trmlab.data.arc import decode_grid
            first = {views[0][0]: (task_id, views[0][1]) for task_id, views in self.views.items()}
            try:
                arrays = {name: np.load(self.folder / f"train_{name}.npy", mmap_mode="r", allow_pickle=False)
                          for name in ("inputs", "labels", "puzzle_ids")}
            except (OSError, ValueError) as e:
                raise TrmError(f"{self.folder}: cannot read its training rows ({type(e).__name__}); "
                               f"rebuild it with `trm data build`") from None
            self._pairs = {}
            for r in np.flatnonzero(np.isin(arrays["puzzle_ids"], list(first))):
                task_id, aug = first[int(arrays["puzzle_ids"][r])]
                inp, out = decode_grid(arrays["inputs"][r]), decode_grid(arrays["labels"][r])
                if inp is not None and out is not None:  # the offset of a translated row is undone by the crop
                    self._pairs.setdefault(task_id, set()).add(_pair_key(aug.invert(inp), aug.invert(out)))
        return self._pairs


class ArcTask(PuzzleTask):
    name = "arc"
    metric = "pass@2"
    test_time = False     # ARC votes over its augmented views already; --samples / --views are Sudoku's and Maze's
    writes_files = True   # submission.json, arc_scores.json, pictures/

    @property
    def data_config(self):
        from trmlab.data.arc import ArcDataConfig
        return ArcDataConfig

    def build_data(self, data_cfg, data_root):
        from trmlab.data.arc import build_arc
        return build_arc(data_cfg, out_root=data_root)

    def shapes(self, cfg) -> dict:
        from trmlab.data.arc import SEQ_LEN, VOCAB_SIZE
        return {"vocab_size": VOCAB_SIZE, "seq_len": SEQ_LEN, "num_puzzle_ids": num_puzzle_ids(cfg.data)}

    def base_puzzles(self, data) -> int:
        """Tasks with training views (an ARC group is one (task, pair); the paper's epoch is one view per task)."""
        names = data.meta["puzzles"]
        used = np.unique(data.splits["train"].puzzle_ids)
        return len({names[i].rsplit("|", 1)[0] for i in used if names[i] is not None})

    # ------------------------------------------------------------------ evaluation: vote, score, submission
    @torch.no_grad()
    def evaluate(self, model, data, cfg, device, split: str = "test", max_samples: int = 0,
                 out_dir: str | Path | None = None, **options) -> dict:
        """Per-view exact accuracy plus voted pass@k, overall and per task; with ``out_dir`` also submission.json,
        arc_scores.json and pictures/ there (training passes its run directory, `trm eval` the run or --out)."""
        from trmlab.eval.puzzle import evaluate_puzzles
        result = evaluate_puzzles(model, data.splits[split], cfg, device, max_samples=max_samples)
        metrics = result.metrics()
        metrics.update(self.extra_metrics(result, data, cfg, split, out_dir=out_dir))
        return metrics

    def extra_metrics(self, result, data, cfg, split, out_dir: str | Path | None = None) -> dict:
        from trmlab.eval.arc_vote import score, solutions_from_split, vote
        rows = data.meta.get("test_rows") if split == "test" else None
        if not rows:
            return {}
        n = len(result.predictions)  # eval_samples may cut the split short: vote over the rows predicted
        rows = rows[:n]
        ranked = vote(rows, result.predictions, sigmoid(result.q_logits))
        solutions = solutions_from_split(rows, data.splits[split].labels[:n])
        scores = score(ranked, solutions, ks=(1, 2))
        trained_on_demos = data.meta.get("trained_on_eval_demos", False)  # None: a puzzle file, its note says
        metrics = {"pass@1": scores["pass@1"], "pass@2": scores["pass@2"], "num_tasks": scores["num_tasks"],
                   "num_test_pairs": scores["num_test_pairs"], "views": n,
                   "skipped_tasks": len(data.meta.get("skipped_tasks", [])),
                   "trained_on_eval_demos": trained_on_demos,
                   "note": data.meta.get("note") or (TRAINED_ON_EVAL_DEMOS if trained_on_demos
                                                     else NOT_TRAINED_ON_EVAL_DEMOS),
                   "per_task": scores["per_task"]}
        if out_dir is not None:
            self._write_files(metrics, cfg, ranked, solutions, rows, data.splits[split].inputs[:n], Path(out_dir))
            metrics["written_to"] = str(out_dir)
        return metrics

    def _write_files(self, metrics, cfg, ranked, solutions, rows, inputs, out_dir: Path):
        """submission.json, arc_scores.json (the metrics above, per task, and the N_sup they were scored at) and
        pictures/ into ``out_dir``: everything a reader of the scores needs to know what they mean."""
        from trmlab.eval.arc_vote import write_submission
        scores = dict(metrics, n_sup_inference=cfg.model.n_sup_inference)
        try:
            write_submission(ranked, out_dir / "submission.json", {t: len(o) for t, o in solutions.items()})
            (out_dir / "arc_scores.json").write_text(json.dumps(scores, indent=1))
            self._pictures(ranked, solutions, rows, inputs, out_dir / "pictures")
        except OSError as e:
            raise TrmError(f"{out_dir}: cannot write the evaluation files ({e.strerror or type(e).__name__})") from None

    @staticmethod
    def _pictures(ranked, solutions, rows, inputs, folder: Path, n_tasks: int = N_PICTURES):
        """Input, expected and top-voted prediction for the first test pair of the first ``n_tasks`` tasks."""
        from trmlab.data.arc import decode_grid, parse_row_key, render_task_png
        first_row = {}
        for r, key in enumerate(rows):
            task_id, index, aug = parse_row_key(key)
            first_row.setdefault((task_id, index), (r, aug))
        for task_id in sorted(solutions)[:n_tasks]:
            r, aug = first_row[(task_id, 0)]
            candidates = ranked.get((task_id, 0), [])
            best = candidates[0] if candidates else None
            expected = solutions[task_id][0]
            ok = best is not None and np.array_equal(best.grid, expected)
            title = f"{task_id} test[0]: top vote {'correct' if ok else 'wrong'}"
            if best is not None:
                title += f" ({best.votes} votes)"
            render_task_png(folder / f"{task_id}_test0.png", aug.invert(decode_grid(inputs[r])), expected,
                            None if best is None else best.grid, title=title)

    # ------------------------------------------------------------------ trm solve on one task file
    def solve(self, model, cfg, path: str, n_sup: int, out: str = "", data_root: str | Path = "data",
              test_time=None) -> SolveResult:
        """Predict the test outputs of one task file (or of every task file in a directory), vote, draw.

        Solved (exit code 0) when every test pair with a known output is solved within two attempts (or none is
        known), not (exit 1) when one is not. A directory is a study over many tasks: a malformed task file is
        skipped and listed at the end instead of stopping the others (exit 2 only when no task in it could be read).
        """
        f = Path(path)
        lines = []
        if f.is_dir():
            return SolveResult(lines, self._solve_directory(model, cfg, f, n_sup, out, data_root, lines))
        if not f.is_file():
            raise TrmError(f"{path}: no such ARC task file")
        from trmlab.data.arc import _parse_task
        task = _parse_task(f.stem, str(f), f, require_test_outputs=False)  # bad grids: TrmError naming file + task
        failed, _ = self._solve_task(model, cfg, task, n_sup, out, TrainedTasks.of(cfg.data, data_root), data_root,
                                     lines)
        return SolveResult(lines, not failed)

    def _solve_directory(self, model, cfg, folder: Path, n_sup: int, out: str, data_root, lines: list) -> bool:
        from trmlab.data.arc import _parse_task
        files = sorted(folder.glob("*.json"))
        if not files:
            raise TrmError(f"{folder}: no <task_id>.json files")
        trained = TrainedTasks.of(cfg.data, data_root)  # once: its content index serves every file
        out_dir = "" if out.lower().endswith(".png") else out  # one picture per task and test pair
        solved, scored, bad = 0, 0, []
        for f in files:
            try:
                task = _parse_task(f.stem, str(f), f, require_test_outputs=False)
            except TrmError as e:
                lines.append(f"skipped: {e}")
                bad.append(str(e))
                continue
            failed, known = self._solve_task(model, cfg, task, n_sup, out_dir, trained, data_root, lines)
            if known:
                scored += 1
                solved += not failed
        if len(bad) == len(files):
            raise TrmError(f"{folder}: none of its {len(files)} task files could be read (first: {bad[0]})")
        lines.append(f"{folder}: solved {solved} of {scored} tasks with known test outputs (pass@2, every test pair)"
                     + (f"; skipped {len(bad)} bad task file{'s' if len(bad) > 1 else ''}:" if bad else ""))
        for message in bad:
            lines.append(f"  {message}")
        return solved == scored

    @staticmethod
    def _task_views(task, cfg, trained: TrainedTasks | None) -> tuple[list, str | None, str]:
        """(puzzle id, augmentation) per view of ``task``, the trained task it matched (or None) and how: a trained
        task's own views, else blank-id views seeded as build_arc seeds a task's (a skipped task gets the same)."""
        from trmlab.data.arc import task_augmentations
        matched, how = trained.match(task) if trained is not None else (None, "")
        if matched is not None:
            return trained.views[matched], matched, how
        rng = np.random.default_rng([cfg.data.seed, zlib.crc32(task.id.encode()), 0])
        return [(0, aug) for aug in task_augmentations(task, cfg.data.num_aug, rng)], None, ""

    def _views(self, task, cfg, trained: TrainedTasks | None, data_root, lines: list) -> list:
        """(puzzle id, augmentation) per view of ``task``: a trained task's own, else blank-id views; says which."""
        views, matched, how = self._task_views(task, cfg, trained)
        if matched is not None:
            meta = trained.meta
            seen = "its test pairs too" if matched in meta.get("train_tasks", []) else \
                "its demonstration pairs" if meta.get("trained_on_eval_demos") else "no pair of it"
            of = "" if matched == task.id else f" of task {matched}"
            lines.append(f"task {task.id}: {len(views)} trained views{of} with their own puzzle ids ({how}; "
                         f"training saw {seen})")
        elif trained is not None:
            lines.append(f"task {task.id}: not in the training data (no trained task has this name or these "
                         f"demonstration pairs); {len(views)} views with the blank puzzle id 0 (TRM learns a puzzle "
                         f"embedding per task, so expect little on unseen tasks)")
        else:
            lines.append(f"task {task.id}: {len(views)} views with the blank puzzle id 0; whether training saw it is "
                         f"unknown: the run's dataset is not under {data_root}/"
                         + (" (pass --data-root where it was built to use the trained puzzle ids of its tasks)"
                            if cfg.model.num_puzzle_ids > 1 else ""))
        return views

    # ------------------------------------------------------------------ trm eval --puzzles
    def read_puzzle_file(self, cfg, path, data_root="data"):
        """The tasks of a task JSON, a folder of them, or an ARC Prize challenges+solutions pair as a one-split
        dataset: every test input under each of its task's views (a trained task's own views and puzzle ids, found
        by name or content as `trm solve` finds them; else blank-id views), labelled with its expected output."""
        from trmlab.data.arc import encode_pair, read_task_files, row_key
        from trmlab.data.puzzles import PuzzleSplit
        from trmlab.tasks.puzzle import PuzzleData
        tasks, bad = read_task_files(path, require_test_outputs=True)
        if not tasks:
            raise TrmError(f"{path}: no usable ARC task (all {len(bad)} bad; first: {bad[0][1]})")
        ids = [t.id for t in tasks]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:  # their votes would mix
            raise TrmError(f"{path}: the same task id in more than one file ({', '.join(twice[:3])}); their votes "
                           f"would mix, so evaluate the files one at a time")
        trained = TrainedTasks.of(cfg.data, data_root)
        inputs, labels, pids, rows, matched = [], [], [], [], 0
        for task in tasks:
            views, found, _ = self._task_views(task, cfg, trained)
            matched += found is not None
            for pid, aug in views:
                for i, (inp, out) in enumerate(task.test):
                    x, y = encode_pair(inp, out, aug)  # exactly as build_arc encodes its test rows
                    inputs.append(x), labels.append(y), pids.append(pid), rows.append(row_key(task.id, i, aug))
        split = PuzzleSplit(np.stack(inputs), np.stack(labels), np.array(pids, np.int32),
                            np.zeros(len(inputs), np.int32))
        where = "no dataset of the run found under " + str(data_root) if trained is None else \
            f"{matched} of {len(tasks)} tasks matched trained tasks (their own puzzle ids)"
        note = (f"puzzle file {path}: {where}; the other tasks ran with the blank puzzle id 0, which learns nothing "
                f"about a task" if matched < len(tasks) else f"puzzle file {path}: {where}")
        meta = {"task": "arc", "test_rows": rows, "note": note, "trained_on_eval_demos": None,
                "skipped": [message for _, message in bad]}
        return PuzzleData(Path(path), {"test": split}, meta)

    def _solve_task(self, model, cfg, task, n_sup: int, out: str, trained: TrainedTasks | None,
                    data_root, lines: list) -> tuple[int, bool]:
        """Solve one parsed task; returns (test pairs failed, whether any test output was known)."""
        from trmlab.data.arc import encode_grid, render_task_png
        from trmlab.data.puzzles import PuzzleSplit
        from trmlab.eval.arc_vote import vote
        from trmlab.eval.puzzle import evaluate_puzzles

        views = self._views(task, cfg, trained, data_root, lines)
        inputs, keys, pids = [], [], []
        for pid, aug in views:
            for i, (inp, _) in enumerate(task.test):
                a = aug.apply(inp)
                inputs.append(encode_grid(a, aug.place(a.shape)))  # exactly as build_arc encodes test rows
                keys.append(f"{task.id}|{i}|{aug.key}")
                pids.append(pid)
        x = np.stack(inputs)
        split = PuzzleSplit(x, np.zeros_like(x), np.array(pids, np.int32), np.zeros(len(x), np.int32))
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, n_sup_inference=n_sup))
        result = evaluate_puzzles(model, split, cfg, torch.device("cpu"))
        ranked = vote(keys, result.predictions, sigmoid(result.q_logits))
        failed, any_known = 0, False
        for i, (inp, expected) in enumerate(task.test):
            candidates = ranked.get((task.id, i), [])
            verdict = "no expected output"
            if expected is not None:
                any_known = True
                ok = any(np.array_equal(c.grid, expected) for c in candidates[:2])
                failed += not ok
                verdict = "pass" if ok else "fail"
            best = candidates[0] if candidates else None
            lines.append(f"test[{i}]: {verdict} (pass@2; {len(candidates)} candidates from {len(views)} views"
                         + (f", top one {best.votes} votes, confidence {best.confidence:.2f})" if best else ")"))
            lines.append(_grid_text(best.grid) if best else "(no grid predicted)")
            png = render_task_png(_png_path(out, task.id, i, len(task.test)), inp, expected,
                                  best.grid if best else None, title=f"{task.id} test[{i}]: {verdict}")
            lines.append(f"picture: {png}")
        return failed, any_known
