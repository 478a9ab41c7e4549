#!/usr/bin/env python
"""The offline demo behind `make demo` (about 3 minutes on 2 CPU cores).

1. Pretrains a SimCLR teacher on the digits training images, without labels
   (`python -m ega_tf.pretrain`), and reports its k-NN accuracy.
2. For each seed, trains the cross-entropy baseline and the EGA student with
   `python -m ega_tf.train --config=configs/digits.py` (10% of the training
   labels kept, everything else identical).
3. Prints one table and where the exported SavedModel is.

The commands run side by side, one per core, each with one TensorFlow
thread (these small networks gain little from a second thread, and two
runs use two cores fully): the baselines, which need no teacher, train
while the teacher is pretrained, then the EGA students. Each command's
output goes to its own log in the output directory. oneDNN's kernels are
turned on (``TF_ENABLE_ONEDNN_OPTS=1``) unless the environment says
otherwise.

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


class Commands:
    """``python ARGS`` commands run from the repository root, at most
    ``slots`` at a time, each with ``threads`` TensorFlow threads and its
    output in its log; a failed one ends the demo, showing its log."""

    def __init__(self, slots, threads):
        self.slots, self.running = slots, []
        # oneDNN's kernels even where TensorFlow leaves them off by
        # default (a CPU without AVX-512 VNNI, AVX-VNNI or AMX): with
        # oneDNN capped at AVX2 the demo took 242 s with them, 369 s with
        # TensorFlow's own (docs/speed.md). A value the user set wins.
        self.env = {"TF_ENABLE_ONEDNN_OPTS": "1", **os.environ,
                    "TF_CPP_MIN_LOG_LEVEL": "2",
                    "TF_NUM_INTRAOP_THREADS": str(threads),
                    "TF_NUM_INTEROP_THREADS": str(threads),
                    "OMP_NUM_THREADS": str(threads)}

    def start(self, args, log, message):
        while len(self.running) >= self.slots:
            self._reap(block=True)
        print(message, flush=True)
        f = open(log, "w")
        proc = subprocess.Popen([sys.executable, *args], cwd=ROOT,
                                env=self.env, stdout=f,
                                stderr=subprocess.STDOUT)
        self.running.append((proc, f, args, log))
        return proc

    def wait(self, proc=None):
        """Until ``proc`` (default: every command) has ended."""
        while any(proc in (None, p) for p, *_ in self.running):
            self._reap(block=True)

    def _reap(self, block):
        """Collects one ended command (waiting for one if ``block``)."""
        while True:
            for entry in list(self.running):
                proc, f, args, log = entry
                if proc.poll() is None:
                    continue
                f.close()
                self.running.remove(entry)
                if proc.returncode:
                    for other, *_ in self.running:
                        other.kill()
                    sys.exit(f"demo step failed: python {' '.join(args)}\n"
                             f"see {log}:\n" + read(log)[-3000:])
                return
            if not block:
                return
            time.sleep(0.2)


def read(path):
    with open(path) as f:
        return f.read()


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

    cores = os.cpu_count() or 1
    commands = Commands(slots=cores, threads=1)
    teacher = os.path.join(args.out, "teacher.keras")
    summary_file = os.path.join(args.out, "teacher.json")
    pretrain_log = os.path.join(args.out, "pretrain.log")
    pretraining = None
    if not os.path.exists(summary_file):
        pretraining = commands.start(
            ["-m", "ega_tf.pretrain", "--dataset=digits",
             f"--arch={args.teacher_arch}", f"--epochs={args.teacher_epochs}",
             f"--out={teacher}"], pretrain_log,
            f"SimCLR pretraining of a {args.teacher_arch} teacher on digits "
            "(no labels)...")

    seeds = [int(s) for s in args.seeds.split(",")]

    def train(distill, seed):
        work = os.path.join(args.out, f"{distill}_s{seed}")
        if os.path.exists(os.path.join(work, "results.json")):
            return
        commands.start(
            ["-m", "ega_tf.train", "--config=configs/digits.py",
             f"--teacher={teacher}", f"--distill={distill}",
             f"--seed={seed}", f"--workdir={work}", "--verbose=2"],
            os.path.join(args.out, f"{distill}_s{seed}.log"),
            f"seed {seed}: training the "
            f"{'EGA' if distill == 'ega' else 'baseline'} student...")

    for seed in seeds:  # no teacher needed: beside the pretraining
        train("none", seed)
    if pretraining is not None:
        commands.wait(pretraining)
        last = read(pretrain_log).strip().splitlines()[-1]
        with open(summary_file, "w") as f:
            f.write(last)
    teacher_summary = json.loads(read(summary_file))
    for seed in seeds:
        train("ega", seed)
    commands.wait()
    results = {d: [json.loads(read(os.path.join(
        args.out, f"{d}_s{seed}", "results.json"))) for seed in seeds]
        for d in ("none", "ega")}

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
