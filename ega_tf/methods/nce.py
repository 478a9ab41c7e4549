"""The contrastive baselines of EGA's published code: its supervised NCE,
and CCL (that NCE plus the symmetric KL of the logits)."""

from __future__ import annotations

from ega_tf.methods.base import CE_PLUS_METHOD, POSITIVE, Method, register
from ega_tf.methods.maths import f32, unit_rows
from ega_tf.nn.keras_ops import ops

__all__ = ["CCL", "NCE", "NCE_EPSILON", "ccl_loss", "nce_loss",
           "symmetric_kl_per_example"]

# EGA's NCE and CCL add this inside their logarithms.
NCE_EPSILON = 1e-10


def _label_pairs(labels):
    """(positive, negative) [B, B] masks: the same image, or two labeled
    examples of one class; two labeled examples of different classes.
    Pairs with an example labeled -1 (other than with itself) are
    neither."""
    y = ops.reshape(ops.cast(labels, "int32"), (-1,))
    known = ops.cast(y >= 0, "float32")
    both = known[:, None] * known[None, :]
    same = ops.cast(y[:, None] == y[None, :], "float32")
    eye = ops.eye(ops.shape(y)[0], dtype="float32")
    positive = ops.maximum(both * same, eye)
    negative = both * (1.0 - same)
    return positive, negative


def nce_loss(teacher_emb, student_emb, labels, temperature=0.1):
    """EGA code's supervised contrastive loss, per row as published: for
    each student row i, p_ij = softmax over j of cos(s_i, t_j) / T; the
    mean of -log(p_ij + eps) over its positives j plus the mean of
    -log(1 - p_ij + eps) over its negatives; then the mean over the rows.
    Positives and negatives as ``_label_pairs`` says: an unlabeled row has
    itself as its only positive and no negative part, and a row without
    negatives (a batch of one class) adds 0 for them where the published
    code divides by zero."""
    sim = ops.matmul(unit_rows(student_emb),
                     ops.transpose(unit_rows(teacher_emb))) / temperature
    p = ops.softmax(sim, axis=-1)
    positive, negative = _label_pairs(labels)

    def row_mean(mask, values):
        return ops.sum(mask * values, -1) / ops.maximum(ops.sum(mask, -1),
                                                        1.0)
    pos = row_mean(positive, -ops.log(p + NCE_EPSILON))
    neg = row_mean(negative, -ops.log(1.0 - p + NCE_EPSILON))
    return ops.mean(pos + neg)


def symmetric_kl_per_example(teacher_logits, student_logits,
                             temperature=1.0):
    """0.5 (KL(p_t || p_s) + KL(p_s || p_t)) of each example, at T."""
    lt = ops.log_softmax(f32(teacher_logits) / temperature, -1)
    ls = ops.log_softmax(f32(student_logits) / temperature, -1)
    kl_ts = ops.sum(ops.exp(lt) * (lt - ls), -1)
    kl_st = ops.sum(ops.exp(ls) * (ls - lt), -1)
    return 0.5 * (kl_ts + kl_st)


def ccl_loss(teacher_emb, student_emb, teacher_logits, student_logits,
             labels, temperature=0.1, kl_temperature=1.0):
    """EGA code's CCL: ``nce_loss`` plus the symmetric KL of the logits."""
    return (nce_loss(teacher_emb, student_emb, labels, temperature)
            + ops.mean(symmetric_kl_per_example(teacher_logits,
                                                student_logits,
                                                kl_temperature)))


@register
class NCE(Method):
    """EGA code's supervised contrastive loss over the gathered batch."""
    name = "nce"
    terms = {"nce": None}
    defaults = {**CE_PLUS_METHOD, "nce_temperature": 0.1}
    limits = {"nce_temperature": POSITIVE}
    source = "EGA's NCE (T 0.1, -b 1)"

    def compute(self, b):
        t, s, y = self.gathered(b, b.x_t, b.x_s, b.raw_labels)
        nce = nce_loss(t, s, y, self.w["nce_temperature"])
        return self.weighted({"nce": self.graph(nce)})


@register
class CCL(Method):
    """EGA code's CCL: NCE over the global batch + the logits' symmetric
    KL, per example."""
    name = "ccl"
    terms = {"nce": None, "kl": None}
    defaults = {**CE_PLUS_METHOD, "nce_temperature": 0.1,
                "ccl_kl_temperature": 1.0}
    limits = {"nce_temperature": POSITIVE, "ccl_kl_temperature": POSITIVE}
    source = "EGA's CCL (NCE + symmetric KL at T 1, -b 1)"

    def compute(self, b):
        t, s, y = self.gathered(b, b.x_t, b.x_s, b.raw_labels)
        nce = nce_loss(t, s, y, self.w["nce_temperature"])
        kl = symmetric_kl_per_example(b.t_logits, b.s_logits,
                                      self.w["ccl_kl_temperature"])
        return self.weighted({"nce": self.graph(nce),
                              "kl": self.per_example(kl, b.valid)})
