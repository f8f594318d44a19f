"""The ARC task on the engine: training, voting evaluation (pass@1/pass@2), submission, pictures, `trm solve`."""

import json
import re
from types import SimpleNamespace

import pytest

from trmlab.api import build_model
from trmlab.cli import main
from trmlab.config import load_config
from trmlab.data.arc import build_arc
from trmlab.tasks import get_task
from trmlab.train.trainer import train

# Three small hand-made tasks: flip left-right, recolour 1 -> 2, transpose.
TASKS = {
    "flip": {"train": [{"input": [[1, 0], [2, 3]], "output": [[0, 1], [3, 2]]},
                       {"input": [[4, 5, 0]], "output": [[0, 5, 4]]}],
             "test": [{"input": [[6, 0, 7]], "output": [[7, 0, 6]]}]},
    "recolour": {"train": [{"input": [[1, 0], [0, 1]], "output": [[2, 0], [0, 2]]},
                           {"input": [[1, 1, 3]], "output": [[2, 2, 3]]}],
                 "test": [{"input": [[0, 1], [1, 4]], "output": [[0, 2], [2, 4]]}]},
    "transpose": {"train": [{"input": [[1, 2]], "output": [[1], [2]]},
                            {"input": [[3, 0], [4, 5]], "output": [[3, 4], [0, 5]]}],
                  "test": [{"input": [[5, 6, 7]], "output": [[5], [6], [7]]},
                           {"input": [[8], [9]], "output": [[8, 9]]}]},
}
TINY = ["model.n_embd=16", "model.n_head=2", "model.n_layer=1", "model.n_loops=1", "model.T_recursion=2",
        "model.puzzle_emb_len=2", "N_sup=2", "train.batch_size=4", "train.warmup_steps=1", "data.num_aug=3",
        "train.log_interval=1"]


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def exit_of_verdicts(out: str) -> int:
    """What `trm solve` on one task must exit with: 1 when a test pair with a known output failed, else 0 (a
    two-step model may well be wrong; tests/test_solve.py checks answers on puzzles a trained model solves)."""
    return 1 if re.search(r"^test\[\d+\]: fail", out, re.M) else 0


@pytest.fixture(scope="module")
def arc_dir(tmp_path_factory):
    """training/: flip and recolour; evaluation/: transpose (its test pairs are held out)."""
    root = tmp_path_factory.mktemp("arc-tasks")
    for split, names in (("training", ("flip", "recolour")), ("evaluation", ("transpose",))):
        (root / split).mkdir()
        for name in names:
            (root / split / f"{name}.json").write_text(json.dumps(TASKS[name]))
    return root


@pytest.fixture(scope="module")
def trained(arc_dir, tmp_path_factory):
    """A run trained for two steps on the hand-made tasks (its evaluation votes and writes its files)."""
    tmp = tmp_path_factory.mktemp("arc-run")
    cfg = load_config("arc", TINY + [f"data.source={arc_dir}", "train.steps=2"])
    summary = train(cfg, tmp / "run", data_root=tmp / "data", quiet=True)
    return SimpleNamespace(summary=summary, run=tmp / "run", data=tmp / "data", cfg=cfg)


def test_training_evaluates_by_voting_and_writes_submission_and_pictures(trained):
    e = trained.summary["eval"]
    assert trained.summary["metric"] == "pass@2"
    assert 0.0 <= e["pass@1"] <= e["pass@2"] <= 1.0
    assert e["num_tasks"] == 1 and e["num_test_pairs"] == 2 and e["views"] == 2 * 3
    assert e["trained_on_eval_demos"] is True and "demonstration pairs were trained on" in e["note"]
    submission = json.loads((trained.run / "submission.json").read_text())
    assert list(submission) == ["transpose"] and len(submission["transpose"]) == 2
    assert set(submission["transpose"][0]) == {"attempt_1", "attempt_2"}
    assert (trained.run / "pictures" / "transpose_test0.png").stat().st_size > 0


