"""The built-in distillation methods, one class each (docs/methods.md gives
each formula and the source of its defaults).

Every method reads what EGA's published code wires its baselines to: the
projections ``x_t`` (the online teacher head's, treated as given) and
``x_s`` (the student's), and, where it needs them, the teacher head's and
the student's logits and the labels (-1: unlabeled). Relational losses (EGA,
RKD, PKT, SP, NCE) are computed over the gathered global batch; per-example
losses (hint, DKD, the KL of CCL, SEED, CompRess, CRD) are averaged over
it. Queues and memory banks are updated with the global batch after each
step and checkpointed with the model.

TensorFlow is imported inside the methods' computations only, so that
``--help`` reads this table without starting it.
"""

from __future__ import annotations

import abc
import math

import numpy as np

from ega_tf.constants import PUBLISHED_EPOCHS
from ega_tf.methods import register
from ega_tf.methods.base import (AT_LEAST_ONE, POSITIVE, Method, Range,
                                 Result)

# gamma * CE + beta * method, no KD: the published footing of every
# baseline but KD itself.
_CE_PLUS_METHOD = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}


@register
class CrossEntropy(Method):
    """Cross-entropy alone: the same network and pipeline, no teacher."""
    name = "none"
    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 0.0}
    source = "cross-entropy alone"
    uses_teacher = False
    min_batch = 1


# ------------------------------------------------------------ graph losses
@register
class EGA(Method):
    """Embedding Graph Alignment over the gathered global batch:
    node_weight * ||N - I||_F + edge_weight * ||E_t - E_s||_F."""
    name = "ega"
    terms = {"node": "node_weight", "edge": "edge_weight"}
    defaults = {**_CE_PLUS_METHOD, "node_weight": 0.8, "edge_weight": 0.24}
    source = "EGA's train_student.py defaults"

    def compute(self, b):
        from ega_tf import losses, replicas
        t, s, m = (replicas.gather(v) for v in (b.x_t, b.x_s, b.valid))
        terms = losses.ega_terms(t, s, mask=m)
        return self.weighted({k: self.graph(terms[k]) for k in self.terms})


@register
class EGANode(EGA):
    """EGA's ablation: the node term alone."""
    name = "ega_node"
    terms = {"node": "node_weight"}
    defaults = {**_CE_PLUS_METHOD, "node_weight": 0.8}
    source = "EGA, node term only"


@register
class EGAEdge(EGA):
    """EGA's ablation: the edge term alone."""
    name = "ega_edge"
    terms = {"edge": "edge_weight"}
    defaults = {**_CE_PLUS_METHOD, "edge_weight": 0.24}
    source = "EGA, edge term only"


@register
class RKD(Method):
    """Relational KD: distance and angle potentials (smooth L1) over the
    gathered batch."""
    name = "rkd"
    terms = {"rkd_distance": "rkd_distance", "rkd_angle": "rkd_angle"}
    defaults = {**_CE_PLUS_METHOD, "rkd_distance": 25.0, "rkd_angle": 50.0}
    source = "RepDistiller's RKD (25 distance + 50 angle, -b 1)"

    def compute(self, b):
        from ega_tf import losses
        t, s = self.gathered(b, b.x_t, b.x_s)
        terms = losses.rkd_terms(t, s)
        return self.weighted({k: self.graph(terms[k]) for k in self.terms})


@register
class PKT(Method):
    """Probabilistic knowledge transfer: KL of the cosine-similarity
    distributions over the gathered batch."""
    name = "pkt"
    terms = {"pkt": None}
    defaults = {**_CE_PLUS_METHOD, "beta": 30000.0}
    source = "RepDistiller's PKT weight (-b 30000)"

    def compute(self, b):
        from ega_tf import losses
        t, s = self.gathered(b, b.x_t, b.x_s)
        return self.weighted({"pkt": self.graph(losses.pkt_loss(t, s))})


@register
class SP(Method):
    """Similarity-preserving KD: the batch Gram matrices of the
    embeddings."""
    name = "sp"
    terms = {"sp": None}
    defaults = {**_CE_PLUS_METHOD, "beta": 3000.0}
    source = "RepDistiller's SP weight (-b 3000)"

    def compute(self, b):
        from ega_tf import losses
        t, s = self.gathered(b, b.x_t, b.x_s)
        return self.weighted({"sp": self.graph(losses.sp_loss(t, s))})


