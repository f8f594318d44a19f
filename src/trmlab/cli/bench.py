"""`trm bench [preset ...] [key=value ...]`: measure the training step here (train/benchmark.py does the work)
and append the table to docs/benchmarks.md in a checkout; `--gpu-check` on a CUDA machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from trmlab.atomic import write_json
from trmlab.cli.common import data_root
from trmlab.config import list_presets, load_config
from trmlab.errors import TrmError
from trmlab.train.benchmark import Bench, run_case

DEFAULT_DOC = "docs/benchmarks.md"


def bench_arguments(p: argparse.ArgumentParser):
    p.add_argument("items", nargs="*", help="presets to measure (default: every preset) and key=value overrides "
                                            "applied to each")
    p.add_argument("--steps", type=int, default=5, help="timed steps per case (the median is reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    p.add_argument("--compile", action="store_true", help="also measure train.compile=true (eager vs compile)")
    p.add_argument("--bf16", action="store_true", help="also measure train.dtype=bfloat16 autocast")
    p.add_argument("--procs", type=int, nargs="*", default=[1, 2], help="process counts (default: 1 2)")
    p.add_argument("--T", type=int, nargs="*", default=[1, 2, 4], help="T_recursion values for the memory sweep "
                                                                       "(--T alone: skip it)")
    p.add_argument("--n", type=int, nargs="*", default=[1, 2, 4], help="n_loops values for the memory sweep")
    p.add_argument("--no-overhead", dest="overhead", action="store_false", help="skip the engine-overhead figure")
    data_root(p)
    p.add_argument("--doc", default=None, help="append the report to this file ('' = do not append; default: "
                                               "docs/benchmarks.md when the current directory has one, as a "
                                               "trmlab checkout does)")
    p.add_argument("--gpu-check", action="store_true", help="on a CUDA machine: CUDA tests, sudoku-paper steps in "
                   "fp32/bf16, eager/compiled, NCCL, FSDP2 and memory at batch 768, in one table (~5-8 min)")
    p.add_argument("--peers", action="store_true", help="time trmlab side by side with the official TRM code and "
                   "nanoGPT, alternating, in fresh processes (needs --trm-src and/or --nanogpt-src)")
    p.add_argument("--trm-src", default="", help="--peers: a checkout of SamsungSAILMontreal/TinyRecursiveModels")
    p.add_argument("--nanogpt-src", default="", help="--peers: a checkout of karpathy/nanoGPT")
    p.add_argument("--reps", type=int, default=3, help="--peers: rounds of alternation (medians are reported)")
    p.add_argument("--peer-case", help=argparse.SUPPRESS)  # internal: time one side of --peers in this process
    p.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process ...
    p.add_argument("--case-result", help=argparse.SUPPRESS)  # ... and write its result (JSON) to this file


def bench(args):
    if args.case:
        if not args.case_result:
            raise TrmError("--case runs one bench case for `trm bench`; it needs --case-result FILE")
        result = run_case(json.loads(args.case))
        if int(os.environ.get("RANK", 0)) == 0:
            write_json(args.case_result, result)
        return 0
    if args.peer_case:
        from trmlab.train.peers import run_peer_case
        print(json.dumps(run_peer_case(json.loads(args.peer_case))))
        return 0
    if args.peers:
        return peers(args)
    if args.gpu_check:
        from trmlab.train.gpu_check import run_gpu_check, table
        rows = run_gpu_check("cuda")
        print(table(rows))
        return 0 if all(r["ok"] for r in rows) else 1
    args.presets = [i for i in args.items if "=" not in i] or list_presets()
    args.overrides = [i for i in args.items if "=" in i]
    unknown = [p for p in args.presets if p not in list_presets() and not Path(p).exists()]
    if unknown:
        raise TrmError(f"unknown preset(s) {', '.join(unknown)}; presets: {', '.join(list_presets())}")
    if args.steps < 1 or args.warmup < 1:
        raise TrmError("--steps and --warmup must be >= 1")
    for flag, values in (("--procs", args.procs), ("--T", args.T), ("--n", args.n)):
        if any(v < 1 for v in values):
            raise TrmError(f"{flag} {' '.join(map(str, values))}: every value must be >= 1")
    for name in args.presets:  # a bad override fails here in one line, not as every case of the report skipped
        load_config(name, args.overrides)
    args.command = command_line(args)
    append_report(Bench(args).run(), args.doc)
    return 0


def command_line(args) -> str:
    return "trm bench " + " ".join(shlex.quote(x) for x in sys.argv[2:]) if sys.argv[1:2] == ["bench"] \
        else "trm bench " + " ".join(shlex.quote(x) for x in args.items)


def peers(args) -> int:
    from trmlab.train.benchmark import load_average, machine
    from trmlab.train.peers import compare
    for flag, src, marker in (("--trm-src", args.trm_src, "models/recursive_reasoning/trm.py"),
                              ("--nanogpt-src", args.nanogpt_src, "model.py")):
        if src and not (Path(src) / marker).is_file():
            raise TrmError(f"{flag} {src}: no {marker} there; point it at a checkout of the peer repository")
    if not (args.trm_src or args.nanogpt_src):
        raise TrmError("--peers needs --trm-src DIR and/or --nanogpt-src DIR (checkouts of the peer code)")
    if args.reps < 1 or args.steps < 1:
        raise TrmError("--reps and --steps must be >= 1")
    m, load0 = machine(), load_average()
    try:
        table = compare(args.trm_src, args.nanogpt_src, args.reps, args.steps,
                        echo=lambda line: print(line, file=sys.stderr, flush=True))
    except RuntimeError as e:
        raise TrmError(f"a peer case failed: {e}") from None
    text = "\n".join([f"## trm bench --peers, {m['date']}", "",
                      f"Machine: CPU {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), "
                      f"fp32, one process per case. Load average at start {load0}, at end {load_average()}. "
                      f"Median of {args.reps} alternating rounds of {args.steps} timed steps; ratio = peer ms / "
                      "trmlab ms (> 1: trmlab is faster).", "", f"Command: `{command_line(args)}`", "", table]) + "\n"
    append_report(text, args.doc)
    return 0


def append_report(text: str, doc: str | None):
    if doc is None:  # never create docs/ in a user's directory; append only to a benchmarks file that exists
        doc = DEFAULT_DOC if Path(DEFAULT_DOC).is_file() else ""
    print(text)
    if doc:
        path = Path(doc)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write("\n" + text)
        print(f"appended to {path}", file=sys.stderr)
