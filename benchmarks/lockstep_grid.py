#!/usr/bin/env python
"""What a comparison grid saves by training its cells in lockstep (one
batch and one frozen-teacher forward per step for every method of a seed)
against training them one after another.

Two kinds of measurement, each configuration in a fresh process, memory
as that process's peak resident set:

``--setting=digits`` runs the real thing: ``python -m ega_tf.compare`` on
digits with the last K methods of the 15-method grid, one seed, with
``--share_teacher=true`` and ``=false``, and reports the whole grid's wall
time (process start to exit)::

    python benchmarks/lockstep_grid.py --setting=digits --teacher=teacher.keras

``--setting=resnet32x4`` (a random resnet32x4 teacher at 32 px, the CIFAR
pair's) and ``--setting=clip_rn50`` (the CLIP RN50 image tower at 224 px,
random weights: the paper's teacher) time the training step on synthetic
batches, built from the training loop's own functions: a group step is one
fetch (batch + teacher forward) and K cells' steps; K separate cells pay
the fetch K times. Students resnet8x4, batch 64::

    python benchmarks/lockstep_grid.py --setting=resnet32x4
    python benchmarks/lockstep_grid.py --setting=clip_rn50 --steps=3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# docs/results.md's grid, in its order; K takes the last K (ega alone, EGA and
# its ablations, ..., all 15 with cross-entropy alone first).
METHODS = ("none", "kd", "hint", "rkd", "pkt", "sp", "nce", "ccl", "crd",
           "dkd", "seed", "compress", "ega_node", "ega_edge", "ega")


def last_k(k):
    return METHODS[len(METHODS) - k:]


def flags():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="resnet32x4",
                    choices=("digits", "resnet32x4", "clip_rn50"))
    ap.add_argument("--k", default="3,8,15",
                    help="comma-separated numbers of methods")
    ap.add_argument("--teacher", default=None,
                    help="digits: the teacher .keras file (python -m "
                    "ega_tf.pretrain --dataset=digits --out=teacher.keras)")
    ap.add_argument("--epochs", type=int, default=2, help="digits grids")
    ap.add_argument("--steps", type=int, default=5,
                    help="timed steps (step settings)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap.parse_args()


def run_child(cmd):
    """(wall seconds, peak resident MiB, stdout) of a child process."""
    begin = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    out, err = proc.communicate()
    seconds = time.perf_counter() - begin
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return seconds, out


def run_measured(cmd):
    """(wall seconds, peak resident MiB) of a child process, its memory
    read from the kernel's accounting of it (``wait4``)."""
    begin = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=ROOT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - begin
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-3000:].decode()}")
    return seconds, round(usage.ru_maxrss / 1024)


