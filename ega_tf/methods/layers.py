"""The layers that compute the distillation methods of ``ega_tf.methods``
(its docstring says what each reads and how the terms are combined)."""

from __future__ import annotations

import dataclasses
import math
from typing import Dict

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from ega_tf import losses
from ega_tf.layers import torch_dense


@dataclasses.dataclass
class Batch:
    """What a method sees of one step, on one replica."""
    x_t: object        # [b, D] teacher projections (no gradient)
    x_s: object        # [b, D] student projections
    t_logits: object   # [b, K] teacher head logits (no gradient)
    s_logits: object   # [b, K]
    labels: object     # [b] labels with -1 replaced by 0
    labeled: object    # [b] 1 for labeled examples (and not padding)
    valid: object      # [b] 1 for real examples, 0 for padding
    raw_labels: object  # [b] labels, -1 kept (-1 also for padding)
    index: object      # [b] dataset indices (training) or None
    training: bool
    distiller: object  # gather_global, sum_over_replicas, replicas


@dataclasses.dataclass
class Result:
    """What ``Method.compute`` returns: the logged global terms, the
    method's global loss (unweighted by beta), this replica's share of it
    (whose gradient, summed over replicas, is the loss's), and whatever
    ``update`` needs from the step."""
    terms: Dict[str, object]
    value: object = 0.0
    share: object = 0.0
    state: object = None


class Method(keras.layers.Layer):
    """A method's computation and state. ``compute(batch)`` returns a
    ``Result``; ``update(batch, state)`` refreshes queues and banks after a
    training step, with the global batch."""

    evaluates = True  # False: its terms make no sense on held-out data

    def __init__(self, spec, weights, num_examples, embed_dim, seed=0,
                 steps_per_epoch=1, **kwargs):
        super().__init__(name=f"method_{spec.name}", **kwargs)
        self.spec, self.w = spec, dict(weights)
        self.num_examples = int(num_examples)
        self.embed_dim = int(embed_dim)
        self.seed = int(seed)
        self.steps_per_epoch = max(1, int(steps_per_epoch))

    def compute(self, b):
        return Result({})

    def update(self, b, state):
        pass

    # Helpers for subclasses.
    @staticmethod
    def graph(b, value):
        """A loss of the gathered global batch: the same on every replica,
        so each replica's share is 1 / R of it (gather sums gradients)."""
        return value, value / b.distiller.replicas()

    @staticmethod
    def per_example(b, values, weights):
        return b.distiller.mean_over_global(values, weights)

    @staticmethod
    def gathered(b, *tensors):
        """The global batch's valid rows of each tensor."""
        out = [b.distiller.gather_global(t) for t in tensors]
        if b.training:
            return out
        valid = b.distiller.gather_global(b.valid) > 0
        return [tf.boolean_mask(t, valid) for t in out]


class Graph(Method):
    """EGA and the relational baselines, over the global batch."""

    def compute(self, b):
        name, w = self.spec.name, self.w
        if name.startswith("ega"):
            t, s, m = (b.distiller.gather_global(v) for v in
                       (b.x_t, b.x_s, b.valid))
            terms = losses.ega_terms(t, s, mask=m)
            terms = {k: v for k, v in terms.items() if k in self.spec.terms}
            total = (w["node_weight"] * terms.get("node", 0.0)
                     + w["edge_weight"] * terms.get("edge", 0.0))
        else:
            t, s, y = self.gathered(b, b.x_t, b.x_s, b.raw_labels)
            if name == "rkd":
                terms = losses.rkd_terms(t, s)
                total = (w["rkd_distance"] * terms["rkd_distance"]
                         + w["rkd_angle"] * terms["rkd_angle"])
            elif name == "pkt":
                terms = {"pkt": losses.pkt_loss(t, s)}
                total = terms["pkt"]
            elif name == "sp":
                terms = {"sp": losses.sp_loss(t, s)}
                total = terms["sp"]
            else:  # nce
                terms = {"nce": losses.nce_loss(t, s, y,
                                                w["nce_temperature"])}
                total = terms["nce"]
        value, share = self.graph(b, total)
        return Result(terms, value, share)


