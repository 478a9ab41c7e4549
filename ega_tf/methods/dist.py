"""DIST, knowledge distillation from a stronger teacher (Huang, You, Wang,
Qian & Xu, NeurIPS 2022): the teacher's and the student's class
probabilities at temperature tau, compared as relations rather than
matched exactly. Each relation is one minus a Pearson correlation, times
tau^2: per image across the classes (inter-class) and per class across the
batch (intra-class, over the gathered global batch)."""

from __future__ import annotations

from ega_tf.methods.base import (CE_PLUS_METHOD, POSITIVE, STANDARDIZE, Method,
                                 register)
from ega_tf.methods.maths import f32, maybe_standardize, sqrt_or_zero
from ega_tf.nn.keras_ops import ops

__all__ = ["DIST", "dist_inter_per_example", "dist_intra_term",
           "dist_loss"]

# Added to the product of the two norms, as the publisher's cosine does.
PEARSON_EPSILON = 1e-8


def pearson(a, b, axis):
    """Pearson correlation of ``a`` and ``b`` along ``axis``: the cosine of
    the two centred vectors, eps added to the product of their norms."""
    a, b = f32(a), f32(b)
    a = a - ops.mean(a, axis=axis, keepdims=True)
    b = b - ops.mean(b, axis=axis, keepdims=True)
    norms = sqrt_or_zero(ops.sum(a * a, axis=axis)) * sqrt_or_zero(
        ops.sum(b * b, axis=axis))
    return ops.sum(a * b, axis=axis) / (norms + PEARSON_EPSILON)


def _probabilities(teacher_logits, student_logits, temperature):
    return (ops.softmax(f32(teacher_logits) / temperature, -1),
            ops.softmax(f32(student_logits) / temperature, -1))


def dist_inter_per_example(teacher_logits, student_logits, temperature=4.0):
    """tau^2 (1 - pearson(p_s, p_t)) of each example, across the classes
    (the batch mean is DIST's inter-class relation)."""
    p_t, p_s = _probabilities(teacher_logits, student_logits, temperature)
    return temperature**2 * (1.0 - pearson(p_s, p_t, axis=1))


def dist_intra_term(teacher_logits, student_logits, temperature=4.0):
    """tau^2 (1 - the mean over the classes of pearson(p_s[:, c],
    p_t[:, c])), each class's correlation taken across the batch."""
    p_t, p_s = _probabilities(teacher_logits, student_logits, temperature)
    return temperature**2 * (1.0 - ops.mean(pearson(p_s, p_t, axis=0)))


def dist_loss(teacher_logits, student_logits, inter_weight=1.0,
              intra_weight=1.0, temperature=4.0):
    """``inter_weight * inter + intra_weight * intra`` over one batch."""
    inter = ops.mean(dist_inter_per_example(teacher_logits, student_logits,
                                            temperature))
    return inter_weight * inter + intra_weight * dist_intra_term(
        teacher_logits, student_logits, temperature)


@register
class DIST(Method):
    """DIST on the teacher head's logits; the intra-class relation over
    the gathered global batch. No labels: unlabeled examples count."""
    name = "dist"
    terms = {"dist_inter": "dist_inter", "dist_intra": "dist_intra"}
    defaults = {**CE_PLUS_METHOD, "beta": 2.0, "dist_inter": 1.0,
                "dist_intra": 1.0, "dist_temperature": 4.0,
                STANDARDIZE: False}
    boolean_fields = (STANDARDIZE,)
    limits = {"dist_temperature": POSITIVE}
    source = ("DIST_KD's CIFAR-100 recipe (kd_loss_weight 2, dist_t4: "
              "beta 1, gamma 1, tau 4); logit standardization has no "
              "published DIST recipe, so its weights stay these")

    def compute(self, b):
        w = self.w
        t_logits, s_logits = maybe_standardize(b.t_logits, b.s_logits,
                                               w[STANDARDIZE])
        inter = dist_inter_per_example(t_logits, s_logits,
                                       w["dist_temperature"])
        t, s = self.gathered(b, t_logits, s_logits)
        intra = dist_intra_term(t, s, w["dist_temperature"])
        return self.weighted({"dist_inter": self.per_example(inter, b.valid),
                              "dist_intra": self.graph(intra)})