def digits(args, ks):
    if not args.teacher:
        sys.exit("--setting=digits needs --teacher=FILE.keras (make one with "
                 "python -m ega_tf.pretrain --dataset=digits "
                 "--out=teacher.keras).")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for k in ks:
            for share in ("true", "false"):
                rows[k, share] = run_measured([
                    sys.executable, "-m", "ega_tf.compare",
                    "--config=configs/digits.py",
                    f"--teacher={os.path.abspath(args.teacher)}",
                    f"--methods={','.join(last_k(k))}", "--seeds=0",
                    f"--epochs={args.epochs}", "--config.export=false",
                    "--pictures=false", f"--share_teacher={share}",
                    f"--workdir={tmp}/k{k}_{share}"])
    print(f"digits grid: last K of the 15 methods, seed 0, {args.epochs} "
          f"epochs, teacher {args.teacher}; wall time of python -m "
          "ega_tf.compare, its peak resident memory")
    print("| K | lockstep group | one cell after another | ratio | "
          "memory (group / one by one) |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for k in ks:
        (a, ma), (b, mb) = rows[k, "true"], rows[k, "false"]
        print(f"| {k} | {a:.0f} s | {b:.0f} s | {a / b:.2f} | "
              f"{ma} / {mb} MiB |")


def steps_child(args):
    """Median step times of one group of K and of one cell, synthetic
    batches, in this process."""
    import resource

    import numpy as np

    from ega_tf.core import runtime
    tf = runtime.import_tensorflow()
    import keras

    from benchmarks.train_step import tf_teacher
    from ega_tf import methods, students
    from ega_tf.nn.optimizers import TorchSGD
    from ega_tf.students.head import build_student
    from ega_tf.training import cell
    from ega_tf.training.distiller import Distiller
    k = int(args.child)
    size = 32
    teacher_args = argparse.Namespace(
        teacher=args.setting, image_size=size, teacher_fold_bn="true")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, size, size, 3), np.uint8)
    labels = rng.integers(0, 100, 64)
    labels[rng.random(64) >= 0.1] = -1
    teacher = tf_teacher(teacher_args, images)
    strategy = tf.distribute.get_strategy()
    cells, taught = [], []
    for name in last_k(k):
        keras.utils.set_random_seed(0)
        student = build_student(students.create(
            "resnet8x4", input_shape=(size, size, 3)), 100, 256)
        method = methods.create(name, None, num_examples=64 * 100,
                                embed_dim=256, seed=0, steps_per_epoch=100,
                                epochs=240, labels=np.maximum(
                                    np.resize(labels, 6400), 0))
        uses = method.uses_teacher or method.w.get("alpha")
        model = Distiller(student, teacher if uses else None, 100, 256,
                          method=method)
        model.compile(TorchSGD(0.05), teacher_head_optimizer=(
            TorchSGD(0.01) if uses else None))
        cells.append(cell.cell_step_function(model, strategy,
                                             model.train_step, False))
        taught.append(bool(uses))
    batch = ({"student": images, "teacher": images,
              "index": np.arange(64)}, labels)
    iterator = iter(strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensors(batch).repeat()))
    # A group runs the teacher if one of its cells reads it; a cell alone
    # if it reads it.
    fetch = cell.fetch_function(strategy, teacher, False)
    plain = cell.fetch_function(strategy, None, False)

    def group():
        b = (fetch if any(taught) else plain)(iterator)
        for step in cells:
            float(step(b)["loss"])

    def separate():
        for step, uses in zip(cells, taught):
            float(step((fetch if uses else plain)(iterator))["loss"])

    # Alternating, so that a drift of the machine's speed falls on both.
    group()
    separate()
    times = {"group": [], "separate": []}
    for _ in range(args.steps):
        for name, fn in (("group", group), ("separate", separate)):
            begin = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - begin)
    out = {name: statistics.median(t) for name, t in times.items()}
    begin = time.perf_counter()
    for _ in range(args.steps):
        tf.nest.map_structure(lambda t: t.numpy(), fetch(iterator))
    out["fetch"] = (time.perf_counter() - begin) / args.steps
    out["peak_rss_mib"] = round(resource.getrusage(
        resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(out))


def steps(args, ks):
    rows = {}
    for k in ks:
        cmd = [sys.executable, os.path.abspath(__file__),
               f"--setting={args.setting}", f"--child={k}",
               f"--steps={args.steps}"]
        _, out = run_child(cmd)
        rows[k] = json.loads(out.strip().splitlines()[-1])
    size = 224 if args.setting == "clip_rn50" else 32
    print(f"{args.setting} teacher ({size} px) -> resnet8x4 students, batch "
          f"64, last K of the 15 methods; median of {args.steps} steps "
          "(each K in a fresh process)")
    print("| K | teacher forward (+ batch) | group step | K separate cells' "
          "steps | ratio | peak memory |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for k, r in rows.items():
        print(f"| {k} | {1000 * r['fetch']:.0f} ms | "
              f"{1000 * r['group']:.0f} ms | {1000 * r['separate']:.0f} ms | "
              f"{r['group'] / r['separate']:.2f} | {r['peak_rss_mib']} MiB |")


def main():
    args = flags()
    ks = [int(k) for k in args.k.split(",")]
    if args.child is not None:
        return steps_child(args)
    (digits if args.setting == "digits" else steps)(args, ks)


if __name__ == "__main__":
    main()
