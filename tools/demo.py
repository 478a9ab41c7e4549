#!/usr/bin/env python
"""The offline demo behind `make demo` (about 8 minutes on 2 CPU cores).

1. Pretrains a SimCLR teacher on the digits training images, without labels
   (`python -m ega_tf.pretrain`), and reports its k-NN accuracy.
2. For each seed, trains the cross-entropy baseline and the EGA student with
   `python -m ega_tf.train --config=configs/digits.py` (10% of the training
   labels kept, everything else identical).
3. Prints one table and where the exported SavedModel is.

Everything goes to runs/demo/ (override with --out). Runs that already have a
results.json are reused, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sh(args, log):
    """Runs ``python args`` from the repo root, teeing output into ``log``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    with open(log, "w") as f:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                              stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f"demo step failed: python {' '.join(args)}\n"
                 f"see {log}:\n" + open(log).read()[-3000:])


def mean_std(values):
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "runs", "demo"))
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    ap.add_argument("--teacher_arch", default="resnet8")
    ap.add_argument("--teacher_epochs", type=int, default=30)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    start = time.time()

    teacher = os.path.join(args.out, "teacher.keras")
    summary_file = os.path.join(args.out, "teacher.json")
    if not os.path.exists(summary_file):
        print(f"[1/2] SimCLR pretraining of a {args.teacher_arch} teacher on "
              "digits (no labels)...", flush=True)
        log = os.path.join(args.out, "pretrain.log")
        sh(["-m", "ega_tf.pretrain", "--dataset=digits",
            f"--arch={args.teacher_arch}",
            f"--epochs={args.teacher_epochs}", f"--out={teacher}"], log)
        last = open(log).read().strip().splitlines()[-1]
        with open(summary_file, "w") as f:
            f.write(last)
    teacher_summary = json.load(open(summary_file))

    seeds = [int(s) for s in args.seeds.split(",")]
    results = {"none": [], "ega": []}
    for seed in seeds:
        for distill in ("none", "ega"):
            work = os.path.join(args.out, f"{distill}_s{seed}")
            res_file = os.path.join(work, "results.json")
            if not os.path.exists(res_file):
                print(f"[2/2] seed {seed}: training the "
                      f"{'EGA' if distill == 'ega' else 'baseline'} "
                      "student...", flush=True)
                sh(["-m", "ega_tf.train", "--config=configs/digits.py",
                    f"--teacher={teacher}", f"--distill={distill}",
                    f"--seed={seed}", f"--workdir={work}", "--verbose=2"],
                   os.path.join(args.out, f"{distill}_s{seed}.log"))
            results[distill].append(json.load(open(res_file)))

    first = results["ega"][0]
    print()
    print(f"EGA demo on digits ({len(seeds)} seed(s): {args.seeds}; "
          f"student {first['student']}, {first['epochs']} epochs, "
          f"{100 * first['labeled_fraction']:.0f}% of training labels)")
    print("| model | test top-1 best (%) | test top-1 last (%) |")
    print("| --- | ---: | ---: |")
    knn = 100 * teacher_summary["knn_top1"]
    rnd = 100 * teacher_summary.get("knn_top1_random_init", float("nan"))
    print(f"| SimCLR teacher {teacher_summary['arch']}, k-NN (k="
          f"{teacher_summary['knn_k']}, no labels in training) | "
          f"{knn:.2f} | (same backbone untrained: {rnd:.2f}) |")
    for distill, label in (("none", "student, cross-entropy only"),
                           ("ega", "student, EGA from the teacher")):
        best = [r["test_top1_best"] for r in results[distill]]
        last = [r["test_top1_last"] for r in results[distill]]
        print(f"| {label} | {mean_std(best)} | {mean_std(last)} |")
    print(f"\nExported EGA student (SavedModel): {first['saved_model']}")
    print(f"Try: python -m ega_tf.predict --model={first['saved_model']} "
          "IMAGE.png")
    print(f"Demo wall time: {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
