"""Maze data: generator guarantees, path checking, dihedral augmentation, CSV import, builder, text parsing."""

import csv
import json
import re

import numpy as np
import pytest

from trmlab.data import maze as M
from trmlab.data.puzzles import load_puzzle_dataset
from trmlab.errors import TrmError

# S -> G: the left route (12 steps) is the unique shortest; the right route (16 steps) is a longer valid path.
LOOP_MAZE = """\
#########
#S      #
# ##### #
#     # #
##### # #
#G      #
#########"""
SHORT_ROUTE = [(2, 1), (3, 1), (3, 2), (3, 3), (3, 4), (3, 5), (4, 5), (5, 5), (5, 4), (5, 3), (5, 2)]
LONG_ROUTE = [(1, c) for c in range(2, 8)] + [(r, 7) for r in range(2, 6)] + [(5, c) for c in range(2, 7)]


def loop_maze():
    # not square, so build it by rows (parse_maze_text insists on square input, the checker doesn't)
    return np.array([[M.CHAR_TO_TOKEN[ch] for ch in row] for row in LOOP_MAZE.splitlines()], dtype=np.int32)


def with_path(grid, cells):
    out = grid.copy()
    for r, c in cells:
        out[r, c] = M.PATH
    return out


def lines(rows):
    return "\n".join(rows)


# ---------------------------------------------------------------- generator

@pytest.mark.parametrize("size,min_len,loops", [(9, 8, 0.1), (11, 12, 0.1), (11, 12, 0.0), (30, 111, 0.1)])
def test_generated_mazes_have_unique_long_shortest_path(size, min_len, loops):
    rng = np.random.default_rng(123)
    for _ in range(3 if size == 30 else 20):
        inp, lab = M.generate_maze(size, rng, min_len, loop_fraction=loops)
        assert inp.shape == lab.shape == (size, size)
        assert M.shortest_path_length(inp) >= min_len
        assert M.count_shortest_paths(inp) == 1
        assert M.check_path(inp, lab) == dict(valid=True, connects=True, shortest=True, walls_ok=True)
        assert not (inp == M.PATH).any() and (lab == M.PATH).sum() == M.shortest_path_length(inp) - 1
        # the border is wall, so a model never sees a maze that leaks off the grid
        assert (inp[0] == M.WALL).all() and (inp[-1] == M.WALL).all()
        assert (inp[:, 0] == M.WALL).all() and (inp[:, -1] == M.WALL).all()


def test_loop_fraction_creates_loops():
    rng = np.random.default_rng(0)
    perfect = M._walls(21, rng, 0.0)
    loopy = M._walls(21, rng, 0.3)
    m = 10  # cells per side of the 21x21 lattice; a tree on m*m cells has m*m - 1 passages
    assert (perfect == M.OPEN).sum() == m * m + m * m - 1
    assert (loopy == M.OPEN).sum() > m * m + m * m - 1


def test_impossible_min_path_len_raises():
    with pytest.raises(TrmError, match="could not generate"):
        M.generate_maze(7, np.random.default_rng(0), 40, max_tries=5)


def test_shortest_path_counting():
    grid = loop_maze()
    assert M.shortest_path_length(grid) == 12
    assert M.count_shortest_paths(grid) == 1
    ring = M.text_to_grid("#####\n#S  #\n# # #\n#  G#\n#####")
    assert M.count_shortest_paths(ring) == 2  # round either side of the pillar
    walled = grid.copy()
    walled[3, 1] = walled[1, 2] = M.WALL
    assert M.shortest_path_length(walled) is None and M.count_shortest_paths(walled) == 0


# ---------------------------------------------------------------- check_path

