"""Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018): the
cosine-similarity distributions of the batch's embeddings."""

from __future__ import annotations

from ega_tf.methods.base import CE_PLUS_METHOD, Method, register
from ega_tf.methods.maths import f32
from ega_tf.nn.keras_ops import ops

__all__ = ["PKT", "pkt_loss"]


def _pkt_probabilities(e, eps=1e-7):
    e = f32(e)
    e = e / (ops.sqrt(ops.sum(ops.square(e), -1, keepdims=True)) + eps)
    sim = (ops.matmul(e, ops.transpose(e)) + 1.0) / 2.0
    return sim / ops.sum(sim, -1, keepdims=True)


def pkt_loss(teacher_emb, student_emb, eps=1e-7):
    """Each example's cosine-similarity distribution over the batch, the
    student's to the teacher's by KL, averaged over all pairs."""
    p_t = _pkt_probabilities(teacher_emb, eps)
    p_s = _pkt_probabilities(student_emb, eps)
    return ops.mean(p_t * ops.log((p_t + eps) / (p_s + eps)))


@register
class PKT(Method):
    """Probabilistic knowledge transfer: KL of the cosine-similarity
    distributions over the gathered batch."""
    name = "pkt"
    terms = {"pkt": None}
    defaults = {**CE_PLUS_METHOD, "beta": 30000.0}
    source = "RepDistiller's PKT weight (-b 30000)"

    def compute(self, b):
        t, s = self.gathered(b, b.x_t, b.x_s)
        return self.weighted({"pkt": self.graph(pkt_loss(t, s))})
