"""`trm data build <task|preset> [key=value ...]`: build (or reuse) a dataset and say where it is."""

from __future__ import annotations

import json
from pathlib import Path

from trmlab.cli.common import data_root
from trmlab.config import from_dict, list_presets, load_config, parse_overrides


def _preset_or_task(name: str, overrides: list[str]):
    """A preset by that name, else the task's defaults (``trm data build maze`` works without a preset)."""
    from trmlab.tasks import TASKS
    if name in TASKS and name not in list_presets():
        return from_dict(parse_overrides(overrides, {"task": name, "name": name}))
    return load_config(name, overrides)


def data_arguments(p):
    p.add_argument("action", choices=["build"], help="build (or reuse) a dataset")
    p.add_argument("preset", help="a task (sudoku, maze, arc, lm) or a preset whose data section to build")
    p.add_argument("overrides", nargs="*", help="key=value, e.g. n_train=5000 (data.n_train=5000)")
    data_root(p)


def data(args):
    cfg = _preset_or_task(args.preset, args.overrides)
    from trmlab.tasks import get_task
    path = get_task(cfg.task).build_data(cfg.data, args.data_root)
    meta_file = Path(path) / "metadata.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    sizes = ", ".join(f"{k} {v:,}" for k, v in meta.get("splits", {}).items())
    print(f"{path}  ({sizes})" if sizes else str(path))
    skipped = meta.get("skipped_tasks") or meta.get("skipped_rows") or []
    if skipped:  # a bad ARC task or maze row was left out, not fatal: say how many and where the list is
        print(f"skipped {len(skipped)} bad {'task' if 'skipped_tasks' in meta else 'row'}"
              f"{'' if len(skipped) == 1 else 's'} (listed in {meta_file})")
