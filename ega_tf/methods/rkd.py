"""Relational knowledge distillation (Park, Kim, Lu & Cho, CVPR 2019):
the distance and angle potentials of the batch's embeddings."""

from __future__ import annotations

from ega_tf.methods.base import CE_PLUS_METHOD, Method, register
from ega_tf.methods.maths import f32, unit_rows
from ega_tf.nn.keras_ops import ops

__all__ = ["RKD", "rkd_loss", "rkd_terms"]


def _smooth_l1(a, b):
    d = ops.abs(a - b)
    return ops.where(d < 1.0, 0.5 * d * d, d - 0.5)


def _pairwise_distances(e, eps=1e-12):
    e = f32(e)
    sq = ops.sum(ops.square(e), -1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * ops.matmul(e, ops.transpose(e))
    d = ops.sqrt(ops.maximum(d2, eps))
    return d * (1.0 - ops.eye(ops.shape(e)[0], dtype="float32"))


def _normalised_distances(e):
    """Distances divided by their mean over distinct pairs (1 if all are
    zero: a batch of identical embeddings has nothing to scale)."""
    d = _pairwise_distances(e)
    nonzero = ops.cast(d > 0, "float32")
    mean = ops.sum(d) / ops.maximum(ops.sum(nonzero), 1.0)
    return d / ops.where(mean > 0, mean, 1.0)


def _angles(e):
    """[i, j, k]: cos of the angle at e_i between e_j and e_k."""
    e = f32(e)
    diff = e[None, :, :] - e[:, None, :]  # [i, j] = e_j - e_i
    diff = unit_rows(diff)
    return ops.einsum("ijd,ikd->ijk", diff, diff)


def rkd_terms(teacher_emb, student_emb):
    """The unweighted distance and angle terms: smooth-L1 between the
    student's and the teacher's pairwise distances (each divided by its
    mean over distinct pairs) and between their triplet angles."""
    return {"rkd_distance": ops.mean(_smooth_l1(
        _normalised_distances(student_emb),
        _normalised_distances(teacher_emb))),
        "rkd_angle": ops.mean(_smooth_l1(_angles(student_emb),
                                         _angles(teacher_emb)))}


def rkd_loss(teacher_emb, student_emb, distance_weight=25.0,
             angle_weight=50.0):
    """``distance_weight * distance + angle_weight * angle``."""
    terms = rkd_terms(teacher_emb, student_emb)
    return (distance_weight * terms["rkd_distance"]
            + angle_weight * terms["rkd_angle"])


@register
class RKD(Method):
    """Relational KD: distance and angle potentials (smooth L1) over the
    gathered batch."""
    name = "rkd"
    terms = {"rkd_distance": "rkd_distance", "rkd_angle": "rkd_angle"}
    defaults = {**CE_PLUS_METHOD, "rkd_distance": 25.0, "rkd_angle": 50.0}
    source = "RepDistiller's RKD (25 distance + 50 angle, -b 1)"

    def compute(self, b):
        t, s = self.gathered(b, b.x_t, b.x_s)
        terms = rkd_terms(t, s)
        return self.weighted({k: self.graph(terms[k]) for k in self.terms})