@register
class NCE(Method):
    """EGA code's supervised contrastive loss over the gathered batch."""
    name = "nce"
    terms = {"nce": None}
    defaults = {**_CE_PLUS_METHOD, "nce_temperature": 0.1}
    limits = {"nce_temperature": POSITIVE}
    source = "EGA's NCE (T 0.1, -b 1)"

    def compute(self, b):
        from ega_tf import losses
        t, s, y = self.gathered(b, b.x_t, b.x_s, b.raw_labels)
        nce = losses.nce_loss(t, s, y, self.w["nce_temperature"])
        return self.weighted({"nce": self.graph(nce)})


@register
class CCL(Method):
    """EGA code's CCL: NCE over the global batch + the logits' symmetric
    KL, per example."""
    name = "ccl"
    terms = {"nce": None, "kl": None}
    defaults = {**_CE_PLUS_METHOD, "nce_temperature": 0.1,
                "ccl_kl_temperature": 1.0}
    limits = {"nce_temperature": POSITIVE, "ccl_kl_temperature": POSITIVE}
    source = "EGA's CCL (NCE + symmetric KL at T 1, -b 1)"

    def compute(self, b):
        from ega_tf import losses
        t, s, y = self.gathered(b, b.x_t, b.x_s, b.raw_labels)
        nce = losses.nce_loss(t, s, y, self.w["nce_temperature"])
        kl = losses.symmetric_kl_per_example(
            b.t_logits, b.s_logits, self.w["ccl_kl_temperature"])
        return self.weighted({"nce": self.graph(nce),
                              "kl": self.per_example(kl, b.valid)})


# ------------------------------------------------------ per-example losses
@register
class KD(Method):
    """Hinton's KD on the teacher head's logits (the student's loss's alpha
    term; no method term)."""
    name = "kd"
    defaults = {"gamma": 0.1, "alpha": 0.9, "beta": 0.0,
                "kd_temperature": 4.0}
    source = "RepDistiller's KD recipe (-r 0.1 -a 0.9 -b 0, T=4)"
    min_batch = 1
    tuned = ("alpha", "gamma")


@register
class Hint(Method):
    """FitNets' hint in embedding form: mean((x_s - x_t)^2)."""
    name = "hint"
    terms = {"hint": None}
    defaults = {**_CE_PLUS_METHOD, "beta": 100.0}
    source = "RepDistiller's FitNet weight (-b 100)"
    min_batch = 1

    def compute(self, b):
        from ega_tf import losses
        return self.weighted({"hint": self.per_example(
            losses.hint_per_example(b.x_t, b.x_s), b.valid)})


@register
class DKD(Method):
    """Decoupled KD on the teacher head's logits, labeled examples only,
    ramped in over ``dkd_warmup`` epochs of the published 240, scaled to
    the run's length as the learning-rate decays are (20 of 240: 1.67 of
    a 20-epoch run)."""
    name = "dkd"
    terms = {"tckd": "dkd_alpha", "nckd": "dkd_beta"}
    defaults = {**_CE_PLUS_METHOD, "dkd_alpha": 1.0, "dkd_beta": 8.0,
                "dkd_temperature": 4.0, "dkd_warmup": 20}
    integer_fields = ("dkd_warmup",)
    limits = {"dkd_temperature": POSITIVE}
    tuned = ("dkd_beta",)  # the NCKD weight, mdistiller's per-pair knob
    source = ("mdistiller's DKD for resnet32x4 -> resnet8x4 (alpha 1, beta "
              "8, T 4, 20-epoch warm-up)")
    min_batch = 1

    def build_state(self):
        self.iterations = self.add_variable("iterations", (),
                                            dtype="int64")

    def compute(self, b):
        from keras import ops

        from ega_tf import losses
        w = self.w
        per = losses.dkd_per_example(b.t_logits, b.s_logits, b.labels,
                                     w["dkd_alpha"], w["dkd_beta"],
                                     w["dkd_temperature"])
        result = self.weighted({k: self.per_example(per[k], b.labeled)
                                for k in self.terms})
        # Epoch 1, 2, ... as in mdistiller: min(epoch / warmup, 1), the
        # warm-up scaled from the published run's length to this one's.
        epoch = ops.cast(self.iterations // self.steps_per_epoch + 1,
                         "float32")
        warmup = w["dkd_warmup"] * self.epochs / PUBLISHED_EPOCHS
        ramp = ops.minimum(epoch / warmup, 1.0) if warmup > 0 else 1.0
        return Result(result.terms, ramp * result.value, ramp * result.share,
                      shares={k: ramp * v for k, v in result.shares.items()})

    def update(self, b, state):
        self.iterations.assign_add(1)