class CCL(Method):
    """EGA code's CCL: NCE over the global batch + the logits' symmetric
    KL, per example."""

    def compute(self, b):
        t, s, y = self.gathered(b, b.x_t, b.x_s, b.raw_labels)
        nce = losses.nce_loss(t, s, y, self.w["nce_temperature"])
        nce_value, nce_share = self.graph(b, nce)
        kl, kl_share = self.per_example(b, losses.symmetric_kl_per_example(
            b.t_logits, b.s_logits, self.w["ccl_kl_temperature"]), b.valid)
        return Result({"nce": nce, "kl": kl}, nce_value + kl,
                      nce_share + kl_share)


class Hint(Method):

    def compute(self, b):
        value, share = self.per_example(
            b, losses.hint_per_example(b.x_t, b.x_s), b.valid)
        return Result({"hint": value}, value, share)


class DKD(Method):
    """Decoupled KD on the teacher head's logits, labeled examples only,
    ramped in over ``dkd_warmup`` epochs."""

    def build(self, input_shape=None):
        self.iterations = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False,
            name="iterations", aggregation="only_first_replica")
        super().build(input_shape)

    def compute(self, b):
        w = self.w
        per = losses.dkd_per_example(b.t_logits, b.s_logits, b.labels,
                                     w["dkd_alpha"], w["dkd_beta"],
                                     w["dkd_temperature"])
        tckd, _ = self.per_example(b, per["tckd"], b.labeled)
        nckd, _ = self.per_example(b, per["nckd"], b.labeled)
        value, share = self.per_example(b, per["dkd"], b.labeled)
        # Epoch 1, 2, ... as in mdistiller: min(epoch / warmup, 1).
        epoch = ops.cast(self.iterations // self.steps_per_epoch + 1,
                         "float32")
        ramp = (ops.minimum(epoch / float(w["dkd_warmup"]), 1.0)
                if w["dkd_warmup"] > 0 else 1.0)
        return Result({"tckd": tckd, "nckd": nckd}, ramp * value,
                      ramp * share)

    def update(self, b, state):
        self.iterations.assign_add(1)


class Queue(Method):
    """SEED and CompRess-1q: a FIFO queue of teacher projections (no larger
    than the training set), filled with the global batch."""

    def build(self, input_shape=None):
        size = min(int(self.w[f"{self.spec.name}_queue"]),
                   self.num_examples)
        init = keras.initializers.RandomNormal(seed=self.seed)
        self.queue = self.add_weight(
            shape=(size, self.embed_dim), initializer=init, trainable=False,
            name="queue", aggregation="only_first_replica")
        self.pointer = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False,
            name="pointer", aggregation="only_first_replica")
        super().build(input_shape)

    def compute(self, b):
        queue = ops.stop_gradient(self.queue)
        if self.spec.name == "seed":
            per = losses.seed_per_example(b.x_t, b.x_s, queue,
                                          self.w["seed_student_t"],
                                          self.w["seed_teacher_t"])
        else:
            per = losses.compress_per_example(b.x_t, b.x_s, queue,
                                              self.w["compress_t"])
        value, share = self.per_example(b, per, b.valid)
        return Result({self.spec.name: value}, value, share)

    def update(self, b, state):
        new = losses.unit_rows(b.distiller.gather_global(b.x_t))
        size = self.queue.shape[0]
        rows = (self.pointer + tf.range(tf.shape(new)[0],
                                        dtype="int64")) % size
        self.queue.assign(tf.tensor_scatter_nd_update(
            self.queue.value, rows[:, None], new))
        self.pointer.assign((self.pointer + tf.shape(new, "int64")[0])
                            % size)


