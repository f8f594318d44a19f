"""Sudoku data: solver, generator, augmentation, CSV import, builder determinism and corruption checks."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from trmlab.data.puzzles import load_puzzle_dataset
from trmlab.data.sudoku import (
    SudokuDataConfig, augment, build_sudoku, decode_tokens, encode_grid, format_grid, generate_puzzle,
    is_consistent, is_valid_solution, load_csv, load_hf, parse_puzzle, read_csv, read_puzzle_file, solve,
)
from trmlab.errors import TrmError

# a classic puzzle with a known unique solution
PUZZLE = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
SOLUTION = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
FIXTURES = Path(__file__).parent / "fixtures"  # files in the public layouts (tests/fixtures/README.md)


def grid(s):
    return np.array([0 if c == "." else int(c) for c in s], dtype=np.int8)


def test_solver_known_puzzle_and_ambiguity():
    sols, _ = solve(grid(PUZZLE))
    assert len(sols) == 1 and (sols[0] == grid(SOLUTION)).all()
    # an empty grid has many solutions: the count stops at the limit
    sols, _ = solve(np.zeros(81, np.int8), limit=3)
    assert len(sols) == 3 and all(is_valid_solution(s) for s in sols)
    assert len({s.tobytes() for s in sols}) == 3
    # clashing givens: no solution
    bad = grid(PUZZLE)
    bad[2] = 5  # row 0 already has a 5
    assert solve(bad)[0] == []


def test_validity_checks():
    s = grid(SOLUTION)
    assert is_valid_solution(s)
    assert is_consistent(grid(PUZZLE), s)
    swapped = s.copy()
    swapped[[0, 1]] = swapped[[1, 0]]  # rows still hold 1..9, but columns break
    assert not is_valid_solution(swapped)
    blank = s.copy()
    blank[40] = 0
    assert not is_valid_solution(blank)
    p = grid(PUZZLE)
    p[2] = 9 if s[2] != 9 else 8  # a given that the solution does not keep
    assert not is_consistent(p, s)


def test_tokens_roundtrip():
    g = grid(PUZZLE)
    t = encode_grid(g)
    assert t.min() >= 1 and t.max() <= 10 and (t[g == 0] == 1).all()
    assert (decode_tokens(t) == g).all()
    assert (decode_tokens(np.array([0, 11, 5] + [1] * 78)) [:3] == [0, 0, 4]).all()


def test_generated_puzzles_unique_valid_consistent():
    rng = np.random.default_rng(0)
    for n_blanks in (30, 40, 45, 52):
        p, s, rating = generate_puzzle(rng, n_blanks)
        assert (p == 0).sum() == n_blanks
        sols, backtracks = solve(p, limit=2)
        assert len(sols) == 1 and (sols[0] == s).all()
        assert is_valid_solution(s) and is_consistent(p, s)
        assert rating == backtracks >= 0


def test_augment_keeps_validity_and_changes_grid():
    rng = np.random.default_rng(1)
    p, s = grid(PUZZLE), grid(SOLUTION)
    seen = set()
    for _ in range(20):
        ap, as_ = augment(p, s, rng)
        assert is_valid_solution(as_) and is_consistent(ap, as_)
        assert (ap == 0).sum() == (p == 0).sum()  # blanks stay blank
        assert len(solve(ap)[0]) == 1
        seen.add(ap.tobytes())
    assert p.tobytes() not in seen and len(seen) == 20
    # deterministic from the generator
    a1 = augment(p, s, np.random.default_rng(7))
    a2 = augment(p, s, np.random.default_rng(7))
    assert (a1[0] == a2[0]).all() and (a1[1] == a2[1]).all()


def test_parse_and_format():
    g = parse_puzzle(PUZZLE)
    assert (g == grid(PUZZLE)).all()
    assert (parse_puzzle(PUZZLE.replace(".", "0")) == g).all()
    text = format_grid(g)
    assert text.count("\n") == 10 and "------+-------+------" in text
    assert (parse_puzzle(text) == g).all()  # a pasted grid parses back
    with pytest.raises(TrmError, match="found 80 cells"):
        parse_puzzle(PUZZLE[:-1])
    with pytest.raises(TrmError, match=r"'x' at position 4"):
        parse_puzzle("53.x" + PUZZLE[4:])


def _write_csv(path, rows):
    """The public Sudoku-Extreme layout (sapientinc/sudoku-extreme train.csv / test.csv)."""
    path.write_text("source,question,answer,rating\n" + "".join(f"{src},{q},{a},{r}\n" for src, q, a, r in rows))


def _generated_rows(n, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        p, s, r = generate_puzzle(rng, 40)
        rows.append(("gen", "".join(str(v) if v else "." for v in p), "".join(map(str, s)), r))
    return rows


def test_csv_roundtrip_and_build(tmp_path):
    rows = _generated_rows(12, seed=3)
    _write_csv(tmp_path / "train.csv", rows[:10])
    _write_csv(tmp_path / "test.csv", rows[10:])
    puzzles, solutions, ratings = load_csv(tmp_path / "train.csv")
    assert puzzles.shape == (10, 81) and solutions.shape == (10, 81)
    assert (puzzles[0] == parse_puzzle(rows[0][1])).all() and list(ratings) == [r[3] for r in rows[:10]]

    cfg = SudokuDataConfig(source=str(tmp_path / "train.csv"), subsample_size=6, num_aug=2)
    splits, meta = load_puzzle_dataset(build_sudoku(cfg, tmp_path / "data"))
    assert len(splits["train"]) == 6 * 3 and len(splits["test"]) == 2  # test comes from the sibling test.csv
    assert meta["stats"]["train"]["base_puzzles"] == 6
    for inp, lab in zip(splits["train"].inputs, splits["train"].labels):
        assert is_valid_solution(decode_tokens(lab)) and is_consistent(decode_tokens(inp), decode_tokens(lab))


def test_single_csv_is_split_90_10(tmp_path):
    rows = _generated_rows(20, seed=5)
    rows[0] = rows[0][:3] + (99,)
    _write_csv(tmp_path / "puzzles.csv", rows)
    cfg = SudokuDataConfig(source=str(tmp_path / "puzzles.csv"))
    splits, meta = load_puzzle_dataset(build_sudoku(cfg, tmp_path / "data"))
    assert len(splits["train"]) == 18 and len(splits["test"]) == 2
    assert not {r.tobytes() for r in splits["train"].inputs} & {r.tobytes() for r in splits["test"].inputs}
    # min_rating filters both splits by the CSV's rating column
    cfg = SudokuDataConfig(source=str(tmp_path / "puzzles.csv"), min_rating=100)
    with pytest.raises(TrmError, match="no test puzzles left .*min_rating=100"):
        build_sudoku(cfg, tmp_path / "data")


def test_csv_malformed_rows(tmp_path):
    rows = _generated_rows(3, seed=4)
    bad_len = list(rows)
    bad_len[1] = ("gen", rows[1][1][:-1], rows[1][2], 0)
    _write_csv(tmp_path / "a.csv", bad_len)
    with pytest.raises(TrmError, match=r"a\.csv: line 3: column 'question' has 80 characters"):
        load_csv(tmp_path / "a.csv")
    bad_char = list(rows)
    bad_char[2] = ("gen", "x" + rows[2][1][1:], rows[2][2], 0)
    _write_csv(tmp_path / "b.csv", bad_char)
    with pytest.raises(TrmError, match=r"b\.csv: line 4: .*'x' at position 1"):
        load_csv(tmp_path / "b.csv")
    a = list(rows[0][2])
    a[0], a[1] = a[1], a[0]  # breaks the columns and (maybe) a given
    _write_csv(tmp_path / "c.csv", [("gen", "." * 81, "".join(a), 0)] + rows[1:])
    with pytest.raises(TrmError, match=r"c\.csv: line 2: answer is not a valid solution"):
        load_csv(tmp_path / "c.csv")
    with pytest.raises(TrmError, match="no such CSV"):
        load_csv(tmp_path / "missing.csv")


def test_load_hf_offline_is_a_clean_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub

    def fail(**kwargs):
        raise OSError("offline")
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(TrmError, match="cannot download train.csv .*data.source=path/to.csv"):
        load_hf("sapientinc/sudoku-extreme", "train")


def test_builder_deterministic_disjoint_and_reused(tmp_path):
    cfg = SudokuDataConfig(n_train=40, n_test=15, min_blanks=35, max_blanks=45, num_aug=3, seed=5)
    out1 = build_sudoku(cfg, tmp_path / "a")
    out2 = build_sudoku(cfg, tmp_path / "b")
    s1, m1 = load_puzzle_dataset(out1)
    s2, _ = load_puzzle_dataset(out2)
    for split in ("train", "test"):
        for name, arr in s1[split].arrays().items():
            assert (arr == s2[split].arrays()[name]).all(), (split, name)
    assert m1["task"] == "sudoku" and m1["vocab_size"] == 11 and m1["seq_len"] == 81
    assert m1["num_puzzle_ids"] == 1 and m1["config"]["seed"] == 5
    assert 35 <= m1["stats"]["train"]["mean_blanks"] <= 45

    train, test = s1["train"], s1["test"]
    assert len(train) == 40 * 4 and len(test) == 15
    assert (train.group_ids == np.repeat(np.arange(40), 4)).all() and (train.puzzle_ids == 0).all()
    base = train.inputs[::4]  # index 0 of each group is the original puzzle
    assert not {r.tobytes() for r in base} & {r.tobytes() for r in test.inputs}
    assert len({r.tobytes() for r in base}) == 40
    # augmented rows differ from their base but keep its blank count
    assert (train.inputs[1::4] != train.inputs[::4]).any(axis=1).all()
    assert ((train.inputs[1::4] == 1).sum(1) == (base == 1).sum(1)).all()

    # a different seed gives different puzzles; the same config reuses the directory
    other = load_puzzle_dataset(build_sudoku(SudokuDataConfig(n_train=40, n_test=15, min_blanks=35, max_blanks=45,
                                                              num_aug=3, seed=6), tmp_path / "a"))[0]
    assert not (other["test"].inputs == test.inputs).all()
    mtime = (out1 / "metadata.json").stat().st_mtime_ns
    assert build_sudoku(cfg, tmp_path / "a") == out1 and (out1 / "metadata.json").stat().st_mtime_ns == mtime


def test_corrupted_dataset_raises(tmp_path):
    out = build_sudoku(SudokuDataConfig(n_train=5, n_test=2), tmp_path)
    arr = np.load(out / "train_inputs.npy")
    arr[0, 0] = 10 if arr[0, 0] != 10 else 2
    np.save(out / "train_inputs.npy", arr)
    with pytest.raises(TrmError, match="content hash mismatch"):
        load_puzzle_dataset(out)
    # the builder notices and rebuilds it
    out2 = build_sudoku(SudokuDataConfig(n_train=5, n_test=2), tmp_path)
    assert load_puzzle_dataset(out2)[1]["splits"] == {"train": 5, "test": 2}
    (out / "test_labels.npy").write_bytes(b"junk")
    with pytest.raises(TrmError, match="test_labels.npy: missing or corrupt"):
        load_puzzle_dataset(out)


@pytest.mark.parametrize("kwargs, field", [
    (dict(min_blanks=-1), "min_blanks"), (dict(min_blanks=40, max_blanks=30), "max_blanks"),
    (dict(max_blanks=65), "max_blanks"), (dict(n_train=0), "n_train"), (dict(num_aug=-1), "num_aug"),
    (dict(subsample_size=-5), "subsample_size"), (dict(source=""), "source"),
])
def test_config_validation(kwargs, field):
    with pytest.raises(TrmError, match=f"data.{field}="):
        SudokuDataConfig(**kwargs)


def test_unknown_source(tmp_path):
    with pytest.raises(TrmError, match="data.source='nonsense'"):
        build_sudoku(SudokuDataConfig(source="nonsense"), tmp_path)
    with pytest.raises(TrmError, match="no such CSV"):
        build_sudoku(SudokuDataConfig(source=str(tmp_path / "nope.csv")), tmp_path)


@pytest.mark.parametrize("cells, message", [
    ({2: 5}, r"5 twice in row 1 \(r1c1 and r1c3\)"),             # the first row starts 5 3 .
    ({54: 5}, r"5 twice in column 1 \(r1c1 and r7c1\)"),        # r7 and box 7 hold no 5
    ({11: 3}, r"3 twice in box 1 \(r1c2 and r2c3\)"),           # row 2 and column 3 hold no 3
])
def test_contradictory_givens_are_a_one_line_error(cells, message):
    chars = list(PUZZLE)
    for i, d in cells.items():
        assert chars[i] == "."                                   # only blanks are filled, so the clash is new
        chars[i] = str(d)
    with pytest.raises(TrmError, match="contradictory givens, " + message) as e:
        parse_puzzle("".join(chars))
    assert "\n" not in str(e.value)
    assert len(solve(grid("".join(chars)))[0]) == 0              # indeed unsolvable


def test_local_csv_is_keyed_by_its_path_and_rebuilt_when_edited(tmp_path, monkeypatch, capsys):
    data = tmp_path / "data"
    built = {}
    for name, seed in (("a", 11), ("b", 12)):  # the same relative name in two directories: two datasets
        (tmp_path / name).mkdir()
        _write_csv(tmp_path / name / "train.csv", _generated_rows(6, seed))
        _write_csv(tmp_path / name / "test.csv", _generated_rows(2, seed + 100))
        monkeypatch.chdir(tmp_path / name)
        built[name] = build_sudoku(SudokuDataConfig(source="train.csv"), data)
    assert built["a"] != built["b"]
    inputs = {name: load_puzzle_dataset(path)[0]["train"].inputs for name, path in built.items()}
    assert (inputs["a"] != inputs["b"]).any()

    cfg = SudokuDataConfig(source="train.csv")  # cwd is b/
    assert build_sudoku(cfg, data) == built["b"] and "rebuilding" not in capsys.readouterr().out
    _write_csv(tmp_path / "b" / "test.csv", _generated_rows(3, 99))  # the sibling test file is read too
    splits, _ = load_puzzle_dataset(build_sudoku(cfg, data))
    assert "changed since" in capsys.readouterr().out and len(splits["test"]) == 3


# -----------------------------------------------------------------------------
# the layouts of real files (fixtures with the public header rows), text files of puzzles, files too small

def _file_grids(path, column_puzzle, column_solution, blank="."):
    import csv
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    as_grid = lambda text: np.array([0 if c in (".", "0") else int(c) for c in text], np.int8)  # noqa: E731
    return (np.stack([as_grid(r[column_puzzle]) for r in rows]), np.stack([as_grid(r[column_solution]) for r in rows]),
            rows)


@pytest.mark.parametrize("name, puzzle, solution, has_rating", [
    ("sudoku-extreme/train.csv", "question", "answer", True),     # source,question,answer,rating ('.' blanks)
    ("sudoku-qa.csv", "q", "a", True),                            # source,q,a,rating
    ("sudoku-puzzle-solution.csv", "puzzle", "solution", False),  # puzzle,solution ('0' blanks, no rating)
])
def test_every_csv_layout_reads_the_same_grids(name, puzzle, solution, has_rating):
    want_p, want_s, rows = _file_grids(FIXTURES / name, puzzle, solution)
    f = read_csv(FIXTURES / name)
    assert (f.puzzles == want_p).all() and (f.solutions == want_s).all()
    assert (f.ratings is not None) == has_rating
    if has_rating:
        assert list(f.ratings) == [int(r["rating"]) for r in rows]
    assert all(is_valid_solution(s) and is_consistent(p, s) for p, s in zip(f.puzzles, f.solutions))


def test_the_public_layout_builds_from_train_and_test_csv(tmp_path):
    cfg = SudokuDataConfig(source=str(FIXTURES / "sudoku-extreme" / "train.csv"))
    splits, meta = load_puzzle_dataset(build_sudoku(cfg, tmp_path))
    assert meta["stats"]["train"]["base_puzzles"] == 10 and meta["stats"]["test"]["base_puzzles"] == 4
    want_test, _, _ = _file_grids(FIXTURES / "sudoku-extreme" / "test.csv", "question", "answer")
    assert (splits["test"].inputs == want_test + 1).all()  # test.csv beside train.csv is the test set, in order


def test_a_header_in_no_layout_names_what_it_found_and_what_is_read(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,grid,solved\n1," + PUZZLE + "," + SOLUTION + "\n")
    with pytest.raises(TrmError, match=r"bad\.csv: line 1: header has columns id,grid,solved; .*"
                                       r"source,question,answer,rating .*q,a.*puzzle,solution") as e:
        load_csv(bad)
    assert "\n" not in str(e.value)


def test_a_text_file_is_solved_and_ambiguous_or_unsolvable_lines_are_skipped():
    f = read_puzzle_file(FIXTURES / "sudoku-puzzles.txt")
    lines = (FIXTURES / "sudoku-puzzles.txt").read_text().split()
    kept = [lines[i] for i in (0, 1, 3, 5)]  # line 3 has two solutions, line 5 none
    assert (f.puzzles == np.stack([grid(t) for t in kept])).all() and f.ratings is None
    assert all(len(solve(p)[0]) == 1 and (solve(p)[0][0] == s).all() for p, s in zip(f.puzzles, f.solutions))
    assert [m.split(": ", 1)[1] for m in f.skipped] == ["line 3: several solutions", "line 5: no solution"]


@pytest.mark.parametrize("text, message", [
    (PUZZLE + "\n" + PUZZLE[:-1] + "\n", r"p\.txt: line 2: 80 characters, expected 81"),
    (PUZZLE + "\n\n" + "53x" + PUZZLE[3:] + "\n", r"p\.txt: line 3: bad character 'x' at position 3"),
])
def test_a_bad_puzzle_line_names_file_and_line(tmp_path, text, message):
    (tmp_path / "p.txt").write_text(text)
    with pytest.raises(TrmError, match=message):
        read_puzzle_file(tmp_path / "p.txt")


def test_a_csv_too_small_to_hold_out_a_test_puzzle_says_so(tmp_path):
    one = tmp_path / "one.csv"
    _write_csv(one, _generated_rows(1, seed=8))
    with pytest.raises(TrmError, match=r"one\.csv: only 1 puzzle, too few to hold one out for testing"):
        build_sudoku(SudokuDataConfig(source=str(one)), tmp_path / "data")
    folder = tmp_path / "pair"  # a train.csv whose test.csv has nothing at the wanted rating
    folder.mkdir()
    shutil.copy(FIXTURES / "sudoku-extreme" / "train.csv", folder / "train.csv")
    _write_csv(folder / "test.csv", [r[:3] + (0,) for r in _generated_rows(2, seed=9)])
    with pytest.raises(TrmError, match="no test puzzles left"):
        build_sudoku(SudokuDataConfig(source=str(folder / "train.csv"), min_rating=1), tmp_path / "data")


# -----------------------------------------------------------------------------
# trm eval <run> --puzzles on Sudoku files

@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory):
    from conftest import TINY, train_tiny_run
    return train_tiny_run(tmp_path_factory, "sudoku", TINY + ["train.steps=3"])


def cli(capsys, *argv):
    from trmlab.cli import main
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_eval_puzzles_on_the_runs_own_test_puzzles_gives_its_held_out_scores(capsys, sudoku_run):
    puzzles = [decode_tokens(t) for t in sudoku_run.test.inputs]
    solutions = [decode_tokens(t) for t in sudoku_run.test.labels]
    ratings = [i % 3 * 5 for i in range(len(puzzles))]  # 0, 5, 10: three rating bins
    csv_file = sudoku_run.tmp / "test.csv"
    _write_csv(csv_file, [("gen", "".join(map(str, p)).replace("0", "."), "".join(map(str, s)), r)
                          for p, s, r in zip(puzzles, solutions, ratings)])
    text_file = sudoku_run.tmp / "test.txt"
    text_file.write_text("".join("".join(map(str, p)) + "\n" for p in puzzles))
    held_out = sudoku_run.summary["eval"]
    blanks = np.array([(p == 0).sum() for p in puzzles])
    for path in (csv_file, text_file):
        rc, out, _ = cli(capsys, "eval", sudoku_run.run, "--puzzles", path, "--json")
        m = json.loads(out)
        assert rc == 0 and m["eval_samples"] == len(puzzles) and m["skipped"] == 0
        for key in ("exact_acc_per_step", "cell_acc_per_step", "blank_acc_per_step", "valid_solution_acc"):
            assert m[key] == held_out[key], (path.name, key)
        assert {k: v["puzzles"] for k, v in m["exact_acc_by_blanks"].items()} == \
            {f"{lo}-{lo + 9}": int(((blanks >= lo) & (blanks <= lo + 9)).sum()) for lo in (20,)}
        assert ("exact_acc_by_rating" in m) == (path == csv_file)  # a text file has no ratings
    assert {k: v["puzzles"] for k, v in json.loads(cli(capsys, "eval", sudoku_run.run, "--puzzles", csv_file,
                                                       "--json")[1])["exact_acc_by_rating"].items()} == \
        {"0": ratings.count(0), "1-9": ratings.count(5), "10-99": ratings.count(10)}
    rc, out, _ = cli(capsys, "eval", sudoku_run.run, "--puzzles", FIXTURES / "sudoku-puzzles.txt")
    assert rc == 0 and "(4 puzzles, 2 skipped)" in out and "exact accuracy by blanks" in out
    assert "skipped: " in out and "line 3: several solutions" in out and "line 5: no solution" in out


def test_the_breakdown_counts_each_puzzle_in_its_blank_and_rating_bin():
    from trmlab.tasks.sudoku import SudokuTask
    f = read_csv(FIXTURES / "sudoku-extreme" / "train.csv")
    split = SimpleNamespace(inputs=f.puzzles + 1, labels=f.solutions + 1)
    right = np.arange(len(f.puzzles)) % 2 == 0  # every other puzzle solved
    predictions = np.where(right[:, None], split.labels, split.inputs)
    out = SudokuTask._breakdown(SimpleNamespace(predictions=predictions), split, f.ratings)
    blanks = (f.puzzles == 0).sum(1)
    for label, row in out["exact_acc_by_blanks"].items():
        lo = int(label.split("-")[0])
        members = (blanks >= lo) & (blanks < lo + 10)
        assert row == {"puzzles": int(members.sum()), "exact_acc": round(float(right[members].mean()), 5)}
    assert sum(r["puzzles"] for r in out["exact_acc_by_rating"].values()) == len(f.puzzles)
    zero = f.ratings == 0
    assert out["exact_acc_by_rating"]["0"]["exact_acc"] == round(float(right[zero].mean()), 5)


def test_bad_puzzle_files_are_one_line_errors_exit_2(capsys, sudoku_run, tmp_path):
    header = tmp_path / "header.csv"
    header.write_text("id,grid\n1," + PUZZLE + "\n")
    short = tmp_path / "short.txt"
    short.write_text(PUZZLE + "\n" + PUZZLE + "\n" + PUZZLE[:80] + "\n")
    one = tmp_path / "one.csv"
    _write_csv(one, _generated_rows(1, seed=8))
    cases = [
        (["eval", sudoku_run.run, "--puzzles", header], r"header\.csv: line 1: header has columns id,grid; "),
        (["eval", sudoku_run.run, "--puzzles", short], r"short\.txt: line 3: 80 characters, expected 81"),
        (["eval", sudoku_run.run, "--puzzles", FIXTURES / "maze-hard.csv"],
         r"maze-hard\.csv: holds maze puzzles, but the run is a sudoku run"),
        (["eval", sudoku_run.run, "--puzzles", tmp_path / "missing.csv"], r"missing\.csv: no such puzzle file"),
        (["data", "build", "sudoku", f"data.source={one}", "--data-root", tmp_path / "data"],
         r"one\.csv: only 1 puzzle, too few to hold one out for testing"),
    ]
    import re
    for argv, message in cases:
        rc, _, err = cli(capsys, *argv)
        assert rc == 2 and err.count("\n") == 1 and re.search(message, err), (argv, err)
