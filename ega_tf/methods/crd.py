"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR
2020): NCE between the student's and the teacher's embeddings, with
negatives from two memory banks of one row per training example."""

from __future__ import annotations

import math

import numpy as np

from ega_tf.methods.base import (AT_LEAST_ONE, CE_PLUS_METHOD, POSITIVE,
                                 Method, Range, Result, register)
from ega_tf.methods.maths import f32, unit_rows
from ega_tf.nn.keras_ops import ops

__all__ = ["CRD", "crd_loss", "crd_per_anchor"]


def crd_per_anchor(anchor, positive, negatives, z, num_examples,
                   temperature=0.07):
    """CRD's NCE objective (Tian et al. 2020) for anchors [B, d] (unit),
    their positives [B, d] and negatives [B, K, d] from a memory bank: with
    P = exp(v . m / T) / Z and h = P / (P + K / N), -log h_pos -
    sum_k log(1 - h_neg)."""
    anchor, positive, negatives = f32(anchor), f32(positive), \
        f32(negatives)
    k = ops.cast(ops.shape(negatives)[1], "float32")
    noise = k / float(num_examples)
    p_pos = ops.exp(ops.sum(anchor * positive, -1) / temperature) / z
    p_neg = ops.exp(ops.einsum("bd,bkd->bk", anchor, negatives)
                    / temperature) / z
    eps = 1e-7
    log_pos = ops.log(p_pos / (p_pos + noise + eps))
    log_neg = ops.log(noise / (p_neg + noise + eps))
    return -(log_pos + ops.sum(log_neg, -1))


def crd_loss(anchor, positive, negatives, z, num_examples, temperature=0.07):
    """``crd_per_anchor`` averaged over the anchors (one direction)."""
    return ops.mean(crd_per_anchor(anchor, positive, negatives, z,
                                   num_examples, temperature))


@register
class CRD(Method):
    """Contrastive representation distillation with two memory banks of
    N x d unit vectors. A labeled anchor draws its K negatives (uniformly,
    with replacement) from the examples not labeled with its class,
    unlabeled ones included; an anchor labeled -1 from every example but
    itself. K is at most N - 1. The draws depend on the seed, the step and
    the row's place in the global batch, so they are the same on any number
    of replicas. The normalisation constant Z is fixed at the first step,
    as published, while the banks are still random;
    ``crd_z_per_step=1`` (a deviation) estimates it again at every step."""
    name = "crd"
    terms = {"crd": None}
    defaults = {**CE_PLUS_METHOD, "beta": 0.8, "crd_dim": 128,
                "crd_negatives": 16384, "crd_temperature": 0.07,
                "crd_momentum": 0.5, "crd_z_per_step": 0}
    integer_fields = ("crd_dim", "crd_negatives", "crd_z_per_step")
    limits = {"crd_dim": AT_LEAST_ONE, "crd_negatives": AT_LEAST_ONE,
              "crd_temperature": POSITIVE, "crd_z_per_step": Range(0.0, 1.0),
              "crd_momentum": Range(0.0, 1.0, high_open=True)}
    source = ("RepDistiller's CRD (-b 0.8; 128-d, 16384 negatives, T 0.07,"
              " momentum 0.5)")
    uses_index = True
    evaluates = False  # held-out images have no bank rows
    min_batch = 1
    # Z fixed while the banks are random collapses the student on small
    # data whatever its weight (docs/methods.md); balanced, it is
    # estimated at every step.
    balanced_defaults = {"crd_z_per_step": 1}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.num_examples < 2:
            raise ValueError(f"crd needs num_examples (the training set's "
                             f"size) of at least 2; got {self.num_examples}.")
        labels = np.asarray(self.labels, np.int64)
        if len(labels) != self.num_examples:
            raise ValueError(f"crd: {len(labels)} labels for "
                             f"{self.num_examples} examples.")
        # Examples sorted by label: class c occupies [start[c], end[c]) of
        # ``order``, so "not class c" is the two ranges around it.
        self.order = np.argsort(labels, kind="stable")
        sorted_labels = labels[self.order]
        classes = np.arange(int(max(labels.max(), 0)) + 1)
        self.class_start = np.searchsorted(sorted_labels, classes, "left")
        self.class_end = np.searchsorted(sorted_labels, classes, "right")
        self.k = int(min(self.w["crd_negatives"], self.num_examples - 1))

    def build_state(self):
        import keras

        from ega_tf.nn.layers import torch_dense
        d, n = int(self.w["crd_dim"]), self.num_examples
        self.embed_s = self.add_layer(
            "embed_s", torch_dense(d, self.embed_dim, name="crd_embed_s"),
            (None, self.embed_dim))
        self.embed_t = self.add_layer(
            "embed_t", torch_dense(d, self.embed_dim, name="crd_embed_t"),
            (None, self.embed_dim))
        # As the published banks: uniform in +-1 / sqrt(d / 3).
        bound = 1.0 / math.sqrt(d / 3)
        self.bank_s, self.bank_t = (self.add_variable(
            name, (n, d), keras.initializers.RandomUniform(
                -bound, bound, seed=self.seed + i))
            for i, name in enumerate(("bank_s", "bank_t")))
        # The normalisation constants Z of both directions, fixed at the
        # first step (-1: not yet).
        self.z = self.add_variable("z", (2,),
                                   keras.initializers.Constant(-1.0))
        self.step = self.add_variable("step", (), dtype="int64")

    def describe_state(self):
        return (f"crd: two memory banks of {self.num_examples} x "
                f"{int(self.w['crd_dim'])}, {self.memory_mb():.1f} MiB of "
                f"state; {self.k} negatives per anchor.")

    def _negatives(self, b):
        """[b, K] bank rows for this replica's anchors."""
        import tensorflow as tf

        from ega_tf.nn import replicas
        y = ops.cast(b.raw_labels, "int64")
        idx = ops.cast(b.index, "int64")
        rows = tf.shape(y)[0]
        seed = tf.stack([tf.constant(self.seed, tf.int64), self.step.value])
        u = tf.random.stateless_uniform(
            (rows * replicas.count(), self.k), seed, dtype=tf.float64)
        first = replicas.index() * rows
        u = u[first:first + rows]
        n = self.num_examples
        labeled = y >= 0
        cls = tf.maximum(y, 0)
        start = tf.gather(tf.constant(self.class_start, tf.int64), cls)
        end = tf.gather(tf.constant(self.class_end, tf.int64), cls)
        own = tf.where(labeled, end - start, tf.ones_like(y))
        allowed = tf.maximum(n - own, 1)
        pick = tf.cast(tf.floor(u * tf.cast(allowed[:, None], tf.float64)),
                       tf.int64)
        pick = tf.minimum(pick, allowed[:, None] - 1)
        # Labeled: step over the class's range of ``order``; unlabeled:
        # step over the anchor's own index.
        in_order = tf.where(pick < start[:, None], pick,
                            pick + (end - start)[:, None])
        by_class = tf.gather(tf.constant(self.order, tf.int64),
                             tf.minimum(in_order, n - 1))
        by_index = tf.minimum(tf.where(pick < idx[:, None], pick, pick + 1),
                              n - 1)
        return tf.where(labeled[:, None], by_class, by_index)

    def compute(self, b):
        import tensorflow as tf

        from ega_tf.nn import replicas
        if not b.training:
            return Result({})
        v_s = unit_rows(self.embed_s(b.x_s))
        v_t = unit_rows(self.embed_t(b.x_t))
        idx = ops.cast(b.index, "int64")
        neg = self._negatives(b)
        T, n = self.w["crd_temperature"], self.num_examples
        per, z = 0.0, []
        # The student's anchors against the teacher's bank, and back.
        for j, (anchor, bank) in enumerate(((v_s, self.bank_t),
                                            (v_t, self.bank_s))):
            pos, negs = tf.gather(bank.value, idx), tf.gather(bank.value, neg)
            # Z: N times the mean of exp(v.m / T) over the global batch's
            # positives and negatives, at the first step (as published) or
            # at every step (crd_z_per_step).
            scores = ops.exp(ops.concatenate(
                [ops.sum(anchor * pos, -1, keepdims=True),
                 ops.einsum("bd,bkd->bk", anchor, negs)], -1) / T)
            scores = ops.stop_gradient(scores) * b.valid[:, None]
            count = replicas.sum(ops.sum(b.valid) * float(self.k + 1))
            mean = replicas.sum(ops.sum(scores)) / count
            z.append(mean * n if self.w["crd_z_per_step"] else
                     tf.where(self.z.value[j] > 0, self.z.value[j], mean * n))
            per = per + crd_per_anchor(anchor, pos, negs, z[j], n, T)
        return self.weighted({"crd": self.per_example(per, b.valid)},
                             state=(v_s, v_t, tf.stack(z)))

    def update(self, b, state):
        import tensorflow as tf

        from ega_tf.nn import replicas
        v_s, v_t, z = state
        m = self.w["crd_momentum"]
        idx = ops.cast(replicas.gather(b.index), "int64")[:, None]
        for bank, v in ((self.bank_s, v_s), (self.bank_t, v_t)):
            rows = tf.gather_nd(bank.value, idx)
            new = unit_rows(m * rows + (1 - m) * ops.stop_gradient(
                replicas.gather(v)))
            bank.assign(tf.tensor_scatter_nd_update(bank.value, idx, new))
        self.z.assign(z)
        self.step.assign_add(1)