def test_a_perfect_predictor_scores_pass2_of_one(trained):
    task = get_task("arc")
    data = task.load(trained.cfg, build_arc(trained.cfg.data, out_root=trained.data))
    labels = data.splits["test"].labels
    perfect = SimpleNamespace(predictions=labels.copy(), q_logits=[0.0] * len(labels))
    m = task.extra_metrics(perfect, data, trained.cfg, "test")
    assert m["pass@1"] == m["pass@2"] == 1.0
    wrong = SimpleNamespace(predictions=data.splits["test"].inputs.copy(), q_logits=[0.0] * len(labels))
    assert task.extra_metrics(wrong, data, trained.cfg, "test")["pass@2"] == 0.0  # the input is never the answer
    assert task.extra_metrics(perfect, data, trained.cfg, "train") == {}  # only the held-out split is voted on


def test_solve_a_task_file_prints_verdicts_and_writes_pictures(capsys, trained, arc_dir, tmp_path):
    run_dir = str(trained.run)
    rc, out, _ = run(capsys, "eval", run_dir, "--data-root", str(trained.data))
    assert rc == 0 and "pass@2" in out

    task_file = arc_dir / "evaluation" / "transpose.json"
    rc, out, _ = run(capsys, "solve", run_dir, str(task_file), "--out", str(tmp_path / "pics"))
    # The solver finds the dataset under ./data by default; from elsewhere the task counts as unseen (blank id 0).
    assert rc == exit_of_verdicts(out) and "test[0]: " in out and "test[1]: " in out and "blank puzzle id 0" in out
    assert (tmp_path / "pics" / "transpose_test0.png").stat().st_size > 0
    assert (tmp_path / "pics" / "transpose_test1.png").stat().st_size > 0

    unseen = tmp_path / "mine.json"
    unseen.write_text(json.dumps({"train": TASKS["flip"]["train"], "test": [{"input": [[1, 2]]}]}))
    rc, out, _ = run(capsys, "solve", run_dir, str(unseen), "--out", str(tmp_path / "mine.png"))
    assert rc == 0 and "no expected output" in out and (tmp_path / "mine.png").exists()


def test_solve_finds_the_trained_views_of_a_known_task(trained, arc_dir, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(trained.data.parent)  # the solver reads the dataset's metadata from ./data
    task_file = arc_dir / "evaluation" / "transpose.json"
    rc, out, _ = run(capsys, "solve", str(trained.run), str(task_file), "--out", str(tmp_path))
    assert rc == exit_of_verdicts(out) and "3 trained views with their own puzzle ids" in out
    assert "demonstration pairs" in out


@pytest.mark.parametrize("content, message", [
    ('{"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[1]]}]}', "not rectangular"),
    ('{"train": [{"input": [[1, 12]], "output": [[1]]}], "test": [{"input": [[1]]}]}', "outside 0-9"),
    ('{"train": [{"input": ' + json.dumps([[0] * 31]) + ', "output": [[1]]}], "test": [{"input": [[1]]}]}',
     "larger than 30x30"),
    ('{"train": [', "invalid JSON"),
])
def test_malformed_task_file_is_one_line_exit_2(capsys, trained, tmp_path, content, message):
    bad = tmp_path / "broken_task.json"
    bad.write_text(content)
    rc, _, err = run(capsys, "solve", str(trained.run), str(bad))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert message in err and str(bad) in err and "task broken_task" in err


def test_a_bad_task_in_a_directory_is_skipped_and_reported(arc_dir, tmp_path, capsys):
    for split in ("training", "evaluation"):
        (tmp_path / split).mkdir()
        for f in (arc_dir / split).glob("*.json"):
            (tmp_path / split / f.name).write_text(f.read_text())
    (tmp_path / "evaluation" / "bad.json").write_text('{"train": [], "test": []}')
    cfg = load_config("arc", TINY + [f"data.source={tmp_path}", "train.steps=1"])
    summary = train(cfg, tmp_path / "run", data_root=tmp_path / "data", quiet=True)
    assert summary["eval"]["skipped_tasks"] == 1 and summary["eval"]["num_tasks"] == 1
    assert "skipping ARC task" in capsys.readouterr().out


@pytest.mark.parametrize("preset, tasks", [("arc1-paper", 800), ("arc2-paper", 1120)])
def test_paper_presets_build_with_the_paper_sizes(preset, tasks):
    task = get_task("arc")
    full = load_config(preset)
    assert task.shapes(full)["num_puzzle_ids"] == 1 + tasks * 1000  # upper bound before the data is built
    cfg = load_config(preset, ["data.max_tasks=2", "data.num_aug=2"])
    model = build_model(cfg)
    table = model.embed.puzzle_emb.weight
    assert table.shape == (1 + 4 * 2, 512)  # 512 numbers per (task, view), zero-padded to 16 prefix tokens
    n = sum(p.numel() for p in model.parameters()) - table.numel()
    assert 6.7e6 < n < 6.9e6  # the paper's "7M"


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["arc1-paper", "arc2-paper"])
def test_paper_presets_run_a_few_steps_on_cpu(capsys, tmp_path, preset):
    rc, out, _ = run(capsys, "train", preset, "data.max_tasks=2", "data.num_aug=2", "train.batch_size=2",
                     "train.steps=2", "N_sup=2", "--runs-dir", str(tmp_path), "--data-root", str(tmp_path / "data"),
                     "--quiet")
    assert rc == 0 and "pass@2" in out


