"""The options several `trm` verbs share, declared once here, and the checks of their values."""

from __future__ import annotations

from pathlib import Path

from trmlab.errors import TrmError


def data_root(p, help: str = "where datasets are built and cached (default: data)"):
    p.add_argument("--data-root", default="data", help=help)


def runs_dir(p, default: str = "runs", help: str = "where runs live (default: runs)"):
    p.add_argument("--runs-dir", default=default, help=help)


def threads(p, help: str = "torch CPU threads (0 = torch's default; 1 is faster on a busy machine)"):
    p.add_argument("--threads", type=int, default=0, help=help)


def quiet(p):
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")


def run_options(p, name_help: str = "run name (default: the preset's name); the run lives in <runs-dir>/<name>"):
    """The options every command that writes a run shares (`trm train`, `trm latent`)."""
    p.add_argument("--name", help=name_help)
    runs_dir(p)
    data_root(p)
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory first (a run only)")
    quiet(p)


FLAG_MINIMUM = {"n_sup": (1, "supervision steps at inference"), "max_samples": (0, "0 = every puzzle"),
                "threads": (0, "0 = torch's default")}


def check_flags(args, *names: str):
    """argparse takes any integer: a value below its flag's minimum is a one-line error, not a crash deep inside."""
    for name in names:
        value, (low, meaning) = getattr(args, name), FLAG_MINIMUM[name]
        if value is not None and value < low:
            raise TrmError(f"--{name.replace('_', '-')} {value}: must be >= {low} ({meaning})")


def run_of(checkpoint: str) -> Path:
    """The run a checkpoint argument belongs to: <run>/checkpoints/step_N -> <run> (<run>/best for the best one)."""
    p = Path(checkpoint)
    is_step_dir = (p / "model.safetensors").exists() and p.parent.name == "checkpoints"
    return p.parent.parent if is_step_dir else p
