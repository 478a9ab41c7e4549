#!/usr/bin/env python
"""Is the input pipeline fast enough not to limit training on this machine?

For each dataset's policy (resolution, RandomCrop padding, two independent
views) it prints, in images per second:

- ``cached``: the training stream once decoded images are cached (every
  epoch after the first for CIFAR-100, STL-10, Tiny ImageNet; always for
  in-memory sets): shuffle -> two crop/flip views -> batch.
- ``decode``: the first epoch, streaming and decoding JPEG files, through
  the real readers: the Tiny ImageNet TFDS builder (on a generated
  tiny-imagenet-200.zip in the published layout) and ``folder:`` (PNG/JPEG
  files of varied sizes, resized and centre-cropped).
- ``train``: the resnet8x4 training step (cross-entropy only: the cheapest
  consumer; an EGA step also runs a teacher and is slower) on a constant
  batch, at the same resolution.

and the ratio pipeline / train: above 1, the pipeline is not the limit. The
pipeline and the step are timed separately; in a real run they share the
CPU, so the ratio says how much of the CPU the pipeline needs (1/ratio).

    python benchmarks/input_pipeline.py            # a few minutes on 2 cores
    python benchmarks/input_pipeline.py --quick
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from ega_tf import data  # noqa: E402
from ega_tf.data import pipeline  # noqa: E402

POLICIES = [("cifar100", 32), ("tiny_imagenet", 64), ("stl10", 96)]
BATCH = 64


def images_per_second(ds, images, batch=BATCH):
    """Iterates ``ds`` (batches) until ``images`` images; skips warm-up."""
    it = iter(ds.repeat())
    for _ in range(3):
        next(it)
    n, start = 0, time.perf_counter()
    while n < images:
        next(it)
        n += batch
    return n / (time.perf_counter() - start)


def train_images_per_second(size, steps):
    import keras

    from ega_tf import students
    from ega_tf.nn.optimizers import TorchSGD
    from ega_tf.students.head import build_student
    from ega_tf.training.distiller import Distiller
    keras.utils.set_random_seed(0)
    student = build_student(students.create("resnet8x4", 100,
                                            (size, size, 3)), 100, 256)
    model = Distiller(student, None, 100, 256)
    model.compile(optimizer=TorchSGD(0.05, 0.9, 5e-4), jit_compile=True)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (BATCH, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, 100, BATCH)
    ds = tf.data.Dataset.from_tensors(({"student": x, "teacher": x}, y))
    model.fit(ds.repeat(3), verbose=0, shuffle=False)  # compile
    start = time.perf_counter()
    model.fit(ds.repeat(steps), verbose=0, shuffle=False)
    return steps * BATCH / (time.perf_counter() - start)


def synthetic_split(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return data.Split(rng.integers(0, 256, (n, size, size, 3), np.uint8),
                      rng.integers(0, 100, n))


def decode_splits(tmp, n):
    """Streamed (JPEG-decoding) splits of the two file readers."""
    from tools.synthetic import make_tiny_imagenet_zip, write_image_folder
    manual = os.path.join(tmp, "tfds", "downloads", "manual")
    os.makedirs(manual)
    make_tiny_imagenet_zip(os.path.join(manual, "tiny-imagenet-200.zip"),
                           per_class=n // 3, n_val=8, n_test=2)
    tiny = data.load("tiny_imagenet", data_dir=os.path.join(tmp, "tfds"))
    import pathlib
    write_image_folder(pathlib.Path(tmp) / "folder", n // 3, 2)
    folder = data.load("folder:" + os.path.join(tmp, "folder"),
                       image_size=64)
    return {"tiny_imagenet": tiny.train, "folder": folder.train}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer images")
    args = p.parse_args()
    n_pipe = 2048 if args.quick else 8192
    steps = 10 if args.quick else 30
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, "
          f"batch {BATCH}, two views per image")
    rows = []
    train_rate = {}
    for name, size in POLICIES:
        split = synthetic_split(4096, size)
        cached = images_per_second(pipeline.train_dataset(
            split, BATCH, seed=0), n_pipe)
        train_rate[size] = train_images_per_second(size, steps)
        rows.append((name, size, data.augment.default_padding((size, size)),
                     "cached", cached, train_rate[size]))
    with tempfile.TemporaryDirectory() as tmp:
        for name, split in decode_splits(tmp, 1500 if args.quick
                                         else 3000).items():
            rate = images_per_second(pipeline.train_dataset(
                split, BATCH, seed=0, cache="none"),
                min(len(split) - 4 * BATCH, n_pipe))
            size = split.image_size[0]
            rows.append((name, size, data.augment.default_padding(
                split.image_size), "decode", rate, train_rate[size]))
    print(f"{'dataset':<14}{'px':>4}{'pad':>5}  {'stream':<7}"
          f"{'pipeline img/s':>15}{'train img/s':>13}{'ratio':>8}")
    for name, size, pad, kind, rate, tr in rows:
        print(f"{name:<14}{size:>4}{pad:>5}  {kind:<7}{rate:>15.0f}"
              f"{tr:>13.0f}{rate / tr:>8.1f}")


if __name__ == "__main__":
    main()
