"""The teacher's features of a whole split, computed once.

With ``teacher_view=clean`` the teacher sees each image as it is, never
augmented, so its features are a pure function of the image: training can
read them from a table instead of running the frozen teacher every step.
They are computed in batches (with a progress bar) when the run starts,
kept in memory as float32 (float16 would halve the memory but moved the
digits teacher's features by up to 3.5e-4 of their scale, so the run would
no longer equal the uncached one; float32 features are the ones the step
computes, bit for bit), and written to the workdir so that a resumed run
reads them back instead of recomputing. The file records the teacher file's SHA-256 and
the split's size; if either changed, the features are computed again.
"""

from __future__ import annotations

import os

import numpy as np
from absl import logging

from ega_tf.core.io_utils import atomic_output

POLICIES = ("auto", "none")


def check_policy(policy):
    from ega_tf.core.registry import check_choice
    check_choice("teacher_cache", policy, POLICIES)


def compute(teacher, split, batch_size=256, verbose=1, what="images"):
    """[N, F] float32 features of ``split``'s images, in order."""
    import keras
    import tensorflow as tf
    n = len(split)
    bar = keras.utils.Progbar(n, verbose=1 if verbose == 1 else 0,
                              unit_name="image")
    # Compiled as the training step is: graph optimisations round a
    # convolution differently from eager execution, and the cached features
    # must be the ones the step would compute.
    forward = tf.function(lambda x: teacher(x, training=False))
    out, done = [], 0
    for images in split.image_dataset().batch(batch_size):
        out.append(np.asarray(forward(images), np.float32))
        done += len(out[-1])
        bar.update(done)
    logging.info("Teacher features of the %d %s computed once (clean "
                 "view).", n, what)
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def load_or_compute(path, teacher, teacher_sha, split, what, verbose=1):
    """Features of ``split`` from ``path`` if they belong to this teacher and
    split, else computed (and written to ``path`` when it is given)."""
    if path and os.path.exists(path):
        with np.load(path) as saved:
            if str(saved["teacher_sha256"]) == teacher_sha and \
                    len(saved["features"]) == len(split):
                logging.info("Teacher features of the %s read from %s.",
                             what, path)
                return saved["features"]
    features = compute(teacher, split, verbose=verbose, what=what)
    if path:
        with atomic_output(path, suffix=".npz") as tmp:
            np.savez(tmp, features=features,
                     teacher_sha256=np.asarray(teacher_sha))
    return features