def test_check_path_accepts_shortest_and_rejects_bad_paths():
    grid = loop_maze()
    assert M.check_path(grid, with_path(grid, SHORT_ROUTE))["valid"]

    longer = M.check_path(grid, with_path(grid, LONG_ROUTE))
    assert longer == dict(valid=False, connects=True, shortest=False, walls_ok=True)

    through_wall = M.check_path(grid, with_path(grid, [(2, 1), (3, 1), (4, 1)]))  # (4, 1) is a wall
    assert not through_wall["valid"] and not through_wall["walls_ok"]

    gap = M.check_path(grid, with_path(grid, SHORT_ROUTE[:5] + SHORT_ROUTE[6:]))
    assert not gap["valid"] and not gap["connects"] and gap["walls_ok"]

    stray = M.check_path(grid, with_path(grid, SHORT_ROUTE + [(1, 6)]))
    assert not stray["valid"] and not stray["connects"]

    branch = M.check_path(grid, with_path(grid, SHORT_ROUTE + [(1, 2)]))  # touches S: connected but too many cells
    assert branch["connects"] and not branch["shortest"] and not branch["valid"]

    moved_goal = with_path(grid, SHORT_ROUTE)
    moved_goal[5, 1] = M.PATH
    assert not M.check_path(grid, moved_goal)["walls_ok"]


def test_check_path_accepts_flat_token_sequences():
    rng = np.random.default_rng(5)
    inp, lab = M.generate_maze(11, rng, 12)
    assert M.check_path(M.maze_to_tokens(inp), M.maze_to_tokens(lab))["valid"]
    assert M.check_path(inp, inp)["connects"] is False  # no path predicted at all


# ---------------------------------------------------------------- dihedral augmentation

def test_dihedral_inverts_and_keeps_labels_valid():
    rng = np.random.default_rng(1)
    inp, lab = M.generate_maze(11, rng, 12)
    views = set()
    for k in range(8):
        a_in, a_lab = M.dihedral(inp, k), M.dihedral(lab, k)
        assert np.array_equal(M.inverse_dihedral(a_in, k), inp)
        assert np.array_equal(M.inverse_dihedral(a_lab, k), lab)
        assert M.check_path(a_in, a_lab)["valid"]
        flat = M.dihedral(M.maze_to_tokens(inp), k)
        assert flat.shape == (121,) and np.array_equal(flat, M.maze_to_tokens(a_in))
        views.add(a_in.tobytes())
    assert len(views) == 8  # a random maze has no symmetry, so all 8 symmetries are distinct
    with pytest.raises(TrmError):
        M.dihedral(inp, 8)


# ---------------------------------------------------------------- builder

SMALL = dict(size=9, min_path_len=8, n_train=24, n_test=12, num_aug=3, seed=7)


def test_builder_deterministic_disjoint_and_reused(tmp_path):
    cfg = M.MazeDataConfig(**SMALL)
    d1 = M.build_maze(cfg, tmp_path / "a")
    d2 = M.build_maze(cfg, tmp_path / "b")
    (s1, m1), (s2, m2) = load_puzzle_dataset(d1), load_puzzle_dataset(d2)
    assert m1["content_hash"] == m2["content_hash"]
    assert m1["task"] == "maze" and m1["vocab_size"] == 6 and m1["seq_len"] == 81 and m1["num_puzzle_ids"] == 1
    assert m1["pad_id"] == 0 and m1["ignore_label_id"] == 0 and m1["size"] == 9 and m1["config"]["seed"] == 7
    assert m1["mean_path_len"]["train"] >= 8 and m1["mean_path_len"]["test"] >= 8

    train, test = s1["train"], s1["test"]
    assert len(train) == 24 * 4 and len(test) == 12
    assert np.array_equal(np.bincount(train.group_ids), np.full(24, 4))
    assert (train.puzzle_ids == 0).all() and (test.puzzle_ids == 0).all()
    assert np.array_equal(test.group_ids, np.arange(12))
    for inp, lab in zip(train.inputs, train.labels):
        assert M.check_path(inp, lab)["valid"]
    # no test maze is any symmetry of a train maze
    train_keys = {M._canonical_key(M._as_grid(x)) for x in train.inputs}
    assert not train_keys & {M._canonical_key(M._as_grid(x)) for x in test.inputs}

    stamp = (d1 / "metadata.json").stat().st_mtime_ns
    assert M.build_maze(cfg, tmp_path / "a") == d1 and (d1 / "metadata.json").stat().st_mtime_ns == stamp
    other = M.build_maze(M.MazeDataConfig(**dict(SMALL, seed=8)), tmp_path / "a")
    assert other != d1 and load_puzzle_dataset(other)[1]["content_hash"] != m1["content_hash"]


