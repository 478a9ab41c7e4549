"""Decoupled knowledge distillation (Zhao, Cui, Song, Qiu & Liang, CVPR
2022): KD split into the target class's share (TCKD) and the distribution
over the other classes (NCKD), each with its own weight."""

from __future__ import annotations

from ega_tf.core.constants import PUBLISHED_EPOCHS
from ega_tf.methods.base import (CE_PLUS_METHOD, POSITIVE, STANDARDIZE, Method,
                                 Result, register)
from ega_tf.methods.maths import f32, maybe_standardize
from ega_tf.nn.keras_ops import ops

__all__ = ["DKD", "dkd_loss", "dkd_per_example"]


def dkd_per_example(teacher_logits, student_logits, labels, alpha=1.0,
                    beta=8.0, temperature=4.0):
    """DKD of each example: alpha * TCKD (the target-vs-rest distribution)
    + beta * NCKD (the distribution over the non-target classes), both KL
    at T, times T^2. Labels must be >= 0 here; mask the rest."""
    t = f32(teacher_logits) / temperature
    s = f32(student_logits) / temperature
    y = ops.reshape(ops.cast(labels, "int32"), (-1,))
    gt = ops.one_hot(ops.maximum(y, 0), ops.shape(t)[-1], dtype="float32")
    p_t, p_s = ops.softmax(t, -1), ops.softmax(s, -1)
    b_t = ops.stack([ops.sum(p_t * gt, -1), ops.sum(p_t * (1 - gt), -1)], -1)
    b_s = ops.stack([ops.sum(p_s * gt, -1), ops.sum(p_s * (1 - gt), -1)], -1)
    tiny = 1e-12
    tckd = ops.sum(b_t * (ops.log(b_t + tiny) - ops.log(b_s + tiny)), -1)
    lt2 = ops.log_softmax(t - 1000.0 * gt, -1)
    ls2 = ops.log_softmax(s - 1000.0 * gt, -1)
    nckd = ops.sum(ops.exp(lt2) * (lt2 - ls2), -1)
    t2 = temperature**2
    return {"tckd": tckd * t2, "nckd": nckd * t2,
            "dkd": (alpha * tckd + beta * nckd) * t2}


def dkd_loss(teacher_logits, student_logits, labels, alpha=1.0, beta=8.0,
             temperature=4.0):
    """``dkd_per_example`` averaged over the examples labeled >= 0."""
    y = ops.reshape(ops.cast(labels, "int32"), (-1,))
    known = ops.cast(y >= 0, "float32")
    per = dkd_per_example(teacher_logits, student_logits, y, alpha, beta,
                          temperature)["dkd"]
    return ops.sum(per * known) / ops.maximum(ops.sum(known), 1.0)


@register
class DKD(Method):
    """Decoupled KD on the teacher head's logits, labeled examples only,
    ramped in over ``dkd_warmup`` epochs of the published 240, scaled to
    the run's length as the learning-rate decays are (20 of 240: 1.67 of
    a 20-epoch run). With ``logit_standardization``, on standardized
    logits, both weights times 9 and T 2 (the LS publisher's)."""
    name = "dkd"
    terms = {"tckd": "dkd_alpha", "nckd": "dkd_beta"}
    defaults = {**CE_PLUS_METHOD, "dkd_alpha": 1.0, "dkd_beta": 8.0,
                "dkd_temperature": 4.0, "dkd_warmup": 20, STANDARDIZE: False}
    standardized_defaults = {"dkd_alpha": 9.0, "dkd_beta": 72.0,
                             "dkd_temperature": 2.0}
    integer_fields = ("dkd_warmup",)
    boolean_fields = (STANDARDIZE,)
    limits = {"dkd_temperature": POSITIVE}
    tuned = ("dkd_beta",)  # the NCKD weight, mdistiller's per-pair knob
    source = ("mdistiller's DKD for resnet32x4 -> resnet8x4 (alpha 1, beta "
              "8, T 4, 20-epoch warm-up); with logit standardization, "
              "LS-KD's (both x 9, T 2)")
    min_batch = 1

    def build_state(self):
        self.iterations = self.add_variable("iterations", (),
                                            dtype="int64")

    def compute(self, b):
        w = self.w
        t_logits, s_logits = maybe_standardize(b.t_logits, b.s_logits,
                                               w[STANDARDIZE])
        per = dkd_per_example(t_logits, s_logits, b.labels,
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
