"""`trm`: the one command-line front door. Each verb is a thin function over the library.

Every verb lives in a module that defines ``<function>_arguments(parser)`` and ``<function>(args)``; ``COMMANDS``
maps the verb to "module:function" (or to "module" alone for a module with ``add_arguments`` and ``run``, such as
``trmlab.compress``, which is also runnable as ``python -m``). Bad input raises TrmError, printed here on one line
with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from trmlab.errors import TrmError

COMMANDS = {
    "demo": ("trmlab.demo:demo", "train a small Sudoku TRM and its no-recursion twin on CPU, compare on held-out puzzles"),
    "data": ("trmlab.commands:data", "build a dataset: trm data build <task|preset> [key=value ...]"),
    "train": ("trmlab.commands:train", "train a preset: trm train <preset> [key=value ...]"),
    "eval": ("trmlab.commands:evaluate", "evaluate a run or checkpoint on held-out data"),
    "solve": ("trmlab.commands:solve", "solve one puzzle with a trained checkpoint"),
    "presets": ("trmlab.commands:presets", "list the presets"),
    "info": ("trmlab.commands:info", "build a preset's model and print its size and effective depth"),
    "generate": ("trmlab.generate:generate", "sample text from a trained LM (recursive or GPT) with a KV cache"),
    "compare": ("trmlab.compare:compare", "LM runs side by side: val loss, bits/byte vs bound, refinement, FLOPs"),
    "study": ("trmlab.study_cli:study", "scaling studies (seed 004): trm study {list,run,export,report}"),
    "bench": ("trmlab.bench:bench", "step time, throughput, MFU, memory vs T_recursion: trm bench [preset ...]"),
    "compress": ("trmlab.compress", "seed 001 phase 1: train the DimensionCompressor on LLM hidden states"),
    "latent": ("trmlab.latent_cli:latent", "seed 001 phases 2-3: trm latent {data,train,rl} (TRM on thoughts, GRPO)"),
}


# the positional list a verb collects key=value overrides in (train/eval: overrides, study: patterns, bench: items)
TRAILING = ("overrides", "patterns", "items")


def _load(spec: str):
    if ":" not in spec:
        mod = importlib.import_module(spec)
        return mod.add_arguments, mod.run
    module, func = spec.split(":")
    mod = importlib.import_module(module)
    return getattr(mod, f"{func}_arguments"), getattr(mod, func)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trm", description="Tiny Recursive Models: train, evaluate, study.")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    for name, (spec, help_text) in COMMANDS.items():
        try:
            add_arguments, run = _load(spec)
        except (ImportError, AttributeError) as e:  # an optional part is missing: keep the rest usable
            p = sub.add_parser(name, help=f"(unavailable: {e})")
            p.set_defaults(func=lambda args, e=e: (_ for _ in ()).throw(TrmError(f"command unavailable: {e}")))
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
    # `--key=value` as in the seeds' scripts (`--matrix_lr=0.001`) is an override like `key=value`
    extra = [e[2:] if e.startswith("--") and "=" in e else e for e in extra]
    trailing = next((getattr(args, n) for n in TRAILING if isinstance(getattr(args, n, None), list)), None)
    if extra and trailing is not None and all("=" in e and not e.startswith("-") for e in extra):
        trailing += extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        rc = args.func(args)
    except TrmError as e:
        print(f"trm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trm: interrupted (a run resumes from its last checkpoint with --resume)", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `trm ... | head` closed the pipe: not an error of ours, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush does not fail again
        return 0
    return int(rc or 0)


if __name__ == "__main__":
    sys.exit(main())
