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
    args.command = "trm bench " + " ".join(shlex.quote(x) for x in sys.argv[2:]) if sys.argv[1:2] == ["bench"] \
        else "trm bench " + " ".join(shlex.quote(x) for x in args.items)
    if args.doc is None:  # never create docs/ in a user's directory; append only to a benchmarks file that exists
        args.doc = DEFAULT_DOC if Path(DEFAULT_DOC).is_file() else ""
    text = Bench(args).run()
    print(text)
    if args.doc:
        doc = Path(args.doc)
        doc.parent.mkdir(parents=True, exist_ok=True)
        with open(doc, "a") as f:
            f.write("\n" + text)
        print(f"appended to {doc}", file=sys.stderr)
    return 0
