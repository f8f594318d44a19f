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