def test_builder_rebuilds_corrupt_dataset(tmp_path):
    cfg = M.MazeDataConfig(**dict(SMALL, num_aug=0, n_train=5, n_test=2))
    d = M.build_maze(cfg, tmp_path)
    good = load_puzzle_dataset(d)[1]["content_hash"]
    np.save(d / "train_inputs.npy", np.zeros((5, 81), np.int32))
    assert load_puzzle_dataset(M.build_maze(cfg, tmp_path))[1]["content_hash"] == good


def test_too_many_mazes_for_tiny_size_raises(tmp_path):
    with pytest.raises(TrmError, match="distinct"):
        M.build_maze(M.MazeDataConfig(size=5, min_path_len=2, n_train=200, n_test=0), tmp_path)


@pytest.mark.parametrize("field,value", [("size", 3), ("min_path_len", 0), ("min_path_len", 500), ("n_train", 0),
                                         ("num_aug", 8), ("loop_fraction", 1.5), ("loop_fraction", "x"),
                                         ("n_test", -1)])
def test_config_validation_names_field(field, value):
    with pytest.raises(TrmError, match=f"data.{field}"):
        M.MazeDataConfig(**{field: value})


def test_even_size_is_clean():
    cfg = M.MazeDataConfig(size=30, min_path_len=111)
    assert cfg.size == 30
    inp, lab = M.generate_maze(12, np.random.default_rng(3), 10)
    assert inp.shape == (12, 12) and M.check_path(inp, lab)["valid"]


# ---------------------------------------------------------------- CSV (Maze-Hard layout)

def write_rows(path, rows):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source", "question", "answer", "rating"])
        w.writerows(rows)


