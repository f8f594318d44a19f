"""Task plug-ins: each task says how to build its data, its model, its batches, its loss and its evaluation.

The trainer, the config system and the CLI only talk to this interface, so a new task is a new entry in
``TASKS`` (a lazy "module:Class" string, so importing the registry stays cheap), never a new training loop.
"""

from __future__ import annotations

import importlib

from trmlab.errors import TrmError

TASKS = {
    "sudoku": "trmlab.tasks.sudoku:SudokuTask",
    "maze": "trmlab.tasks.maze:MazeTask",
    "arc": "trmlab.tasks.arc:ArcTask",
    "lm": "trmlab.tasks.lm:LMTask",
    "latent": "trmlab.tasks.latent:LatentTask",
    "compressor": "trmlab.tasks.compressor:CompressorTask",
}

_cache: dict = {}


def get_task(name: str):
    """The task object registered under ``name`` (instantiated once)."""
    if name not in TASKS:
        raise TrmError(f"unknown task '{name}'; tasks: {', '.join(TASKS)}")
    if name not in _cache:
        module, cls = TASKS[name].split(":")
        try:
            _cache[name] = getattr(importlib.import_module(module), cls)()
        except (ImportError, AttributeError) as e:
            raise TrmError(f"task '{name}' is not available ({e})") from None
    return _cache[name]
