"""`trm compare <run> <run> ...`: recursive LMs beside the plain GPT baseline (studies/compare.py does the work).
"""

from __future__ import annotations

import json

from trmlab.studies.compare import load_run, plot, rows, table, verdicts


def compare_arguments(p):
    p.add_argument("runs", nargs="+", help="finished LM run directories (recursive and plain GPT)")
    p.add_argument("--plot", default="", help="write val loss vs tokens and vs FLOPs to this image")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def compare(args):
    runs = [load_run(p) for p in args.runs]
    if args.json:
        print(json.dumps(rows(runs), indent=2))
    else:
        print(table(runs))
        print()
        print("\n".join(verdicts(runs)))
    if args.plot:
        plot(runs, args.plot)
        print(f"plot: {args.plot}")
