"""Embedding Graph Alignment (EGA) losses.

Ma, Chen & Akata, "Distilling Knowledge from Self-Supervised Teacher by
Embedding Graph Alignment", BMVC 2022 (arXiv 2211.13264).

For a batch of B node embeddings from the teacher (``x_t``) and the student
(``x_s``), both [B, D]:

    corr(a, b)[i, j] = Pearson correlation of a_i and b_j over the D features
    E_t = corr(x_t, x_t), E_s = corr(x_s, x_s)      edge matrices, [B, B]
    N   = corr(x_t, x_s)                             node matrix,   [B, B]
    L_node = ||N - I||_F,  L_edge = ||E_t - E_s||_F  (Frobenius, not / B)
    L_EGA  = node_weight * L_node + edge_weight * L_edge

Everything here is computed in float32 whatever the input dtype, so the graph
is exact under mixed precision. Rows with zero variance (a constant vector)
have no defined correlation; they correlate 0 with everything instead of
producing NaN (the published code divides by the standard deviation
unguarded). All values and gradients are finite for every input, including
B = 1 and D = 1.
"""

from __future__ import annotations

from typing import Dict

import keras
from keras import ops

# A row whose centred energy is below this fraction (squared) of its raw
# energy is treated as constant: float32 cannot resolve a spread of 1e-6 of the
# values, so what is left after centring is rounding noise, not signal.
_REL_TOL = 1e-6
_TINY = 1e-30  # keeps an all-zero row at zero instead of 0 / 0


def _standardize_rows(x):
    """Centres each row on its own mean and scales it to unit L2 norm.

    A zero-variance row becomes all zeros. The returned rows z satisfy
    z_i . z_j = Pearson correlation of rows i and j.
    """
    x = ops.cast(x, "float32")
    centred = x - ops.mean(x, axis=-1, keepdims=True)
    energy = ops.sum(ops.square(centred), axis=-1, keepdims=True)
    raw_energy = ops.sum(ops.square(x), axis=-1, keepdims=True)
    # max(), not +: the result is exact whenever the row has real variance.
    floor = _REL_TOL**2 * raw_energy + _TINY
    return centred * ops.rsqrt(ops.maximum(energy, floor))


def _gram(z_a, z_b):
    return ops.matmul(z_a, ops.transpose(z_b))


def correlation_matrix(a, b):
    """Pearson correlations between the rows of ``a`` [M, D] and ``b`` [N, D].

    Returns a float32 [M, N] matrix; ``a`` and ``b`` may be any float dtype.
    """
    return _gram(_standardize_rows(a), _standardize_rows(b))


def frobenius_norm(m):
    """sqrt(sum(m**2)) with a finite (zero) gradient at m == 0.

    ``ops.sqrt`` has an infinite derivative at 0, which happens in practice
    (e.g. B = 1 makes E_t == E_s exactly), so the zero case is routed around
    the square root (the "double where" idiom).
    """
    m = ops.cast(m, "float32")
    s = ops.sum(ops.square(m))
    positive = s > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, s, 1.0)), 0.0)


def edge_term(teacher_emb, student_emb):
    """L_edge = ||E_t - E_s||_F; the two widths may differ."""
    z_t, z_s = _standardize_rows(teacher_emb), _standardize_rows(student_emb)
    return frobenius_norm(_gram(z_t, z_t) - _gram(z_s, z_s))


def ega_terms(teacher_emb, student_emb,
              mask=None) -> Dict[str, "keras.KerasTensor"]:
    """The two unweighted EGA terms, ``{"node": L_node, "edge": L_edge}``.

    Args:
        teacher_emb: [B, D] teacher node embeddings x_t (treated as given;
            wrap in ``ops.stop_gradient`` if no gradient should reach them).
        student_emb: [B, D] student node embeddings x_s.
        mask: optional [B] weights, 1 for rows that belong to the graph and
            0 for padding. A correlation depends only on its two rows, so
            the result equals the terms of the kept rows alone.
    """
    d_t, d_s = teacher_emb.shape[-1], student_emb.shape[-1]
    if d_t is not None and d_s is not None and d_t != d_s:
        raise ValueError(
            "EGA's node term compares teacher and student embeddings feature "
            f"by feature, so they need the same width; got {d_t} and {d_s}. "
            "Project both to a shared width first.")
    z_t, z_s = _standardize_rows(teacher_emb), _standardize_rows(student_emb)
    n = _gram(z_t, z_s)
    node = n - ops.eye(ops.shape(n)[0], dtype="float32")
    edge = _gram(z_t, z_t) - _gram(z_s, z_s)
    if mask is not None:
        m = ops.cast(ops.reshape(mask, (-1,)), "float32")
        pairs = m[:, None] * m[None, :]
        node, edge = node * pairs, edge * pairs
    return {"node": frobenius_norm(node), "edge": frobenius_norm(edge)}


def ega_loss(teacher_emb, student_emb, node_weight=0.8, edge_weight=0.24):
    """``node_weight * ||N - I||_F + edge_weight * ||E_t - E_s||_F`` (float32)."""
    terms = ega_terms(teacher_emb, student_emb)
    return node_weight * terms["node"] + edge_weight * terms["edge"]