def test_solve_a_directory_skips_and_lists_bad_tasks(capsys, trained, arc_dir, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    (folder / "transpose.json").write_text((arc_dir / "evaluation" / "transpose.json").read_text())
    (folder / "bad_colour.json").write_text(
        '{"train": [{"input": [[1, 12]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]}')
    rc, out, err = run(capsys, "solve", str(trained.run), str(folder), "--out", str(tmp_path / "pics"),
                       "--data-root", str(trained.data))
    assert rc == (0 if re.search(r"solved (\d+) of \1 tasks", out) else 1) and "Traceback" not in err
    assert "3 trained views" in out  # --data-root finds the run's dataset from anywhere
    assert "solved" in out and "of 1 tasks" in out and "skipped 1 bad task file" in out
    assert "bad_colour.json: task bad_colour" in out and "outside 0-9" in out
    assert (tmp_path / "pics" / "transpose_test1.png").exists()
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    (only_bad / "x.json").write_text('{"train": [')
    rc, _, err = run(capsys, "solve", str(trained.run), str(only_bad))
    assert rc == 2 and err.count("\n") == 1 and "none of its 1 task files" in err


def test_an_evaluation_split_with_no_good_task_stops_the_build(arc_dir, tmp_path):
    (tmp_path / "training").mkdir()
    (tmp_path / "evaluation").mkdir()
    for f in (arc_dir / "training").glob("*.json"):
        (tmp_path / "training" / f.name).write_text(f.read_text())
    (tmp_path / "evaluation" / "bad.json").write_text('{"train": [], "test": []}')
    cfg = load_config("arc", TINY + [f"data.source={tmp_path}"])
    with pytest.raises(Exception, match=r"no usable task in split 'evaluation' \(all 1 skipped; first: .*bad\.json"):
        build_arc(cfg.data, out_root=tmp_path / "data")


def test_trm_eval_rewrites_the_evaluation_files_and_prints_per_task_scores(capsys, trained, tmp_path):
    import shutil
    run_dir = tmp_path / "run"  # a copy: the module's run keeps the files its training wrote
    shutil.copytree(trained.run, run_dir)
    for name in ("arc_scores.json", "submission.json", "pictures"):
        shutil.rmtree(run_dir / name) if name == "pictures" else (run_dir / name).unlink()
    rc, out, _ = run(capsys, "eval", str(run_dir), "--data-root", str(trained.data), "--n-sup", "1", "--json")
    metrics = json.loads(out)  # stdout is nothing but the JSON
    assert rc == 0 and set(metrics["per_task"]) == {"transpose"}
    assert metrics["per_task"]["transpose"]["pass@2"] == metrics["pass@2"]  # one task: its score is the mean
    assert metrics["written_to"] == str(run_dir)
    scores = json.loads((run_dir / "arc_scores.json").read_text())
    assert scores["n_sup_inference"] == 1  # written by this evaluation (training scored at N_sup 2)
    assert scores["per_task"] == metrics["per_task"] and scores["pass@2"] == metrics["pass@2"]
    assert scores["trained_on_eval_demos"] is True and "demonstration pairs were trained on" in scores["note"]
    assert list(json.loads((run_dir / "submission.json").read_text())) == ["transpose"]
    assert (run_dir / "pictures" / "transpose_test0.png").stat().st_size > 0

    # a checkpoint directory writes into its run; --out writes elsewhere and says where, leaving the run alone
    step_dir = next((run_dir / "checkpoints").glob("step_*"))
    rc, out, _ = run(capsys, "eval", str(step_dir), "--data-root", str(trained.data), "--json")
    assert rc == 0 and json.loads(out)["written_to"] == str(run_dir)
    assert json.loads((run_dir / "arc_scores.json").read_text())["n_sup_inference"] == 2
    rc, out, _ = run(capsys, "eval", str(run_dir), "--data-root", str(trained.data), "--n-sup", "1",
                     "--out", str(tmp_path / "elsewhere"))
    assert rc == 0 and f"{tmp_path / 'elsewhere'}/{{arc_scores.json" in out
    assert json.loads((tmp_path / "elsewhere" / "arc_scores.json").read_text())["n_sup_inference"] == 1
    assert json.loads((run_dir / "arc_scores.json").read_text())["n_sup_inference"] == 2


def test_scores_say_when_no_evaluation_pair_was_trained_on(trained, tmp_path):
    task = get_task("arc")
    data = task.load(trained.cfg, build_arc(trained.cfg.data, out_root=trained.data))
    data.meta = dict(data.meta, trained_on_eval_demos=False)
    labels = data.splits["test"].labels
    perfect = SimpleNamespace(predictions=labels.copy(), q_logits=[0.0] * len(labels))
    m = task.extra_metrics(perfect, data, trained.cfg, "test", out_dir=tmp_path)
    scores = json.loads((tmp_path / "arc_scores.json").read_text())
    assert m["trained_on_eval_demos"] is False and scores["trained_on_eval_demos"] is False
    assert "no pair of the evaluation tasks was trained on" in scores["note"]
    assert scores["per_task"] == {"transpose": {"pass@1": 1.0, "pass@2": 1.0}}


def _solve_lines(capsys, trained, task_file, out_dir):
    rc, out, err = run(capsys, "solve", str(trained.run), str(task_file), "--out", str(out_dir),
                       "--data-root", str(trained.data))
    assert rc == exit_of_verdicts(out) and "Traceback" not in err
    return out.splitlines()


def test_solve_identifies_a_trained_task_by_content_when_its_file_has_another_name(capsys, trained, arc_dir,
                                                                                   tmp_path):
    by_name = _solve_lines(capsys, trained, arc_dir / "evaluation" / "transpose.json", tmp_path)
    renamed = tmp_path / "task.json"
    renamed.write_text((arc_dir / "evaluation" / "transpose.json").read_text())
    by_content = _solve_lines(capsys, trained, renamed, tmp_path)
    assert "matched by file name" in by_name[0] and "3 trained views with their own puzzle ids" in by_name[0]
    assert by_content[0].startswith("task task: 3 trained views of task transpose with their own puzzle ids")
    assert "matched by content" in by_content[0] and "training saw its demonstration pairs" in by_content[0]
    # the same views and puzzle ids, so the same votes and grids (only the picture paths differ)
    assert [ln for ln in by_content[1:] if not ln.startswith("picture:")] == \
        [ln for ln in by_name[1:] if not ln.startswith("picture:")]

    # a training task (demonstrations and test pairs trained), given one of its demonstration pairs only
    subset = tmp_path / "mine.json"
    subset.write_text(json.dumps({"train": TASKS["flip"]["train"][1:], "test": [{"input": [[1, 2]]}]}))
    line = _solve_lines(capsys, trained, subset, tmp_path)[0]
    assert "of task flip" in line and "matched by content" in line and "its test pairs too" in line

    # one cell changed: no trained task has these pairs, and the message says so
    changed = json.loads(json.dumps(TASKS["flip"]))
    changed["train"][0]["output"][0][0] = 9
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps(changed))
    line = _solve_lines(capsys, trained, edited, tmp_path)[0]
    assert "not in the training data (no trained task has this name or these demonstration pairs)" in line
    assert "blank puzzle id 0" in line