class _Queue(Method, abc.ABC):
    """A FIFO queue of teacher projections (no larger than the training
    set), filled with the global batch: SEED and CompRess-1q. Subclasses
    name the queue's length field and give the per-example loss."""
    queue_field = ""
    min_batch = 1

    def build_state(self):
        import keras
        if self.num_examples < 2:
            raise ValueError(f"{self.name} needs num_examples (the training "
                             f"set's size) of at least 2; got "
                             f"{self.num_examples}.")
        size = min(int(self.w[self.queue_field]), self.num_examples)
        self.queue = self.add_variable(
            "queue", (size, self.embed_dim),
            keras.initializers.RandomNormal(seed=self.seed))
        self.pointer = self.add_variable("pointer", (), dtype="int64")

    @abc.abstractmethod
    def loss_per_example(self, b, queue):
        """[B] loss of each example of ``b`` against ``queue`` [Q, d]."""

    def compute(self, b):
        from keras import ops
        queue = ops.stop_gradient(self.queue)
        term = next(iter(self.terms))
        return self.weighted({term: self.per_example(
            self.loss_per_example(b, queue), b.valid)})

    def update(self, b, state):
        import tensorflow as tf

        from ega_tf import losses, replicas
        new = losses.unit_rows(replicas.gather(b.x_t))
        size = self.queue.shape[0]
        rows = (self.pointer + tf.range(tf.shape(new)[0],
                                        dtype="int64")) % size
        self.queue.assign(tf.tensor_scatter_nd_update(
            self.queue.value, rows[:, None], new))
        self.pointer.assign((self.pointer + tf.shape(new, "int64")[0])
                            % size)


@register
class SEED(_Queue):
    """SEED: cross-entropy between the teacher's and the student's
    similarity distributions over the queue."""
    name = "seed"
    terms = {"seed": None}
    defaults = {**_CE_PLUS_METHOD, "seed_queue": 65536,
                "seed_student_t": 0.2, "seed_teacher_t": 1e-4}
    queue_field = "seed_queue"
    integer_fields = ("seed_queue",)
    limits = {"seed_queue": AT_LEAST_ONE, "seed_student_t": POSITIVE,
              "seed_teacher_t": POSITIVE}
    source = "SEED's defaults (queue 65536, T_s 0.2, T_t 1e-4)"

    def loss_per_example(self, b, queue):
        from ega_tf import losses
        return losses.seed_per_example(b.x_t, b.x_s, queue,
                                       self.w["seed_student_t"],
                                       self.w["seed_teacher_t"])


@register
class CompRess(_Queue):
    """CompRess-1q: KL(teacher || student) of the similarity distributions
    over the queue."""
    name = "compress"
    terms = {"compress": None}
    defaults = {**_CE_PLUS_METHOD, "compress_queue": 128000,
                "compress_t": 0.04}
    queue_field = "compress_queue"
    integer_fields = ("compress_queue",)
    limits = {"compress_queue": AT_LEAST_ONE, "compress_t": POSITIVE}
    source = "CompRess-1q (queue 128000, T 0.04)"

    def loss_per_example(self, b, queue):
        from ega_tf import losses
        return losses.compress_per_example(b.x_t, b.x_s, queue,
                                           self.w["compress_t"])


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
    defaults = {**_CE_PLUS_METHOD, "beta": 0.8, "crd_dim": 128,
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

        from ega_tf.layers import torch_dense
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
        from keras import ops

        from ega_tf import replicas
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
        from keras import ops

        from ega_tf import losses, replicas
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
            per = per + losses.crd_per_anchor(anchor, pos, negs, z[j], n, T)
        return self.weighted({"crd": self.per_example(per, b.valid)},
                             state=(v_s, v_t, tf.stack(z)))

    def update(self, b, state):
        import tensorflow as tf
        from keras import ops

        from ega_tf import losses, replicas
        v_s, v_t, z = state
        m = self.w["crd_momentum"]
        idx = ops.cast(replicas.gather(b.index), "int64")[:, None]
        for bank, v in ((self.bank_s, v_s), (self.bank_t, v_t)):
            rows = tf.gather_nd(bank.value, idx)
            new = losses.unit_rows(m * rows + (1 - m) * ops.stop_gradient(
                replicas.gather(v)))
            bank.assign(tf.tensor_scatter_nd_update(bank.value, idx, new))
        self.z.assign(z)
        self.step.assign_add(1)
