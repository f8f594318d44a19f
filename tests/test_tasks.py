"""The task contract (tasks/base.py): every registered task provides the required members; hooks have defaults."""

import pytest

from trmlab.errors import TrmError
from trmlab.tasks import TASKS, get_task
from trmlab.tasks.base import Task

REQUIRED = ("build_data", "load", "build_model", "sampler", "batch", "losses", "evaluate")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_fills_the_contract(name):
    task = get_task(name)
    assert isinstance(task, Task) and task.name == name and task.data_config is not None
    missing = [m for m in REQUIRED if getattr(type(task), m) is getattr(Task, m)]
    assert not missing, f"{name} lacks {missing}"
    assert isinstance(task.metric, str) and isinstance(task.lower_is_better, bool)


def test_the_puzzle_tasks_solve_and_read_puzzle_files_the_others_say_they_do_not():
    for name in ("sudoku", "maze", "arc"):
        task = type(get_task(name))
        assert task.solve is not Task.solve and task.read_puzzle_file is not Task.read_puzzle_file
    lm = get_task("lm")
    with pytest.raises(TrmError, match="trm solve is not defined for task 'lm'"):
        lm.solve(None, None, "text", n_sup=1)
    with pytest.raises(TrmError, match="reads no puzzle files"):
        lm.read_puzzle_file(None, "x.csv")
    with pytest.raises(TrmError, match="train.epochs is not defined for task 'latent'"):
        get_task("latent").epoch_examples(None)


def test_only_sudoku_and_maze_take_test_time_compute_and_only_arc_writes_files():
    assert {n for n in TASKS if get_task(n).test_time} == {"sudoku", "maze"}
    assert {n for n in TASKS if get_task(n).writes_files} == {"arc"}
    assert {n for n in TASKS if get_task(n).lower_is_better} == {"lm", "compressor"}


def test_trm_solve_prints_the_tasks_result_and_exits_by_its_verdict(monkeypatch, capsys, tmp_path, tiny_overrides):
    from trmlab.cli import main
    from trmlab.config import load_config
    from trmlab.tasks.base import SolveResult
    from trmlab.tasks.sudoku import SudokuTask
    from trmlab.train.trainer import train
    train(load_config("sudoku", [*tiny_overrides, "train.steps=1"]), tmp_path / "run", data_root=tmp_path / "data",
          quiet=True)
    puzzle = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
    for solved, rc in ((True, 0), (False, 1)):
        monkeypatch.setattr(SudokuTask, "solve", lambda self, *a, solved=solved, **k: SolveResult(["grid", "ok?"], solved))
        assert main(["solve", str(tmp_path / "run"), puzzle]) == rc
        assert capsys.readouterr().out.splitlines()[-2:] == ["grid", "ok?"]


def test_shapes_are_filled_where_open_and_checked_where_set():
    from trmlab.config import load_config
    from trmlab.tasks.base import fill_shapes
    cfg = load_config("sudoku")
    cfg.model.vocab_size, cfg.model.seq_len = 0, 81
    fill_shapes(cfg, {"vocab_size": 11, "seq_len": 81}, "the data", exact=("seq_len",))
    assert (cfg.model.vocab_size, cfg.model.seq_len) == (11, 81)
    cfg.model.vocab_size = 8
    with pytest.raises(TrmError, match="model.vocab_size=8 does not fit the data"):
        fill_shapes(cfg, {"vocab_size": 11}, "the data")
    cfg.model.seq_len = 100
    fill_shapes(cfg, {"seq_len": 81}, "the data")  # larger is fine unless exact
    with pytest.raises(TrmError, match="seq_len=100 does not fit"):
        fill_shapes(cfg, {"seq_len": 81}, "the data", exact=("seq_len",))