def kd_per_example(teacher_logits, student_logits, temperature=4.0):
    """Hinton KD of each example: KL(softmax(t/T) || softmax(s/T)) * T^2."""
    t = ops.cast(teacher_logits, "float32") / temperature
    s = ops.cast(student_logits, "float32") / temperature
    p_t = ops.softmax(t, axis=-1)
    kl = ops.sum(
        p_t * (ops.log_softmax(t, axis=-1) - ops.log_softmax(s, axis=-1)),
        axis=-1)
    return kl * temperature**2


def kd_loss(teacher_logits, student_logits, temperature=4.0):
    """Hinton KD, batch mean, float32."""
    return ops.mean(kd_per_example(teacher_logits, student_logits,
                                   temperature))


# ------------------------------------------------------------- baselines
# The other distillation losses, on [B, D] embeddings (teacher first) and
# the heads' logits, each written from its paper's formula (the sources are
# named in docs/methods.md). All return float32; none sends a gradient to
# the teacher side when the caller stops it; all are finite on constant
# rows, B = 2 and batches without labels.


def _f32(x):
    return ops.cast(x, "float32")


def unit_rows(x, eps=1e-12):
    x = _f32(x)
    norm = ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True))
    return x / ops.maximum(norm, eps)


def _smooth_l1(a, b):
    d = ops.abs(a - b)
    return ops.where(d < 1.0, 0.5 * d * d, d - 0.5)


def hint_per_example(teacher_emb, student_emb):
    """FitNets' hint on embeddings: the squared error of each example,
    averaged over the features (no regressor: both are D wide)."""
    return ops.mean(ops.square(_f32(student_emb) - _f32(teacher_emb)), -1)


def hint_loss(teacher_emb, student_emb):
    """Mean squared error between the embeddings (Romero et al. 2015)."""
    return ops.mean(hint_per_example(teacher_emb, student_emb))


def _pairwise_distances(e, eps=1e-12):
    e = _f32(e)
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
    e = _f32(e)
    diff = e[None, :, :] - e[:, None, :]  # [i, j] = e_j - e_i
    diff = unit_rows(diff)
    return ops.einsum("ijd,ikd->ijk", diff, diff)


def rkd_loss(teacher_emb, student_emb, distance_weight=25.0,
             angle_weight=50.0):
    """Relational KD (Park et al. 2019): smooth-L1 between the students'
    and the teacher's pairwise distances (each divided by its mean over
    distinct pairs) and between their triplet angles."""
    distance = ops.mean(_smooth_l1(_normalised_distances(student_emb),
                                   _normalised_distances(teacher_emb)))
    angle = ops.mean(_smooth_l1(_angles(student_emb), _angles(teacher_emb)))
    return distance_weight * distance + angle_weight * angle


def rkd_terms(teacher_emb, student_emb):
    """The unweighted distance and angle terms of ``rkd_loss``."""
    return {"rkd_distance": ops.mean(_smooth_l1(
        _normalised_distances(student_emb),
        _normalised_distances(teacher_emb))),
        "rkd_angle": ops.mean(_smooth_l1(_angles(student_emb),
                                         _angles(teacher_emb)))}


def _pkt_probabilities(e, eps=1e-7):
    e = _f32(e)
    e = e / (ops.sqrt(ops.sum(ops.square(e), -1, keepdims=True)) + eps)
    sim = (ops.matmul(e, ops.transpose(e)) + 1.0) / 2.0
    return sim / ops.sum(sim, -1, keepdims=True)


def pkt_loss(teacher_emb, student_emb, eps=1e-7):
    """Probabilistic knowledge transfer (Passalis & Tefas 2018): each
    example's cosine-similarity distribution over the batch, the student's
    to the teacher's by KL, averaged over all pairs."""
    p_t = _pkt_probabilities(teacher_emb, eps)
    p_s = _pkt_probabilities(student_emb, eps)
    return ops.mean(p_t * ops.log((p_t + eps) / (p_s + eps)))


def sp_loss(teacher_emb, student_emb):
    """Similarity-preserving KD (Tung & Mori 2019) on embeddings: the rows
    of each batch Gram matrix L2-normalised, ||G_t - G_s||_F^2 / B^2."""
    g_t = unit_rows(ops.matmul(_f32(teacher_emb),
                                ops.transpose(_f32(teacher_emb))))
    g_s = unit_rows(ops.matmul(_f32(student_emb),
                                ops.transpose(_f32(student_emb))))
    b = ops.cast(ops.shape(g_t)[0], "float32")
    return ops.sum(ops.square(g_t - g_s)) / (b * b)


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


# EGA's NCE and CCL add this inside their logarithms.
NCE_EPSILON = 1e-10


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
    lt = ops.log_softmax(_f32(teacher_logits) / temperature, -1)
    ls = ops.log_softmax(_f32(student_logits) / temperature, -1)
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