class CRD(Method):
    """Contrastive representation distillation with two memory banks of
    N x d unit vectors. A labeled anchor draws its K negatives (uniformly,
    with replacement) from the examples not labeled with its class,
    unlabeled ones included; an anchor labeled -1 from every example but
    itself. K is at most N - 1. The draws depend on the seed, the step and
    the row's place in the global batch, so they are the same on any number
    of replicas."""

    evaluates = False  # held-out images have no bank rows

    def __init__(self, *args, labels=None, **kwargs):
        super().__init__(*args, **kwargs)
        labels = np.asarray(labels, np.int64)
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

    def build(self, input_shape=None):
        d, n = int(self.w["crd_dim"]), self.num_examples
        self.embed_s = torch_dense(d, self.embed_dim, name="crd_embed_s")
        self.embed_t = torch_dense(d, self.embed_dim, name="crd_embed_t")
        self.embed_s.build((None, self.embed_dim))
        self.embed_t.build((None, self.embed_dim))
        # As the published banks: uniform in +-1 / sqrt(d / 3).
        bound = 1.0 / math.sqrt(d / 3)
        for i, name in enumerate(("bank_s", "bank_t")):
            setattr(self, name, self.add_weight(
                shape=(n, d), initializer=keras.initializers.RandomUniform(
                    -bound, bound, seed=self.seed + i), trainable=False,
                name=name, aggregation="only_first_replica"))
        # The normalisation constants Z of both directions, fixed at the
        # first step (-1: not yet).
        self.z = self.add_weight(
            shape=(2,), initializer=keras.initializers.Constant(-1.0),
            trainable=False, name="z", aggregation="only_first_replica")
        self.step = self.add_weight(
            shape=(), initializer="zeros", dtype="int64", trainable=False,
            name="step", aggregation="only_first_replica")
        super().build(input_shape)

    def memory_mb(self):
        """The two banks' size."""
        return 2 * self.num_examples * int(self.w["crd_dim"]) * 4 / 2**20

    def _negatives(self, b):
        """[b, K] bank rows for this replica's anchors."""
        y = ops.cast(b.raw_labels, "int64")
        idx = ops.cast(b.index, "int64")
        rows = tf.shape(y)[0]
        ctx = tf.distribute.get_replica_context()
        first = (ctx.replica_id_in_sync_group * rows
                 if ctx is not None and ctx.num_replicas_in_sync > 1 else 0)
        seed = tf.stack([tf.constant(self.seed, tf.int64), self.step.value])
        u = tf.random.stateless_uniform(
            (rows * b.distiller.replicas(), self.k), seed, dtype=tf.float64)
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
        if not b.training:
            return Result({})
        v_s = losses.unit_rows(self.embed_s(b.x_s))
        v_t = losses.unit_rows(self.embed_t(b.x_t))
        idx = ops.cast(b.index, "int64")
        neg = self._negatives(b)
        T, n = self.w["crd_temperature"], self.num_examples
        per, z = 0.0, []
        # The student's anchors against the teacher's bank, and back.
        for j, (anchor, bank) in enumerate(((v_s, self.bank_t),
                                            (v_t, self.bank_s))):
            pos, negs = tf.gather(bank.value, idx), tf.gather(bank.value, neg)
            # Z, fixed at the first step: N times the mean of exp(v.m / T)
            # over the global batch's positives and negatives.
            scores = ops.exp(ops.concatenate(
                [ops.sum(anchor * pos, -1, keepdims=True),
                 ops.einsum("bd,bkd->bk", anchor, negs)], -1) / T)
            scores = ops.stop_gradient(scores) * b.valid[:, None]
            count = b.distiller.sum_over_replicas(
                ops.sum(b.valid) * float(self.k + 1))
            mean = b.distiller.sum_over_replicas(ops.sum(scores)) / count
            z.append(tf.where(self.z.value[j] > 0, self.z.value[j], mean * n))
            per = per + losses.crd_per_anchor(anchor, pos, negs, z[j], n, T)
        value, share = self.per_example(b, per, b.valid)
        return Result({"crd": value}, value, share,
                      state=(v_s, v_t, tf.stack(z)))

    def update(self, b, state):
        v_s, v_t, z = state
        m = self.w["crd_momentum"]
        g = b.distiller.gather_global
        idx = ops.cast(g(b.index), "int64")[:, None]
        for bank, v in ((self.bank_s, v_s), (self.bank_t, v_t)):
            rows = tf.gather_nd(bank.value, idx)
            new = losses.unit_rows(m * rows + (1 - m) * ops.stop_gradient(
                g(v)))
            bank.assign(tf.tensor_scatter_nd_update(bank.value, idx, new))
        self.z.assign(z)
        self.step.assign_add(1)


CLASSES = {"ega": Graph, "ega_node": Graph, "ega_edge": Graph,
            "rkd": Graph, "pkt": Graph, "sp": Graph, "nce": Graph,
            "ccl": CCL, "hint": Hint, "dkd": DKD, "seed": Queue,
            "compress": Queue, "crd": CRD, "kd": Method, "none": Method}


