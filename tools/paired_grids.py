#!/usr/bin/env python
"""Paired differences between compare grids that differ in one setting.

    python tools/paired_grids.py runs/store_views_0 runs/store_views_1 runs/store_views_all

The first workdir is the reference. Each run of another grid is paired
with the reference's run of the same method, student, labeled fraction and
seed (the same data order, views of the student and labeled subset), and
the table gives, per method, each grid's last-epoch test top-1 (mean ±
standard deviation over seeds) and its mean difference to the reference
with the 95 % Student-t interval of the per-seed differences (* where it
excludes 0), as compare's own summary.md does within one grid.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

KEY = ("method", "student", "labeled_fraction", "seed")


def read(workdir):
    path = os.path.join(workdir, "results.csv")
    if not os.path.exists(path):
        sys.exit(f"{path} does not exist: give the workdirs of finished "
                 "compare grids.")
    with open(path, newline="") as f:
        return {tuple(r[k] for k in KEY): r for r in csv.DictReader(f)}


def value(row, column):
    if row is None or row.get("status") != "finished":
        return None
    return float(row[column])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--column", default="test_top1_last")
    ap.add_argument("--names", default=None,
                    help="comma-separated column titles, one per workdir")
    args = ap.parse_args()
    if len(args.workdirs) < 2:
        sys.exit("Give the reference grid's workdir and at least one other.")
    from ega_tf.comparison.tables import _interval, _mean_std, _pm, _range
    grids = [read(w) for w in args.workdirs]
    names = (args.names.split(",") if args.names else
             [os.path.basename(os.path.normpath(w)) for w in args.workdirs])
    ref = grids[0]
    methods = list(dict.fromkeys(k[0] for k in ref))
    head = ["method", names[0]]
    for name in names[1:]:
        head += [name, f"Δ {name}"]
    print("| " + " | ".join(head) + " |")
    print("| --- |" + " ---: |" * (len(head) - 1))
    for method in methods:
        keys = [k for k in ref if k[0] == method]
        cells = [_pm(*_mean_std([value(ref[k], args.column) for k in keys]))]
        for grid in grids[1:]:
            ours = [value(grid.get(k), args.column) for k in keys]
            cells.append(_pm(*_mean_std(ours)))
            diffs = [None if a is None or b is None else b - a for a, b in
                     zip((value(ref[k], args.column) for k in keys), ours)]
            mean, half = _interval(diffs)
            cells.append("–" if mean is None else
                         f"{mean:+.2f} {_range(mean, half, signed=True)}")
        print(f"| {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