def test_csv_round_trip_and_build_from_csv(tmp_path):
    rng = np.random.default_rng(2)
    mazes = [M.generate_maze(11, rng, 12) for _ in range(6)]
    inputs, labels = np.stack([m[0] for m in mazes]), np.stack([m[1] for m in mazes])
    M.write_csv(tmp_path / "train.csv", inputs[:4], labels[:4])
    M.write_csv(tmp_path / "test.csv", inputs[4:], labels[4:])
    with (tmp_path / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["source", "question", "answer", "rating"]
    assert len(rows[0]["question"]) == 121 and set(rows[0]["answer"]) <= set(M.CHARSET)
    got_in, got_lab = M.load_csv(tmp_path / "train.csv")
    assert np.array_equal(got_in, inputs[:4]) and np.array_equal(got_lab, labels[:4])

    cfg = M.MazeDataConfig(source=str(tmp_path), n_train=4, n_test=2, num_aug=7)
    splits, meta = load_puzzle_dataset(M.build_maze(cfg, tmp_path / "data"))
    assert meta["seq_len"] == 121 and meta["size"] == 11
    assert len(splits["train"]) == 32 and np.array_equal(splits["test"].inputs, inputs[4:].reshape(2, -1))
    # a single CSV is shuffled once and split by row
    M.write_csv(tmp_path / "all.csv", inputs, labels)
    one = load_puzzle_dataset(M.build_maze(M.MazeDataConfig(source=str(tmp_path / "all.csv"), n_train=4, n_test=2),
                                           tmp_path / "data"))[0]
    rows = {r.tobytes() for r in one["train"].inputs} | {r.tobytes() for r in one["test"].inputs}
    assert len(rows) == 6
    with pytest.raises(TrmError, match="only 4"):
        M.build_maze(M.MazeDataConfig(source=str(tmp_path / "train.csv"), n_train=5, n_test=2), tmp_path / "d")


def test_malformed_csv_names_file_and_line(tmp_path):
    rng = np.random.default_rng(4)
    inp, lab = M.generate_maze(9, rng, 8)
    q, a = (M.tokens_to_text(g).replace("\n", "") for g in (inp, lab))
    bad = tmp_path / "bad.csv"

    write_rows(bad, [["s", q, a, 1], ["s", q, a, 1], ["s", q.replace(" ", "x", 1), a, 1]])
    with pytest.raises(TrmError, match=r"bad\.csv, line 4: .*characters"):
        M.load_csv(bad)
    write_rows(bad, [["s", q[:-1], a[:-1], 1]])
    with pytest.raises(TrmError, match=r"bad\.csv, line 2: .*not a square"):
        M.load_csv(bad)
    write_rows(bad, [["s", q, a, 1], ["s", q, q, 1]])  # answer without a path
    with pytest.raises(TrmError, match=r"line 3: answer is not a valid shortest path"):
        M.load_csv(bad)
    gap = a.replace("o", " ", 1)
    write_rows(bad, [["s", q, gap, 1]])
    with pytest.raises(TrmError, match=r"line 2: .*connects"):
        M.load_csv(bad)
    bad.write_text("source,maze,path,rating\ns,x,y,1\n")  # a header without Maze-Hard's question/answer columns
    with pytest.raises(TrmError, match=r"bad\.csv: line 1: header has columns source,maze,path,rating, lacks "
                                       r"question,answer; a Maze-Hard CSV has source,question,answer,rating"):
        M.load_csv(bad)
    with pytest.raises(TrmError, match="no such CSV"):
        M.load_csv(tmp_path / "missing.csv")


def test_builder_skips_and_reports_bad_csv_rows(tmp_path, capsys):
    rng = np.random.default_rng(5)
    good = [M.generate_maze(9, rng, 8) for _ in range(6)]
    rows = [["s", *(M.tokens_to_text(g).replace("\n", "") for g in pair), 1] for pair in good]
    q = rows[0][1]
    walled = "".join(c if c in "SG" else "#" for c in q)  # S and G walled off: no path
    rows[2:2] = [["s", walled, walled, 0], ["s", q, q, 0]]
    src = tmp_path / "mazes.csv"
    write_rows(src, rows)
    with pytest.raises(TrmError, match=r"mazes\.csv, line 4: maze has no path from S to G"):
        M.load_csv(src)
    skipped = []
    inputs, _ = M.load_csv(src, skipped)
    assert len(inputs) == 6 and len(skipped) == 2 and "line 5: answer is not a valid shortest path" in skipped[1]
    path = M.build_maze(M.MazeDataConfig(source=str(src), n_train=4, n_test=2), tmp_path / "d")
    meta = json.loads((path / "metadata.json").read_text())
    assert len(meta["skipped_rows"]) == 2 and "skipping maze" in capsys.readouterr().out
    write_rows(src, rows[2:4])
    with pytest.raises(TrmError, match=r"CSV has no mazes \(all 2 rows bad; first: .*no path"):
        M.load_csv(src, [])


def test_load_hf_offline_gives_advice(monkeypatch):
    import huggingface_hub

    def offline(**kwargs):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    advice = r"cannot download sapientinc/maze-30x30-hard-1k/train\.csv.*data\.source=path\.csv"
    with pytest.raises(TrmError, match=advice):
        M.load_hf("sapientinc/maze-30x30-hard-1k", "train")


# ---------------------------------------------------------------- text input for `trm solve`, pictures

GOOD = ["#######",
        "#S    #",
        "# ### #",
        "#   # #",
        "### # #",
        "#    G#",
        "#######"]


def test_parse_maze_text_round_trip_and_clears_path():
    grid = M.parse_maze_text("\n" + lines(GOOD) + "\n\n")
    assert M.tokens_to_text(grid) == lines(GOOD)
    solved = lines(GOOD).replace("#S    #", "#Soooo#")
    assert np.array_equal(M.parse_maze_text(solved), grid)


@pytest.mark.parametrize("rows,pattern", [
    (GOOD[:3] + ["#   #"] + GOOD[4:], r"line 4 has 5 characters"),
    (GOOD[:2] + ["# #x# #"] + GOOD[3:], r"line 3, column 4: bad character 'x'"),
    ([r.replace("S", " ") for r in GOOD], r"no S"),
    (GOOD[:3] + ["#G  # #"] + GOOD[4:], r"2 G"),
    (GOOD[:2] + ["#######"] + GOOD[3:], r"maze has no path from S to G"),
    (GOOD[:6], r"square"),
])
def test_parse_maze_text_errors(rows, pattern):
    with pytest.raises(TrmError, match=pattern):
        M.parse_maze_text(lines(rows))


def test_render_maze_writes_png(tmp_path):
    inp, lab = M.generate_maze(11, np.random.default_rng(9), 12)
    out = M.render_maze(inp, lab, tmp_path / "pics" / "maze.png", title="demo")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- local sources: cache key, paths, encodings

def write_maze_folder(folder, seed, n, size=7):
    """folder/train.csv and folder/test.csv, each with the same ``n`` generated mazes."""
    rng = np.random.default_rng(seed)
    mazes = [M.generate_maze(size, rng, 4) for _ in range(n)]
    inputs, labels = np.stack([m[0] for m in mazes]), np.stack([m[1] for m in mazes])
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        M.write_csv(folder / f"{split}.csv", inputs, labels)
    return inputs


def test_same_relative_folder_in_two_directories_gives_two_datasets(tmp_path, monkeypatch):
    data = tmp_path / "data"
    built = {}
    for name, seed in (("a", 1), ("b", 2)):
        inputs = write_maze_folder(tmp_path / name / "mh", seed, n=6)
        monkeypatch.chdir(tmp_path / name)
        cfg = M.MazeDataConfig(source="mh", n_train=6, n_test=2)
        assert cfg.source == str(tmp_path / name / "mh")  # stored absolute: the run's config works from anywhere
        path = M.build_maze(cfg, data)
        assert np.array_equal(load_puzzle_dataset(path)[0]["train"].inputs, inputs.reshape(6, -1))
        built[name] = path
    assert built["a"] != built["b"]


def test_csv_edited_in_place_is_rebuilt_and_unchanged_one_reused(tmp_path, capsys):
    src = tmp_path / "mh"
    write_maze_folder(src, seed=1, n=6)
    cfg = M.MazeDataConfig(source=str(src), n_train=6, n_test=2)
    first = M.build_maze(cfg, tmp_path / "data")
    hash_before = load_puzzle_dataset(first)[1]["content_hash"]
    assert M.build_maze(cfg, tmp_path / "data") == first and "rebuilding" not in capsys.readouterr().out
    inputs = write_maze_folder(src, seed=2, n=7)  # a different file in place (7 rows: another size too)
    again = M.build_maze(cfg, tmp_path / "data")
    assert "changed since" in capsys.readouterr().out
    splits, meta = load_puzzle_dataset(again)
    assert meta["content_hash"] != hash_before
    assert {r.tobytes() for r in splits["train"].inputs} <= {r.reshape(-1).tobytes() for r in inputs}


def test_named_and_hf_sources_keep_their_old_cache_key():
    import hashlib
    from dataclasses import asdict
    from trmlab.data.puzzles import params_slug
    for source in ("generate", M.HF_DATASET):
        params = asdict(M.MazeDataConfig(source=source))
        old = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]
        assert params_slug("maze", params) == f"maze-{old}"


