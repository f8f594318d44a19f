"""ARC files in the public layouts (ARC Prize challenges+solutions, the ARC-AGI repos' folders), the ARC Prize
submission format and its scorer, and `trm eval <run> --puzzles` on ARC tasks."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from trmlab.cli import main
from trmlab.config import load_config
from trmlab.data.arc import ArcDataConfig, build_arc, load_tasks, read_task_files
from trmlab.data.puzzles import load_puzzle_dataset
from trmlab.errors import TrmError
from trmlab.eval.arc_vote import Candidate, score_submission, score_submission_files, write_submission
from trmlab.train.trainer import train

FIXTURES = Path(__file__).parent / "fixtures"
PRIZE, REPO = FIXTURES / "arc-prize", FIXTURES / "arc-agi"
TINY = ["model.n_embd=16", "model.n_head=2", "model.n_layer=1", "model.n_loops=1", "model.T_recursion=2",
        "model.puzzle_emb_len=2", "N_sup=2", "train.batch_size=4", "train.warmup_steps=1", "data.num_aug=3",
        "train.log_interval=1"]


def solutions(split="evaluation"):
    return json.loads((PRIZE / f"arc-agi_{split}_solutions.json").read_text())


def as_lists(tasks):
    return {t.id: ([(i.tolist(), o.tolist()) for i, o in t.train],
                   [(i.tolist(), None if o is None else o.tolist()) for i, o in t.test]) for t in tasks}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A two-step run trained on the ARC Prize files (training + evaluation challenges with their solutions)."""
    tmp = tmp_path_factory.mktemp("arc-prize-run")
    cfg = load_config("arc", TINY + [f"data.source={PRIZE}", "train.steps=2"])
    summary = train(cfg, tmp / "run", data_root=tmp / "data", quiet=True)
    return SimpleNamespace(summary=summary, run=tmp / "run", data=tmp / "data", cfg=cfg)


def test_arc_prize_files_hold_the_same_tasks_as_the_task_folders():
    for split in ("training", "evaluation"):
        prize = load_tasks(str(PRIZE), split, require_test_outputs=True)
        repo = load_tasks(str(REPO), split, require_test_outputs=True)
        assert as_lists(prize) == as_lists(repo) and len(prize) == {"training": 2, "evaluation": 1}[split]
    # the solutions fill the test outputs in test order
    task = load_tasks(str(PRIZE), "evaluation")[0]
    assert [o.tolist() for _, o in task.test] == solutions()[task.id]


def test_an_arc_prize_folder_builds_the_same_dataset_as_the_task_folders(tmp_path):
    built = {}
    for name, source in (("prize", PRIZE), ("repo", REPO)):
        splits, meta = load_puzzle_dataset(build_arc(ArcDataConfig(source=str(source), num_aug=3), tmp_path / name))
        built[name] = (splits, meta)
    (a, meta_a), (b, meta_b) = built["prize"], built["repo"]
    for split in ("train", "test"):
        for key, arr in a[split].arrays().items():
            assert (arr == b[split].arrays()[key]).all(), (split, key)
    assert meta_a["test_rows"] == meta_b["test_rows"] and meta_a["eval_tasks"] == ["9f8e7d6c"]


def test_task_files_are_read_from_a_task_json_a_folder_or_either_arc_prize_file():
    one = as_lists(read_task_files(REPO / "evaluation" / "9f8e7d6c.json")[0])
    assert as_lists(read_task_files(PRIZE / "arc-agi_evaluation_challenges.json")[0]) == one
    assert as_lists(read_task_files(PRIZE / "arc-agi_evaluation_solutions.json")[0]) == one
    folder, bad = read_task_files(REPO / "training")
    assert sorted(t.id for t in folder) == ["0a1d4ef5", "1b2c3d4e"] and bad == []
    prize_folder, _ = read_task_files(PRIZE)  # both challenges files; the solutions files are read with them
    assert sorted(t.id for t in prize_folder) == ["0a1d4ef5", "1b2c3d4e", "9f8e7d6c"]


def test_challenges_without_solutions_or_with_the_wrong_count_are_named(tmp_path):
    shutil.copy(PRIZE / "arc-agi_evaluation_challenges.json", tmp_path / "x_evaluation_challenges.json")
    with pytest.raises(TrmError, match=r"x_evaluation_challenges\.json: ARC Prize challenges without their solutions "
                                       r"file \(x_evaluation_solutions\.json\)"):
        read_task_files(tmp_path / "x_evaluation_challenges.json")
    (tmp_path / "x_evaluation_solutions.json").write_text(json.dumps({"9f8e7d6c": [[[5], [6], [7]]]}))
    with pytest.raises(TrmError, match=r"task 9f8e7d6c: .*has 1 outputs for its 2 test inputs"):
        load_tasks(str(tmp_path), "evaluation")


# ----------------------------------------------------------------------------------------------------------------
# the ARC Prize submission format, read back by a scorer written against the public format

