"""What a run directory may hold, so that `--overwrite` deletes a trmlab run and nothing else, and a run is never
placed where it cannot be written (checked before any work is done)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from trmlab.errors import TrmError

# What a trmlab run writes into its directory (the trainer, the tasks' evaluations, the trackers, `trm study`):
# --overwrite deletes a directory only when it holds one of the markers and nothing else than these.
RUN_MARKERS = {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints", "error.json"}


RUN_ENTRIES = RUN_MARKERS | {
    "best",                                               # train.keep_best
    "tokenizer.json",                                     # LM: the run's own tokenizer
    "submission.json", "arc_scores.json", "pictures",     # ARC: the evaluation's files
    "halting.json",                                       # `trm eval --calibrate-halting`
    "tensorboard", "wandb",                               # train.logger
    "model", "trl",                                       # `trm latent rl`: the tuned LLM, TRL's output_dir
}


TEMPORARY = re.compile(r"\.?(?P<name>.+)\.tmp(-\d+)?")  # one being written: summary.json.tmp, .tokenizer.json.tmp-<pid>


CHECKPOINT_ENTRIES = re.compile(r"(\.tmp_|\.old_)?step_\d+")


def run_entry(name: str) -> bool:
    temporary = TEMPORARY.fullmatch(name)
    return name in RUN_ENTRIES or (temporary is not None and temporary["name"] in RUN_ENTRIES)


def foreign_entries(d: Path) -> list[str]:
    """What in ``d`` a trmlab run does not write (checkpoints/ and best/ looked into too)."""
    foreign = [p.name for p in d.iterdir() if not run_entry(p.name)]
    for ckpts in (d / "checkpoints", d / "best" / "checkpoints"):
        if ckpts.is_dir():
            foreign += [f"{ckpts.relative_to(d)}/{p.name}" for p in ckpts.iterdir()
                        if not CHECKPOINT_ENTRIES.fullmatch(p.name)]
    if (d / "best").is_dir():
        foreign += [f"best/{p.name}" for p in (d / "best").iterdir() if p.name != "checkpoints"]
    return sorted(foreign)


def check_is_run(d: Path):
    """--overwrite deletes a trmlab run and nothing else: not a runs directory (`--name .`), not any folder."""
    if d.is_symlink():
        raise TrmError(f"--overwrite: {d} is a symbolic link; it deletes only a run directory itself")
    foreign = foreign_entries(d)
    if foreign or not any((d / m).exists() for m in RUN_MARKERS):
        held = ", ".join(foreign[:3]) + (f" (+{len(foreign) - 3} more)" if len(foreign) > 3 else "")
        raise TrmError(f"--overwrite: {d} is not a trmlab run" + (f" (it holds {held})" if foreign else "")
                       + "; nothing deleted (choose another --name, or delete it yourself)")


def remove_run(d: Path):
    """--overwrite's delete: the run directory ``d``, checked (again, at the moment of deleting) to be a run."""
    check_is_run(d)
    shutil.rmtree(d)


def check_place(d: Path, what: str):
    """``d`` is, or can be created as, a directory we can write: a file named by --name / --runs-dir, or a
    read-only place, is a one-line error before any work."""
    if d.exists() and not d.is_dir():
        raise TrmError(f"{what} {d} is a file, not a directory")
    place = d
    while not place.exists() and place != place.parent:
        place = place.parent
    if not place.is_dir():
        raise TrmError(f"{what} {d}: {place} is a file, not a directory")
    if not os.access(place, os.W_OK | os.X_OK):
        raise TrmError(f"{what} {d}: {place} is not writable (read-only or not ours)")
