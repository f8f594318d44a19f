"""`trm`: the one command-line front door. Each verb is a module of this package, thin: parse, build a config,
call the library, print.

Every verb module defines ``<function>_arguments(parser)`` and ``<function>(args)``; ``COMMANDS`` maps the verb to
"module:function" (or to "module" alone for a module with ``add_arguments`` and ``run``, such as
``trmlab.cli.compress``, which ``python -m trmlab.compress`` also runs). Options several verbs share are declared
once in ``cli/common.py``. Bad input raises TrmError, printed here on one line with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import signal
import sys
from pathlib import Path

from trmlab.errors import Interrupted, TrmError

COMMANDS = {
    "demo": ("trmlab.cli.demo:demo", "train a small Sudoku TRM and its no-recursion twin on CPU, compare on held-out puzzles"),
    "data": ("trmlab.cli.data:data", "build a dataset: trm data build <task|preset> [key=value ...]"),
    "train": ("trmlab.cli.train:train", "train a preset: trm train <preset> [key=value ...]"),
    "eval": ("trmlab.cli.eval:evaluate", "evaluate a run or checkpoint on held-out data"),
    "solve": ("trmlab.cli.solve:solve", "solve one puzzle with a trained checkpoint"),
    "presets": ("trmlab.cli.presets:presets", "list the presets"),
    "info": ("trmlab.cli.presets:info", "build a preset's model and print its size and effective depth"),
    "generate": ("trmlab.cli.generate:generate", "sample text from a trained LM (recursive or GPT) with a KV cache"),
    "compare": ("trmlab.cli.compare:compare", "LM runs side by side: val loss, bits/byte vs bound, refinement, FLOPs"),
    "study": ("trmlab.cli.study:study", "scaling studies (seed 004): trm study {list,run,export,report}"),
    "bench": ("trmlab.cli.bench:bench", "step time, throughput, MFU, memory vs T_recursion: trm bench [preset ...]"),
    "compress": ("trmlab.cli.compress", "seed 001 phase 1: train the DimensionCompressor on LLM hidden states"),
    "latent": ("trmlab.cli.latent:latent", "seed 001 phases 2-3: trm latent {data,train,rl} (TRM on thoughts, GRPO)"),
}


# the positional list a verb collects key=value overrides in (train/eval: overrides, study: patterns, bench: items)
TRAILING = ("overrides", "patterns", "items")


def _load(spec: str):
    """(add_arguments, run) of a verb."""
    if ":" not in spec:
        mod = importlib.import_module(spec)
        return mod.add_arguments, mod.run
    module, func = spec.split(":")
    mod = importlib.import_module(module)
    return getattr(mod, f"{func}_arguments"), getattr(mod, func)


def _fail(e: Exception, optional: bool):
    if optional:
        raise TrmError(f"command unavailable: {e}")
    raise e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trm", description="Tiny Recursive Models: train, evaluate, study.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for name, (spec, help_text) in COMMANDS.items():
        try:
            add_arguments, run = _load(spec)
        except Exception as e:
            # A missing optional dependency (an ImportError of another package) leaves the verb unavailable; an
            # AttributeError or a broken import of trmlab's own code is a bug: running the verb raises it as it is.
            # Either way the other verbs stay usable.
            optional = isinstance(e, ImportError) and (e.name or "").split(".")[0] != "trmlab"
            p = sub.add_parser(name, help=f"({'unavailable' if optional else 'broken'}: {e})")
            p.set_defaults(func=lambda args, e=e, optional=optional: _fail(e, optional), unloaded=True)
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(func=run)
    return parser


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, letting key=value overrides come after options too (`trm train sudoku --name x model.n_loops=1`):
    argparse stops filling a positional list at the first option, so the stragglers are collected here."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what `trm train` relaunches in N processes
    if getattr(args, "unloaded", False):  # whatever its arguments, the verb could not be loaded: say so, not them
        return args
    # `--key=value` as in the seeds' scripts (`--matrix_lr=0.001`) is an override like `key=value`
    extra = [e[2:] if e.startswith("--") and "=" in e else e for e in extra]
    trailing = next((getattr(args, n) for n in TRAILING if isinstance(getattr(args, n, None), list)), None)
    if extra and trailing is not None and all("=" in e and not e.startswith("-") for e in extra):
        trailing += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


# options that name a directory a verb reads or writes (--runs-dir is checked where the run directory is made)
DIRECTORY_OPTIONS = ("data_root", "out")


def check_directories(args):
    """A directory option that names a file, or lies under one, is a one-line error before any work is done."""
    for name in DIRECTORY_OPTIONS:
        value = getattr(args, name, None)
        if name == "data_root" and value == "":  # Path("") is the current directory: datasets would land there
            raise TrmError("--data-root is empty; name a directory (default: data)")
        if not isinstance(value, str) or not value:
            continue
        path = Path(value)
        if name == "out" and value.lower().endswith(".png"):  # `trm solve --out x.png`: one picture, a file
            if path.is_dir():
                raise TrmError(f"--out {value} is a directory; name a new .png file, or the directory without .png")
            path = path.parent
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            where = "is a file" if existing == Path(value) else f"lies under {existing}, a file"
            raise TrmError(f"--{name.replace('_', '-')} {value} {where}; it must name a directory")
        # --out is always written, so a read-only one fails now rather than after the work (a data root may be
        # read-only: its built datasets are only read)
        if name == "out" and existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            raise TrmError(f"--out {value}: {existing} is read-only (or not ours to write in)")


MAX_THREADS = 1024  # libgomp aborts the process (no Python error) when asked for tens of thousands


def check_threads(args):
    """--threads (eval, generate, latent): torch would crash the process on a huge count, not raise."""
    threads = getattr(args, "threads", None)
    if not isinstance(threads, int) or isinstance(threads, bool):
        return
    if threads < 0:
        raise TrmError(f"--threads {threads}: must be >= 0 (0 = torch's default)")
    if threads > MAX_THREADS:
        raise TrmError(f"--threads {threads}: must be <= {MAX_THREADS}")


def os_error_line(e: OSError, command: str) -> str:
    """An OSError as one line naming the path (a full disk, a read-only directory, a file where a directory goes);
    a write that fails at close names no file, so the line says which command was writing."""
    paths = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    reason = e.strerror or str(e)
    return f"{paths}: {reason}" if paths else f"{reason} (while `trm {command}` was reading or writing files)"


def out_of_memory(e: BaseException) -> str:
    """What ran out, when ``e`` is numpy's or torch's out-of-memory error (a config too big for the machine), else ''.
    torch's CPU allocator raises a plain RuntimeError, so its message is the only sign."""
    text = str(e).strip()
    if isinstance(e, MemoryError):   # numpy: "Unable to allocate 37.3 GiB for an array with shape ..."
        return text.split(" for an array")[0] or "MemoryError"
    if type(e).__name__ == "OutOfMemoryError":   # torch.OutOfMemoryError (CUDA): its first line says how much
        return text.splitlines()[0] if text else "CUDA"
    tried = re.search(r"can't allocate memory: you tried to allocate (\d+) bytes", text)
    return f"tried to allocate {int(tried.group(1)) / 2**30:,.1f} GiB" if tried else ""


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        check_directories(args)
        check_threads(args)
        rc = args.func(args)
    except TrmError as e:
        if int(os.environ.get("RANK", 0)) == 0:  # data-parallel workers meet the same bad input: rank 0 says it
            print(f"trm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:   # the trainer saved a checkpoint first (Interrupted says which signal came)
        signum = e.signum if isinstance(e, Interrupted) else signal.SIGINT
        how = "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"
        print(f"trm: {how} (a run resumes from its last checkpoint with --resume)", file=sys.stderr)
        return 128 + signum
    except BrokenPipeError:  # `trm ... | head` closed the pipe: not an error of ours, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail again
        return 0
    except OSError as e:  # the last resort for a disk or permission failure no verb turned into a TrmError
        print(f"trm: error: {os_error_line(e, args.command)}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not out_of_memory(e):  # any other RuntimeError is a bug: its traceback is the report
            raise
        print(f"trm: error: out of memory ({out_of_memory(e)}); make the model, batch or dataset smaller",
              file=sys.stderr)
        return 2
    return int(rc or 0)