def test_the_scorer_counts_either_attempt_per_test_input_and_averages_per_task():
    sol = {"a": [[[1]], [[2]]], "b": [[[3, 4]]]}
    sub = {"a": [{"attempt_1": [[0]], "attempt_2": [[1]]}, {"attempt_1": [[9]], "attempt_2": [[9]]}],
           "b": [{"attempt_1": [[3, 4]], "attempt_2": [[0]]}]}
    s = score_submission(sub, sol)
    assert s["per_task"] == {"a": 0.5, "b": 1.0} and s["score"] == 0.75 and s["missing"] == []
    s = score_submission({"b": sub["b"], "zz": []}, sol)
    assert s["per_task"]["a"] == 0.0 and s["missing"] == ["a"] and s["unknown_tasks"] == ["zz"]
    assert score_submission({"a": sub["a"][::-1], "b": sub["b"]}, sol)["per_task"]["a"] == 0.0  # order matters
    assert score_submission({"a": sub["a"], "b": [{"attempt_1": [[3], [4]], "attempt_2": [[0]]}]},
                            sol)["per_task"]["b"] == 0.0  # same cells, other shape
    with pytest.raises(TrmError, match="task a: 1 entries, but it has 2 test inputs"):
        score_submission({"a": sub["a"][:1]}, sol)
    with pytest.raises(TrmError, match=r"task b test 0: expected \{\"attempt_1\""):
        score_submission({"b": [{"attempt_1": [[3, 4]]}]}, sol)


def test_write_submission_is_the_arc_prize_format_with_every_test_input_in_order(tmp_path):
    sol = solutions()
    ranked = {("9f8e7d6c", i): [Candidate(np.array(g), 3, 0.9), Candidate(np.array([[0]]), 1, 0.1)]
              for i, g in enumerate(sol["9f8e7d6c"])}
    ranked[("lonely", 0)] = []  # a test input no view decoded: still answered, with blank attempts
    path = write_submission(ranked, tmp_path / "submission.json", {"9f8e7d6c": 2, "lonely": 2, "unseen": 1})
    sub = json.loads(path.read_text())
    assert set(sub) == {"9f8e7d6c", "lonely", "unseen"}
    assert [len(v) for v in (sub["9f8e7d6c"], sub["lonely"], sub["unseen"])] == [2, 2, 1]
    assert all(set(e) == {"attempt_1", "attempt_2"} for v in sub.values() for e in v)
    assert [e["attempt_1"] for e in sub["9f8e7d6c"]] == sol["9f8e7d6c"] and sub["unseen"][0]["attempt_2"] == [[0]]
    assert score_submission_files(path, PRIZE / "arc-agi_evaluation_solutions.json")["score"] == 1.0


def test_a_runs_submission_scores_as_its_own_pass2(trained):
    e = trained.summary["eval"]
    scored = score_submission_files(trained.run / "submission.json", PRIZE / "arc-agi_evaluation_solutions.json")
    assert scored["num_tasks"] == 1 and scored["missing"] == [] and scored["score"] == e["pass@2"]


# ----------------------------------------------------------------------------------------------------------------
# trm eval <run> --puzzles: a task JSON, a folder, an ARC Prize pair

def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_eval_puzzles_scores_an_arc_prize_file_and_writes_its_submission(capsys, trained, tmp_path):
    rc, out, _ = run(capsys, "eval", trained.run, "--puzzles", PRIZE / "arc-agi_evaluation_challenges.json",
                     "--data-root", trained.data, "--out", tmp_path / "out", "--json")
    m = json.loads(out)
    assert rc == 0 and m["num_tasks"] == 1 and m["num_test_pairs"] == 2 and m["eval_samples"] == 2 * 3
    assert "1 of 1 tasks matched trained tasks" in m["note"] and len(m["exact_acc_per_step"]) == 2
    held_out = trained.summary["eval"]  # the same tasks and views as the run's own held-out split: same scores
    assert m["pass@2"] == held_out["pass@2"] and m["exact_acc_per_step"] == held_out["exact_acc_per_step"]
    scored = score_submission_files(tmp_path / "out" / "submission.json", PRIZE / "arc-agi_evaluation_solutions.json")
    assert scored["score"] == m["pass@2"]
    # a folder of task JSONs and one task file, without --out: scored, nothing written
    rc, out, _ = run(capsys, "eval", trained.run, "--puzzles", REPO / "training", "--data-root", trained.data, "--json")
    m = json.loads(out)
    assert rc == 0 and m["num_tasks"] == 2 and "written_to" not in m
    rc, out, _ = run(capsys, "eval", trained.run, "--puzzles", REPO / "evaluation" / "9f8e7d6c.json",
                     "--data-root", trained.data)
    assert rc == 0 and "(1 tasks, 6 views)" in out and "pass@2" in out


def test_eval_puzzles_refuses_another_tasks_puzzles_and_a_task_given_twice(capsys, trained, tmp_path):
    rc, _, err = run(capsys, "eval", trained.run, "--puzzles", FIXTURES / "sudoku-extreme" / "test.csv")
    assert rc == 2 and "holds sudoku puzzles, but the run is a arc run" in err and err.count("\n") == 1
    for f in [*(REPO / "training").glob("*.json"), *PRIZE.glob("arc-agi_training_*")]:
        shutil.copy(f, tmp_path / f.name)  # the same two tasks as task files and as an ARC Prize pair
    rc, _, err = run(capsys, "eval", trained.run, "--puzzles", tmp_path)
    assert rc == 2 and "the same task id in more than one file (0a1d4ef5, 1b2c3d4e)" in err
