#!/usr/bin/env python
"""Stored teacher views (``--config.teacher_views``) against the teacher's
fresh view every step, side by side in one process.

    python benchmarks/teacher_store.py                       # both teachers
    python benchmarks/teacher_store.py --teachers=clip_rn50 --images=256
    python benchmarks/teacher_store.py --json                # one JSON line each

For each teacher, on ``--images`` synthetic 32-px images (100 classes) and
a resnet8x4 student with EGA at batch 64, it reports

* the store's build time (M = ``--views`` views of each image);
* the median epoch time of a cross-entropy-only student (no teacher), of
  EGA reading the store, and of EGA with the teacher's forward on a fresh
  view every step (the published recipe);
* the whole time of ``--epochs`` epochs: the store's build plus those
  epochs, against as many epochs with fresh views.

The teachers have random weights and their features are standardised on a
batch (as benchmarks/train_step.py does): ``clip_rn50`` is OpenAI CLIP's
RN50 image tower at 224 px, ``dinov2_vits14`` DINOv2's ViT-S/14 at 224 px
(keras-hub's backbone), each resizing the 32-px view inside its graph as a
converted teacher does. The epochs are the training loop's own two
functions (``training.cell``: the fetch, with the teacher's forward, then
the step) over the training loop's input stream; the per-epoch evaluation
is left out of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NUM_CLASSES, EMBED, SIZE = 100, 256, 32
TEACHERS = ("clip_rn50", "dinov2_vits14")


def flags():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teachers", default=",".join(TEACHERS))
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--images", type=int, default=128)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--views", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--ce_epochs", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def make_teacher(name, images):
    """A frozen random teacher of that shape, its features standardised
    on ``images``, BatchNorm folded as training does."""
    import numpy as np

    from ega_tf import teachers
    from ega_tf.core.constants import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN,
                                       IMAGENET_STD)
    from ega_tf.teachers import fold
    if name == "clip_rn50":
        from ega_tf.teachers import clip_resnet
        backbone = clip_resnet.build({"blocks": [3, 4, 6, 3], "width": 64,
                                      "output_dim": 1024, "heads": 32,
                                      "resolution": 224})
        pre = teachers.TeacherPreprocess(CLIP_MEAN, CLIP_STD, input_size=224,
                                         interpolation="pil_bicubic")
    elif name == "dinov2_vits14":
        from ega_tf.teachers import dinov2
        backbone = dinov2.build({"resolution": 224, "patch": 14, "depth": 12,
                                 "width": 384, "heads": 6, "mlp_dim": 1536,
                                 "registers": 0, "swiglu": False,
                                 "feature": "cls"})
        pre = teachers.TeacherPreprocess(IMAGENET_MEAN, IMAGENET_STD,
                                         input_size=224,
                                         interpolation="pil_bicubic")
    else:
        sys.exit(f"Unknown teacher {name!r}; choose from "
                 f"{', '.join(TEACHERS)}.")
    raw = teachers.assemble(backbone, pre)
    feats = np.asarray(raw(images[:64], training=False))
    teacher = teachers.assemble(backbone, pre, standardize=(
        teachers.FeatureStandardize(feats.mean(0), feats.std(0) + 1e-3)))
    return fold.fold_batchnorm(teacher)[0]


def make_model(args, teacher):
    import keras

    from ega_tf import students
    from ega_tf.nn.optimizers import TorchSGD
    from ega_tf.students.head import build_student
    from ega_tf.training.distiller import Distiller
    keras.utils.set_random_seed(0)
    student = build_student(students.create(args.student, input_shape=(
        SIZE, SIZE, 3)), NUM_CLASSES, EMBED)
    model = Distiller(student, teacher, NUM_CLASSES, EMBED,
                      method="ega" if teacher is not None else "none")
    model.compile(TorchSGD(0.05), teacher_head_optimizer=(
        TorchSGD(0.01) if teacher is not None else None))
    return model


def epochs(model, stream, count):
    """Seconds of each of ``count`` epochs (the first traces the step)."""
    import tensorflow as tf

    from ega_tf.training import cell
    strategy = tf.distribute.get_strategy()
    fetch = cell.fetch_function(strategy, model.teacher, False)
    step = cell.cell_step_function(model, strategy, model.train_step, False)
    out = []
    for epoch in range(count):
        begin = time.perf_counter()
        iterator = iter(stream.distributed(strategy, epoch))
        for _ in range(stream.steps_per_epoch):
            logs = step(fetch(iterator))
        float(logs["loss"])
        out.append(time.perf_counter() - begin)
    return out


def bench(args, name, split, store_dir):
    from ega_tf.data import pipeline
    from ega_tf.training import teacher_store
    teacher = make_teacher(name, split.images)
    stream = dict(seed=0, padding=4)
    # The cross-entropy-only student: the floor a distilled epoch can reach.
    ce = epochs(make_model(args, None), pipeline.TrainStream(
        split, args.batch_size, **stream), args.ce_epochs)
    meta = teacher_store.describe(
        f"random {name}", teacher_store.images_sha256(split),
        split.image_size, 4, args.views, "float32")
    begin = time.perf_counter()
    store = teacher_store.open_or_build(store_dir, meta, teacher, split,
                                        verbose=0)
    build = time.perf_counter() - begin
    stored = epochs(make_model(args, teacher), pipeline.TrainStream(
        split, args.batch_size, store=store, **stream), args.epochs)
    fresh = epochs(make_model(args, teacher), pipeline.TrainStream(
        split, args.batch_size, **stream), args.epochs)

    def median(times):  # after the first, tracing, epoch
        return statistics.median(times[1:] or times)
    return {"teacher": name, "images": len(split), "views": args.views,
            "steps_per_epoch": len(split) // args.batch_size,
            "build_s": build, "store_mib": store.nbytes / 2**20,
            "ce_epoch_s": median(ce), "stored_epoch_s": median(stored),
            "fresh_epoch_s": median(fresh),
            "stored_run_s": build + sum(stored), "fresh_run_s": sum(fresh),
            "epochs": args.epochs}


def report(rows, args):
    print(f"Stored teacher views: student {args.student}, EGA, batch "
          f"{args.batch_size}, {args.images} images of {SIZE} px, M = "
          f"{args.views}, {os.cpu_count()} CPU cores; epoch times are "
          "medians after the first epoch")
    print("| teacher | store build (s) | store (MiB) | epoch: CE only (s) | "
          "epoch: stored (s) | epoch: fresh (s) | stored / CE | "
          f"{args.epochs} epochs: stored incl. build (s) | {args.epochs} "
          "epochs: fresh (s) | fresh / stored |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | "
          "---: |")
    for r in rows:
        print(f"| {r['teacher']} | {r['build_s']:.1f} | {r['store_mib']:.1f}"
              f" | {r['ce_epoch_s']:.2f} | {r['stored_epoch_s']:.2f} | "
              f"{r['fresh_epoch_s']:.2f} | "
              f"{r['stored_epoch_s'] / r['ce_epoch_s']:.2f}x | "
              f"{r['stored_run_s']:.0f} | {r['fresh_run_s']:.0f} | "
              f"{r['fresh_run_s'] / r['stored_run_s']:.2f}x |")


def main():
    args = flags()
    import numpy as np

    from ega_tf import data
    rng = np.random.default_rng(0)
    split = data.Split(
        rng.integers(0, 256, (args.images, SIZE, SIZE, 3), np.uint8),
        rng.integers(0, NUM_CLASSES, args.images))
    store_dir = tempfile.mkdtemp(prefix="ega_tf_store_bench_")
    rows = []
    try:
        for name in args.teachers.split(","):
            rows.append(bench(args, name, split, store_dir))
            if args.json:
                print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(store_dir, ignore_errors=True)
    if not args.json:
        report(rows, args)


if __name__ == "__main__":
    main()