def test_tilde_source_is_expanded_and_missing_folder_is_not_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_maze_folder(tmp_path / "mh", seed=3, n=4)
    cfg = M.MazeDataConfig(source="~/mh", n_train=4, n_test=1)
    assert cfg.source == str(tmp_path / "mh")
    assert len(load_puzzle_dataset(M.build_maze(cfg, tmp_path / "data"))[0]["train"]) == 4
    missing = M.MazeDataConfig(source="~/nope", n_train=4, n_test=1)  # a config naming a gone folder still loads
    with pytest.raises(TrmError, match=re.escape(f"no such file or folder: {tmp_path / 'nope'}")):
        M.build_maze(missing, tmp_path / "data")


def test_non_utf8_csv_is_a_one_line_error_naming_the_file(tmp_path):
    src = tmp_path / "mh"
    write_maze_folder(src, seed=4, n=3)
    with (src / "train.csv").open("ab") as f:
        f.write(b"s,\xe9\xe9,x,1\n")
    with pytest.raises(TrmError, match=r"mh/train\.csv: not UTF-8") as err:
        M.build_maze(M.MazeDataConfig(source=str(src), n_train=2, n_test=1), tmp_path / "data")
    assert "\n" not in str(err.value)


def test_too_few_mazes_names_the_csv(tmp_path):
    src = tmp_path / "mh"
    write_maze_folder(src, seed=5, n=3)
    with pytest.raises(TrmError, match=r"mh/train\.csv: data\.n_train=5 but the train CSV has only 3"):
        M.build_maze(M.MazeDataConfig(source=str(src), n_train=5, n_test=1), tmp_path / "data")
