"""The Maze task on the engine: shapes, path-validity metrics, end-to-end training, `trm solve`, bad input."""

from types import SimpleNamespace

import numpy as np
import pytest

from trmlab.api import build_model
from trmlab.cli import main
from trmlab.config import load_config
from trmlab.data.maze import OPEN, PATH, MazeDataConfig, build_maze, tokens_to_text, write_csv
from trmlab.data.puzzles import load_puzzle_dataset
from trmlab.tasks import get_task
from trmlab.tasks.puzzle import PuzzleData
from trmlab.train.trainer import train

TINY = ["model.n_embd=32", "model.n_head=2", "model.n_layer=1", "model.n_loops=2", "model.T_recursion=2",
        "model.n_sup_train=2", "model.n_sup_inference=2", "train.batch_size=8", "train.warmup_steps=2",
        "data.size=7", "data.min_path_len=4", "data.n_train=32", "data.n_test=8", "train.log_interval=1"]


def run(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def mazes(tmp_path_factory):
    root = tmp_path_factory.mktemp("maze-data")
    path = build_maze(MazeDataConfig(size=7, min_path_len=4, n_train=32, n_test=8), out_root=root)
    return load_puzzle_dataset(path)[0]


def fake_eval(predictions):
    """What extra_metrics reads of a PuzzleEval: the final predictions (and q logits)."""
    return SimpleNamespace(predictions=predictions, q_logits=np.zeros(len(predictions)))


def test_shapes_follow_the_data_config(tmp_path):
    task = get_task("maze")
    assert task.shapes(load_config("maze", ["data.size=13"])) == {"vocab_size": 6, "seq_len": 169,
                                                                 "num_puzzle_ids": 1}
    assert task.shapes(load_config("maze-paper"))["seq_len"] == 900  # the HF name says 30x30; nothing downloaded
    cfg = load_config("maze", ["data.size=7", "data.min_path_len=4", "data.n_train=8", "data.n_test=2"])
    splits, _ = load_puzzle_dataset(build_maze(cfg.data, out_root=tmp_path))
    csv = write_csv(tmp_path / "mazes.csv", splits["train"].inputs.reshape(-1, 7, 7),
                    splits["train"].labels.reshape(-1, 7, 7))
    assert task.shapes(load_config("maze", [f"data.source={csv}"]))["seq_len"] == 49  # read from the CSV


def test_path_metrics_tell_valid_broken_and_detoured_paths_apart(mazes):
    test = mazes["test"]
    task = get_task("maze")
    data = PuzzleData(None, mazes, {})
    assert task.extra_metrics(fake_eval(test.labels.copy()), data, None, "test") == \
        {"path_valid": 1.0, "path_shortest": 1.0, "path_connects": 1.0}
    assert task.extra_metrics(fake_eval(test.inputs.copy()), data, None, "test")["path_valid"] == 0.0  # no path
    broken = test.labels.copy()
    for row in broken:  # cut every path in the middle
        cells = np.flatnonzero(row == PATH)
        row[cells[len(cells) // 2]] = OPEN
    m = task.extra_metrics(fake_eval(broken), data, None, "test")
    assert m["path_valid"] == 0.0 and m["path_connects"] == 0.0
    half = test.labels.copy()
    half[::2] = test.inputs[::2]
    assert task.extra_metrics(fake_eval(half), data, None, "test")["path_valid"] == 0.5


def test_maze_preset_trains_and_evaluates_with_path_metrics(tmp_path):
    cfg = load_config("maze", TINY + ["train.steps=3"])
    summary = train(cfg, tmp_path / "run", data_root=tmp_path / "data", quiet=True)
    e = summary["eval"]
    assert summary["steps"] == 3 and e["eval_samples"] == 8
    for key in ("exact_acc", "path_valid", "path_shortest", "path_connects"):
        assert 0.0 <= e[key] <= 1.0
    assert e["path_valid"] <= e["path_shortest"]  # valid = shortest and walls untouched


def test_solve_prints_the_path_and_writes_a_png(capsys, tmp_path, mazes):
    rc, _, _ = run(capsys, "train", "maze", *TINY, "train.steps=2", "--runs-dir", str(tmp_path / "runs"),
                   "--data-root", str(tmp_path / "data"), "--name", "m", "--quiet")
    assert rc == 0
    maze = tmp_path / "maze.txt"
    maze.write_text(tokens_to_text(mazes["test"].inputs[0]) + "\n")
    rc, out, _ = run(capsys, "solve", str(tmp_path / "runs" / "m"), str(maze), "--out", str(tmp_path / "pic.png"))
    # an untrained model may be wrong: its verdict and exit code agree (tests/test_solve.py checks answers)
    assert rc == (0 if "valid: yes" in out else 1) and "supervision steps used" in out
    assert (tmp_path / "pic.png").stat().st_size > 0
    assert len(out.splitlines()[0]) == 7  # the predicted grid comes first, one row per line

    flat = tokens_to_text(mazes["test"].inputs[1]).replace("\n", "")  # the CSV's one-line form works too
    rc, out, _ = run(capsys, "solve", str(tmp_path / "runs" / "m"), flat)
    assert rc == (0 if "valid: yes" in out else 1)

    walled = tmp_path / "walled.txt"
    walled.write_text("#######\n#S# G #\n# #   #\n#######\n#     #\n#     #\n#######\n")
    rc, _, err = run(capsys, "solve", str(tmp_path / "runs" / "m"), str(walled))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert str(walled) in err and "maze" in err and "no path" in err

    rc, _, err = run(capsys, "solve", str(tmp_path / "runs" / "m"), str(tmp_path / "typo.txt"))
    assert rc == 2 and "typo.txt: maze task: no such maze file" in err

    big = tmp_path / "big.txt"
    big.write_text("\n".join(["#########"] + ["#S      #"] + ["#       #"] * 5 + ["#      G#", "#########"]))
    rc, _, err = run(capsys, "solve", str(tmp_path / "runs" / "m"), str(big))
    assert rc == 2 and "7x7" in err


def test_paper_preset_has_the_paper_size_and_runs_a_few_steps(capsys, tmp_path):
    model = build_model(load_config("maze-paper"))
    n = sum(p.numel() for n_, p in model.named_parameters() if "puzzle_emb" not in n_)
    assert 6.7e6 < n < 6.9e6  # the paper's "7M": 2 blocks of 3.41M + embeddings and heads
    rc, out, _ = run(capsys, "train", "maze-paper", "data.source=generate", "data.size=13", "data.min_path_len=10",
                     "data.n_train=4", "data.n_test=2", "train.batch_size=2", "train.steps=1", "N_sup=1",
                     "model.n_loops=1", "model.T_recursion=1", "--runs-dir", str(tmp_path),
                     "--data-root", str(tmp_path / "data"), "--quiet")
    assert rc == 0 and "path_valid" in out


def test_shapes_skip_bad_csv_rows_as_the_build_does(tmp_path, mazes):
    from trmlab.data.maze import write_csv
    folder = tmp_path / "mh"
    folder.mkdir()
    grids = mazes["train"].inputs.reshape(-1, 7, 7)[:4], mazes["train"].labels.reshape(-1, 7, 7)[:4]
    for split in ("train", "test"):
        write_csv(folder / f"{split}.csv", *grids)
    with (folder / "train.csv").open("a") as f:
        f.write("s,###,###,1\n")  # not a square maze: the build skips it
    cfg = load_config("maze-paper", [f"data.source={folder}"])
    assert get_task("maze").shapes(cfg)["seq_len"] == 49  # from the good rows, not 900 from the preset


def test_non_utf8_maze_file_is_a_one_line_error(tmp_path):
    from trmlab.errors import TrmError
    from trmlab.tasks.maze import read_maze
    maze = tmp_path / "latin.txt"
    maze.write_bytes(b"#####\n#S\xe9G#\n#####\n")
    with pytest.raises(TrmError, match=r"latin\.txt: maze task: not UTF-8") as err:
        read_maze(str(maze))
    assert "\n" not in str(err.value)
