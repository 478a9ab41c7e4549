#!/usr/bin/env python
"""The CIFAR-100 tables of the logit-distillation papers, in RepDistiller's
protocol (``configs/repdistiller_cifar100.py``: resnet32x4 -> resnet8x4,
its converted supervised teacher, 240 epochs), for none, kd, crd, dkd,
dist and mlkd, and kd, dkd and mlkd with logit standardization, over five
seeds, beside the published top-1::

    python tools/reproduce_cifar100.py \\
        --teacher=resnet32x4_vanilla/ckpt_epoch_240.pth --workdir=runs/repro

Two ``python -m ega_tf.compare`` grids (the second with
``--config.loss.logit_standardization=true``) train the cells; rerunning the
command resumes them. Then one table (printed and written to
``<workdir>/table.md``) gives, per method: its runs (with how many
diverged, which the means leave out, or collapsed), and the mean ± std
over the seeds of the last epoch's test top-1 (what RepDistiller
reports), of the test top-1 at the epoch chosen on the held-out
validation split (10 % of each class's training images, compare's
default; ``--config.data.val_fraction=0`` trains on all 50,000 as
published, and drops this column) and of the best epoch's test top-1
(chosen on the test set, as mdistiller and the LS-KD README report it;
for comparison with them only). Extra flags go to both grids
(``--config.epochs=2``, ``--dataset=...``, ``--data_dir=...``).

The full table needs a GPU and CIFAR-100 (about 9 x 5 runs of 240 epochs).
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "repdistiller_cifar100.py")
METHODS = ("none", "kd", "crd", "dkd", "dist", "mlkd")
STANDARDIZED = ("kd", "dkd", "mlkd")
# Top-1 % for resnet32x4 -> resnet8x4 as each README reports it.
PUBLISHED = {
    "none": ("72.50", "RepDistiller, student alone, last epoch"),
    "kd": ("73.33", "RepDistiller, last epoch"),
    "crd": ("75.51", "RepDistiller, last epoch"),
    "dkd": ("76.32", "mdistiller, best epoch"),
    "dist": ("76.31 ± 0.19", "DIST_KD"),
    "mlkd": ("77.08", "LS-KD README, best epoch"),
    "kd + LS": ("76.62", "LS-KD README, best epoch"),
    "dkd + LS": ("77.01", "LS-KD README, best epoch"),
    "mlkd + LS": ("78.28", "LS-KD README, best epoch"),
}
COLUMNS = (("test_top1_last", "last"),
           ("test_top1_at_best_val", "at best validation"),
           ("test_top1_best", "best epoch (test)"))


def flags():
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Any other flag is passed to both compare grids.")
    ap.add_argument("--teacher", required=True,
                    help="RepDistiller's resnet32x4 checkpoint or its "
                    "converted .keras file")
    ap.add_argument("--workdir", default="runs/repro_cifar100")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    return ap.parse_known_args()


def run_grid(args, extra, name, methods, more=()):
    cmd = [sys.executable, "-m", "ega_tf.compare", f"--config={CONFIG}",
           f"--teacher={args.teacher}", f"--methods={','.join(methods)}",
           f"--seeds={args.seeds}", "--pictures=false",
           f"--workdir={os.path.join(args.workdir, name)}", *more, *extra]
    print("$ " + " ".join(cmd), flush=True)
    if subprocess.call(cmd, cwd=ROOT):
        sys.exit(f"the {name} grid failed; rerun to resume it.")


def summarise(path, suffix=""):
    """{label: {column: "mean ± std (n)"}} of a grid's results.csv."""
    rows = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["method"] + suffix, []).append(row)
    out = {}
    for label, runs in rows.items():
        diverged = sum(r["status"] == "diverged" for r in runs)
        collapsed = sum(r["collapsed"] == "True" for r in runs)
        cells = {"runs": str(len(runs)) + "".join(
            f", {n} {what}" for n, what in ((diverged, "diverged"),
                                            (collapsed, "collapsed")) if n)}
        for column, _ in COLUMNS:
            values = [float(r[column]) for r in runs
                      if r["status"] != "diverged"
                      and r.get(column) not in (None, "")]
            if not values:
                cells[column] = "–"
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            cells[column] = f"{statistics.mean(values):.2f} ± {std:.2f}" \
                + (f" ({len(values)})" if len(values) != 5 else "")
        out[label] = cells
    return out


def table(summary):
    head = "| method | runs | " + " | ".join(t for _, t in COLUMNS) + \
        " | published | where |"
    lines = [head, "|" + " --- |" * (len(COLUMNS) + 4)]
    for label, (number, where) in PUBLISHED.items():
        cells = summary.get(label, {})
        lines.append(f"| {label} | {cells.get('runs', '0')} | " + " | ".join(
            cells.get(c, "–") for c, _ in COLUMNS)
            + f" | {number} | {where} |")
    return "\n".join(lines)


def main():
    args, extra = flags()
    run_grid(args, extra, "published", METHODS)
    run_grid(args, extra, "standardized", STANDARDIZED,
             ["--config.loss.logit_standardization=true"])
    summary = {**summarise(os.path.join(args.workdir, "published",
                                        "results.csv")),
               **summarise(os.path.join(args.workdir, "standardized",
                                        "results.csv"), " + LS")}
    text = table(summary)
    with open(os.path.join(args.workdir, "table.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
