"""Similarity-preserving knowledge distillation (Tung & Mori, ICCV 2019):
the batch Gram matrices of the embeddings."""

from __future__ import annotations

from ega_tf.methods.base import CE_PLUS_METHOD, Method, register
from ega_tf.methods.maths import f32, unit_rows
from ega_tf.nn.keras_ops import ops

__all__ = ["SP", "sp_loss"]


def sp_loss(teacher_emb, student_emb):
    """The rows of each batch Gram matrix L2-normalised,
    ||G_t - G_s||_F^2 / B^2."""
    g_t = unit_rows(ops.matmul(f32(teacher_emb),
                               ops.transpose(f32(teacher_emb))))
    g_s = unit_rows(ops.matmul(f32(student_emb),
                               ops.transpose(f32(student_emb))))
    b = ops.cast(ops.shape(g_t)[0], "float32")
    return ops.sum(ops.square(g_t - g_s)) / (b * b)


@register
class SP(Method):
    """Similarity-preserving KD: the batch Gram matrices of the
    embeddings."""
    name = "sp"
    terms = {"sp": None}
    defaults = {**CE_PLUS_METHOD, "beta": 3000.0}
    source = "RepDistiller's SP weight (-b 3000)"

    def compute(self, b):
        t, s = self.gathered(b, b.x_t, b.x_s)
        return self.weighted({"sp": self.graph(sp_loss(t, s))})