def dkd_per_example(teacher_logits, student_logits, labels, alpha=1.0,
                    beta=8.0, temperature=4.0):
    """Decoupled KD (Zhao et al. 2022) of each example: alpha * TCKD (the
    target-vs-rest distribution) + beta * NCKD (the distribution over the
    non-target classes), both KL at T, times T^2. Labels must be >= 0
    here; mask the rest."""
    t = _f32(teacher_logits) / temperature
    s = _f32(student_logits) / temperature
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


def seed_per_example(teacher_emb, student_emb, queue, student_temperature=0.2,
                     teacher_temperature=1e-4):
    """SEED (Fang et al. 2021): each example's similarities to its own
    teacher embedding and to a queue of teacher embeddings, the student's
    softmax at T_s matched by cross-entropy to the teacher's at T_t."""
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
    return ops.mean(seed_per_example(teacher_emb, student_emb, queue,
                                     student_temperature,
                                     teacher_temperature))


def compress_per_example(teacher_emb, student_emb, queue, temperature=0.04):
    """CompRess-1q (Abbasi Koohpayegani et al. 2020): KL from the
    teacher's to the student's softmax of similarities to one queue of
    teacher embeddings (anchors), at T."""
    t, s, q = unit_rows(teacher_emb), unit_rows(student_emb), \
        unit_rows(queue)
    lt = ops.log_softmax(ops.matmul(t, ops.transpose(q)) / temperature, -1)
    ls = ops.log_softmax(ops.matmul(s, ops.transpose(q)) / temperature, -1)
    return ops.sum(ops.exp(lt) * (lt - ls), -1)


def compress_loss(teacher_emb, student_emb, queue, temperature=0.04):
    return ops.mean(compress_per_example(teacher_emb, student_emb, queue,
                                         temperature))


def crd_per_anchor(anchor, positive, negatives, z, num_examples,
                   temperature=0.07):
    """CRD's NCE objective (Tian et al. 2020) for anchors [B, d] (unit),
    their positives [B, d] and negatives [B, K, d] from a memory bank: with
    P = exp(v . m / T) / Z and h = P / (P + K / N), -log h_pos -
    sum_k log(1 - h_neg)."""
    anchor, positive, negatives = _f32(anchor), _f32(positive), \
        _f32(negatives)
    k = ops.cast(ops.shape(negatives)[1], "float32")
    noise = k / float(num_examples)
    p_pos = ops.exp(ops.sum(anchor * positive, -1) / temperature) / z
    p_neg = ops.exp(ops.einsum("bd,bkd->bk", anchor, negatives)
                    / temperature) / z
    eps = 1e-7
    log_pos = ops.log(p_pos / (p_pos + noise + eps))
    log_neg = ops.log(noise / (p_neg + noise + eps))
    return -(log_pos + ops.sum(log_neg, -1))


def crd_loss(anchor, positive, negatives, z, num_examples, temperature=0.07):
    """``crd_per_anchor`` averaged over the anchors (one direction)."""
    return ops.mean(crd_per_anchor(anchor, positive, negatives, z,
                                   num_examples, temperature))


class EGADistillationLoss(keras.distillation.DistillationLoss):
    """EGA for Keras's built-in ``keras.distillation.Distiller``.

    Keras's ``Distiller`` feeds the *same* input to teacher and student and has
    no trainable teacher-side head, so this compares two existing layers
    directly: ``teacher_layer_name`` and ``student_layer_name`` (or the final
    outputs) must produce [B, D] embeddings of the same D when
    ``node_weight > 0`` (the edge term alone works across widths). For the
    published recipe (independent views, online teacher head, separate
    logging of every term) use ``ega_tf.distiller.Distiller``.

    Example:
        distiller = keras.distillation.Distiller(
            teacher, student,
            distillation_losses=EGADistillationLoss(
                teacher_layer_name="embedding", student_layer_name="embedding"),
            student_loss_weight=0.5)
    """

    def __init__(self, node_weight=0.8, edge_weight=0.24,
                 teacher_layer_name=None, student_layer_name=None):
        self.node_weight = float(node_weight)
        self.edge_weight = float(edge_weight)
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name

    def validate_outputs(self, teacher_outputs, student_outputs):
        for name, out in (("teacher", teacher_outputs),
                          ("student", student_outputs)):
            if len(out.shape) != 2:
                raise ValueError(
                    f"EGA needs [batch, features] embeddings; the {name} "
                    f"output has shape {tuple(out.shape)}. Name a pooled "
                    f"layer with {name}_layer_name.")
        if self.node_weight and teacher_outputs.shape[-1] != (
                student_outputs.shape[-1]):
            raise ValueError(
                "The EGA node term needs embeddings of equal width; got "
                f"teacher {teacher_outputs.shape[-1]} and student "
                f"{student_outputs.shape[-1]}. Set node_weight=0 or use "
                "ega_tf.distiller.Distiller, which learns projections.")

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        if self.node_weight == 0:
            return self.edge_weight * edge_term(teacher_outputs,
                                                student_outputs)
        return ega_loss(teacher_outputs, student_outputs,
                        self.node_weight, self.edge_weight)

    def get_config(self):
        return {"node_weight": self.node_weight,
                "edge_weight": self.edge_weight,
                "teacher_layer_name": self.teacher_layer_name,
                "student_layer_name": self.student_layer_name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
