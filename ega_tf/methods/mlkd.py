"""Multi-level logit distillation, MLKD (Jin, Wang & Lin, CVPR 2023): KD
of the softened logits at five temperatures, at three levels, each as its
publisher's code computes it:

* instance: KD (batch mean) at T, 3, 5, 2 and 6;
* class: for each temperature, the squared difference of the class
  correlation matrices P^T P ([C, C], over the batch), summed, / C;
* batch: the squared difference of the batch correlation matrices P P^T
  ([B, B]), summed, / B.

The published code takes each of these as a batch scalar and multiplies
it by a confidence mask before averaging, so a mask does not select
examples: it scales the term by the share of examples (instance, batch)
or classes (class) whose teacher confidence is at most its median. The
published code also has a second, "strong" augmentation of each image;
this project has one view per network and step, so both of MLKD's
branches read the run's (student view, teacher view) pair
(docs/methods.md, "MLKD").
"""

from __future__ import annotations

from ega_tf.methods.base import (CE_PLUS_METHOD, POSITIVE, STANDARDIZE, Method,
                                 register)
from ega_tf.methods.maths import f32, kd_per_example, maybe_standardize
from ega_tf.nn.keras_ops import ops

__all__ = ["MLKD", "mlkd_loss", "mlkd_terms"]

# The temperatures after the first (cfg.KD.TEMPERATURE), as published.
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)


def _median_share(values):
    """The share of ``values`` [N] at most their median (NumPy's 50th
    percentile, linear interpolation), as the published masks count."""
    v = ops.sort(f32(values))
    n = ops.shape(v)[0]
    position = 0.5 * ops.cast(n - 1, "float32")
    low = ops.cast(ops.floor(position), "int32")
    high = ops.cast(ops.ceil(position), "int32")
    median = v[low] + (v[high] - v[low]) * (position - ops.cast(low,
                                                                "float32"))
    return ops.mean(ops.cast(f32(values) <= median, "float32"))


def _class_term(p_t, p_s):
    c = ops.cast(ops.shape(p_t)[1], "float32")
    g_t = ops.matmul(ops.transpose(p_t), p_t)
    g_s = ops.matmul(ops.transpose(p_s), p_s)
    return ops.sum(ops.square(g_t - g_s)) / c


def _batch_term(p_t, p_s):
    b = ops.cast(ops.shape(p_t)[0], "float32")
    g_t = ops.matmul(p_t, ops.transpose(p_t))
    g_s = ops.matmul(p_s, ops.transpose(p_s))
    return ops.sum(ops.square(g_t - g_s)) / b


def mlkd_terms(teacher_logits, student_logits, temperature=4.0,
               standardize=False):
    """The three unweighted levels over one batch (every row counts):
    ``{"mlkd_instance", "mlkd_class", "mlkd_batch"}``. Logit
    standardization, when on, applies to the instance level only, as
    published."""
    t, s = f32(teacher_logits), f32(student_logits)
    p_teacher = ops.softmax(t, -1)  # at T 1, as the published masks read
    example_share = _median_share(ops.max(p_teacher, -1))
    class_share = _median_share(ops.sum(p_teacher, 0))
    t_kd, s_kd = maybe_standardize(t, s, standardize)
    temperatures = (temperature, *EXTRA_TEMPERATURES)
    instance = class_level = batch_level = 0.0
    for temp in temperatures:
        kd = ops.mean(kd_per_example(t_kd, s_kd, temp))
        # The weak branch's KD, masked, plus the strong branch's, which
        # reads the same pair here.
        instance = instance + kd * example_share + kd
        p_t, p_s = ops.softmax(t / temp, -1), ops.softmax(s / temp, -1)
        class_level = class_level + _class_term(p_t, p_s) * class_share
        batch_level = batch_level + _batch_term(p_t, p_s) * example_share
    return {"mlkd_instance": instance, "mlkd_class": class_level,
            "mlkd_batch": batch_level}


def mlkd_loss(teacher_logits, student_logits, weight=0.9, temperature=4.0,
              standardize=False):
    """``weight`` times the sum of the three levels."""
    terms = mlkd_terms(teacher_logits, student_logits, temperature,
                       standardize)
    return weight * (terms["mlkd_instance"] + terms["mlkd_class"]
                     + terms["mlkd_batch"])


@register
class MLKD(Method):
    """MLKD on the teacher head's logits, every level over the gathered
    global batch. No labels: unlabeled examples count. gamma is twice the
    published CE weight 0.1: the published loss has the cross-entropy of
    the weak and of the strong view, both the one student view here."""
    name = "mlkd"
    terms = {"mlkd_instance": "mlkd_weight", "mlkd_class": "mlkd_weight",
             "mlkd_batch": "mlkd_weight"}
    defaults = {**CE_PLUS_METHOD, "gamma": 0.2, "mlkd_weight": 0.9,
                "mlkd_temperature": 4.0, STANDARDIZE: False}
    boolean_fields = (STANDARDIZE,)
    standardized_defaults = {"mlkd_weight": 9.0, "mlkd_temperature": 2.0}
    limits = {"mlkd_temperature": POSITIVE}
    tuned = ("mlkd_weight",)
    source = ("Multi-Level-Logit-Distillation's resnet32x4 -> resnet8x4 "
              "(CE 0.1 on two views, KD weight 0.9, T 4); with logit "
              "standardization, LS-KD's (weight 9, T 2)")

    def compute(self, b):
        t, s = self.gathered(b, b.t_logits, b.s_logits)
        terms = mlkd_terms(t, s, self.w["mlkd_temperature"],
                           self.w[STANDARDIZE])
        return self.weighted({k: self.graph(v) for k, v in terms.items()})
