"""The queue methods: SEED (Fang et al., ICLR 2021) and CompRess-1q
(Abbasi Koohpayegani, Tejankar & Pirsiavash, NeurIPS 2020). Both compare
the student's and the teacher's similarities to a FIFO queue of teacher
embeddings, filled with the global batch after each step."""

from __future__ import annotations

import abc

from ega_tf.methods.base import (AT_LEAST_ONE, CE_PLUS_METHOD, POSITIVE,
                                 Method, register)
from ega_tf.methods.maths import unit_rows
from ega_tf.nn.keras_ops import ops

__all__ = ["CompRess", "SEED", "compress_loss", "compress_per_example",
           "seed_loss", "seed_per_example"]


def seed_per_example(teacher_emb, student_emb, queue, student_temperature=0.2,
                     teacher_temperature=1e-4):
    """Each example's similarities to its own teacher embedding and to a
    queue of teacher embeddings, the student's softmax at T_s matched by
    cross-entropy to the teacher's at T_t."""
    t, s, q = unit_rows(teacher_emb), unit_rows(student_emb), \
        unit_rows(queue)
    logit_s = ops.concatenate([ops.sum(s * t, -1, keepdims=True),
                               ops.matmul(s, ops.transpose(q))], -1)
    logit_t = ops.concatenate([ops.sum(t * t, -1, keepdims=True),
                               ops.matmul(t, ops.transpose(q))], -1)
    target = ops.softmax(logit_t / teacher_temperature, -1)
    return -ops.sum(target * ops.log_softmax(logit_s / student_temperature,
                                             -1), -1)


def seed_loss(teacher_emb, student_emb, queue, student_temperature=0.2,
              teacher_temperature=1e-4):
    """``seed_per_example``, batch mean."""
    return ops.mean(seed_per_example(teacher_emb, student_emb, queue,
                                     student_temperature,
                                     teacher_temperature))


def compress_per_example(teacher_emb, student_emb, queue, temperature=0.04):
    """KL from the teacher's to the student's softmax of similarities to
    one queue of teacher embeddings (anchors), at T."""
    t, s, q = unit_rows(teacher_emb), unit_rows(student_emb), \
        unit_rows(queue)
    lt = ops.log_softmax(ops.matmul(t, ops.transpose(q)) / temperature, -1)
    ls = ops.log_softmax(ops.matmul(s, ops.transpose(q)) / temperature, -1)
    return ops.sum(ops.exp(lt) * (lt - ls), -1)


def compress_loss(teacher_emb, student_emb, queue, temperature=0.04):
    """``compress_per_example``, batch mean."""
    return ops.mean(compress_per_example(teacher_emb, student_emb, queue,
                                         temperature))


class _Queue(Method, abc.ABC):
    """A FIFO queue of teacher projections (no larger than the training
    set), filled with the global batch. Subclasses name the queue's length
    field and give the per-example loss."""
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
        queue = ops.stop_gradient(self.queue)
        term = next(iter(self.terms))
        return self.weighted({term: self.per_example(
            self.loss_per_example(b, queue), b.valid)})

    def update(self, b, state):
        import tensorflow as tf

        from ega_tf.nn import replicas
        new = unit_rows(replicas.gather(b.x_t))
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
    defaults = {**CE_PLUS_METHOD, "seed_queue": 65536,
                "seed_student_t": 0.2, "seed_teacher_t": 1e-4}
    queue_field = "seed_queue"
    integer_fields = ("seed_queue",)
    limits = {"seed_queue": AT_LEAST_ONE, "seed_student_t": POSITIVE,
              "seed_teacher_t": POSITIVE}
    source = "SEED's defaults (queue 65536, T_s 0.2, T_t 1e-4)"

    def loss_per_example(self, b, queue):
        return seed_per_example(b.x_t, b.x_s, queue,
                                self.w["seed_student_t"],
                                self.w["seed_teacher_t"])


@register
class CompRess(_Queue):
    """CompRess-1q: KL(teacher || student) of the similarity distributions
    over the queue."""
    name = "compress"
    terms = {"compress": None}
    defaults = {**CE_PLUS_METHOD, "compress_queue": 128000,
                "compress_t": 0.04}
    queue_field = "compress_queue"
    integer_fields = ("compress_queue",)
    limits = {"compress_queue": AT_LEAST_ONE, "compress_t": POSITIVE}
    source = "CompRess-1q (queue 128000, T 0.04)"

    def loss_per_example(self, b, queue):
        return compress_per_example(b.x_t, b.x_s, queue,
                                    self.w["compress_t"])
