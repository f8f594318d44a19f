"""`trm solve <run> <puzzle>`: one puzzle (a Sudoku string, a maze, an ARC task file) through a trained model."""

from __future__ import annotations

from trmlab.cli.common import check_flags, data_root, run_of
from trmlab.errors import TrmError


def solve_arguments(p):
    p.add_argument("checkpoint", help="run directory or checkpoint directory")
    p.add_argument("puzzle", help="Sudoku: 81 characters ('.' or 0 = blank); Maze: a text file or grid; "
                                  "ARC: a task JSON file, or a directory of them (bad tasks are skipped and listed)")
    p.add_argument("--n-sup", type=int, help="supervision steps, >= 1 (default: the config's n_sup_inference)")
    p.add_argument("--out", default="", help="where to write pictures (ARC, Maze)")
    data_root(p, help="where the run's dataset was built (ARC: finds a task's "
                                                        "trained views and puzzle ids, by file name or content)")
    from trmlab.cli.test_time import add_arguments as test_time_arguments
    test_time_arguments(p, solve=True)


def solve(args):
    from trmlab.api import load
    from trmlab.cli.test_time import halt_rule_from_args, options_from_args
    from trmlab.tasks import get_task
    check_flags(args, "n_sup")
    options = options_from_args(args)
    model, cfg = load(args.checkpoint)
    task = get_task(cfg.task)
    if args.n_sup:
        cfg.model.n_sup_inference = args.n_sup
    test_time = None
    if task.test_time:  # Sudoku, Maze: the run's halting rule (halting.json) and the test-time options
        test_time = (halt_rule_from_args(args, model, cfg, None, run_of(args.checkpoint)), options)
    elif not options.is_plain:
        raise TrmError(f"--samples / --views: test-time compute is for sudoku and maze runs, not {cfg.task}")
    result = task.solve(model, cfg, args.puzzle, n_sup=cfg.model.n_sup_inference, out=args.out,
                        data_root=args.data_root, test_time=test_time)
    print("\n".join(result.lines))
    return 0 if result.solved else 1
