"""Scaling studies (seed 004): specs as data, a runner over `trm train`, the results table, fits, plots, reports.

    specs.py    the 12 studies / 67 experiments, the baseline, --scale tiny, study YAML files
    runner.py   one process per experiment, --jobs N or Slurm via submitit, skip / resume / record failures
    results.py  every run directory -> one table (CSV, parquet), FLOP estimates
    fits.py     acc = a - b * x^(-c) with uncertainties, R^2 and a verdict
    plots.py    accuracy vs size / data / depth / compute / time, Pareto frontiers, curves, ACT halting
    report.py   Markdown and self-contained HTML
"""
