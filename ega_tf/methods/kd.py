"""Hinton, Vinyals & Dean's knowledge distillation (2015): the KL of the
softened logits. Its per-example form is shared maths
(``ega_tf.methods.maths.kd_per_example``): every method's student loss has a KD
term, weighted by alpha, which only ``kd`` turns on by default."""

from __future__ import annotations

from ega_tf.methods.base import STANDARDIZE, Method, register
from ega_tf.methods.maths import kd_per_example
from ega_tf.nn.keras_ops import ops

__all__ = ["KD", "kd_loss", "kd_per_example"]


def kd_loss(teacher_logits, student_logits, temperature=4.0):
    """Hinton KD, batch mean, float32."""
    return ops.mean(kd_per_example(teacher_logits, student_logits,
                                   temperature))


@register
class KD(Method):
    """Hinton's KD on the teacher head's logits (the student's loss's alpha
    term; no method term), on standardized logits with
    ``logit_standardization`` (then at the LS publisher's weight 9 and
    T 2)."""
    name = "kd"
    defaults = {"gamma": 0.1, "alpha": 0.9, "beta": 0.0,
                "kd_temperature": 4.0, STANDARDIZE: False}
    boolean_fields = (STANDARDIZE,)
    standardized_defaults = {"alpha": 9.0, "kd_temperature": 2.0}
    source = ("RepDistiller's KD recipe (-r 0.1 -a 0.9 -b 0, T=4); with "
              "logit standardization, LS-KD's (--kd-weight 9 --base-temp 2)")
    min_batch = 1
    tuned = ("alpha", "gamma")
