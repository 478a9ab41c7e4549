"""What a comparison looks at in a finished run, without matplotlib.

When a run ends, ``write_probe`` passes a fixed choice of test images
through its student and teacher (inference mode) and keeps the arrays in
``probe.npz`` in the run's workdir; the run's ``results.json`` gets the
silhouettes computed from them. ``ega_tf.compare`` reads those files: its
summary carries the silhouettes with or without pictures, and
``ega_tf.comparison.pictures`` draws the arrays without rebuilding any model.

``probe.npz`` holds:

- ``points``: indices of up to ``PROBE_POINTS`` test images, as many of
  each class as possible, in test order (``subset``); ``labels`` their
  classes; ``x_s`` the student's embeddings of them; ``features`` the
  frozen teacher's features (float16, for the t-SNE picture only; their
  silhouette is computed from float32 before they are stored).
- ``batch``: a fixed test batch ordered by class (``class_batch``: 8
  images of each of the first 8 classes); ``batch_x_s`` and
  ``batch_x_t`` (the teacher head's embedding) of it: the graphs E_s, E_t
  and EGA's node matrix N are their correlations.

The teacher's arrays are absent for a run without a teacher.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ega_tf.core.io_utils import atomic_output
from ega_tf.training.workdir import PROBE

# Test images whose embeddings a run keeps (compare --embedding_points
# draws up to this many).
PROBE_POINTS = 1000
GRAPH_CLASSES = 8
GRAPH_PER_CLASS = 8


def subset(labels, points):
    """Indices of up to ``points`` examples, as many of each class as
    possible, in the given order (a fixed choice). Of a subset, the
    subset of fewer points is the subset of the whole of that size."""
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    per = max(1, math.ceil(points / len(classes)))
    picked = np.concatenate([np.flatnonzero(labels == c)[:per]
                             for c in classes])
    return np.sort(picked)[:points]


def class_batch(labels, classes=GRAPH_CLASSES, per_class=GRAPH_PER_CLASS):
    """A fixed batch ordered by class: ``per_class`` examples of each of
    the first ``classes`` classes (the correlations then show the class
    blocks)."""
    labels = np.asarray(labels)
    return np.concatenate([np.flatnonzero(labels == c)[:per_class]
                           for c in range(min(classes, labels.max() + 1))])


def correlation(a, b=None):
    """Pearson correlations of the rows of ``a`` with those of ``b``
    (float64)."""
    def standard(x):
        x = np.asarray(x, np.float64)
        x = x - x.mean(1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True),
                              1e-12)
    a = standard(a)
    return a @ (a if b is None else standard(b)).T


def silhouette(embedding, labels):
    """Mean silhouette of ``embedding`` by class, cosine distance; None
    with fewer than two classes."""
    from sklearn.metrics import silhouette_score
    if len(np.unique(labels)) < 2:
        return None
    return float(silhouette_score(np.asarray(embedding, np.float64), labels,
                                  metric="cosine"))


def embeddings_of(model, images, batch_size=64):
    """(student x_s, teacher head x_t, frozen teacher features) of
    ``images`` in inference mode, float32; the teacher's two are None
    without a teacher. Run as one traced function: called eagerly, a
    ResNet-50-sized teacher at 224 px held 23 GB for a batch of 256 (3.6
    GB traced, and 5x faster)."""
    import tensorflow as tf
    teacher = model.teacher

    @tf.function(reduce_retracing=True)
    def forward(x):
        out = {"x_s": model.student(x, training=False)["embedding"]}
        if teacher is not None:
            out["features"] = teacher(x, training=False)
            out["x_t"] = model.teacher_embed(out["features"])
        return out

    parts = {}
    for i in range(0, len(images), batch_size):
        batch = images[i:i + batch_size]
        n = len(batch)
        if n < batch_size:  # one shape, one trace (a grid makes many runs)
            batch = np.concatenate([batch, np.zeros(
                (batch_size - n, *batch.shape[1:]), batch.dtype)])
        for k, v in forward(batch).items():
            # float32 also under a bfloat16 policy
            parts.setdefault(k, []).append(
                np.asarray(v)[:n].astype(np.float32))
    join = {k: np.concatenate(v) for k, v in parts.items()}
    return join["x_s"], join.get("x_t"), join.get("features")


def probe(model, test):
    """The arrays of ``probe.npz`` (see the module's docstring) and the
    silhouettes for ``results.json``, of ``model`` on the test split."""
    labels = np.asarray(test.labels)
    points = subset(labels, PROBE_POINTS)
    batch = class_batch(labels)
    # One pass (one trace of the forward) over both sets of images.
    x_s, x_t, features = embeddings_of(
        model, test.images[np.concatenate([points, batch])])
    n = len(points)
    x_s, batch_x_s = x_s[:n], x_s[n:]
    batch_x_t = x_t[n:] if x_t is not None else None
    features = features[:n] if features is not None else None
    arrays = {"points": points, "labels": labels[points], "x_s": x_s,
              "batch": batch, "batch_labels": labels[batch],
              "batch_x_s": batch_x_s}
    scores = {"test_silhouette": silhouette(x_s, labels[points])}
    if features is not None:
        arrays["features"] = features.astype(np.float16)
        arrays["batch_x_t"] = batch_x_t
        scores["teacher_silhouette"] = silhouette(features, labels[points])
    return arrays, scores


def write_probe(model, test, workdir):
    """Writes ``probe.npz`` (atomically) into ``workdir``; returns the
    silhouettes."""
    arrays, scores = probe(model, test)
    with atomic_output(os.path.join(workdir, PROBE), suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
    return scores


def read_probe(workdir):
    """The arrays a finished run wrote, or None if it wrote none."""
    path = os.path.join(workdir, PROBE)
    if not os.path.exists(path):
        return None
    with np.load(path) as f:
        return {k: f[k] for k in f.files}
