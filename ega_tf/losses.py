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


class EGADistillationLoss(keras.distillation.DistillationLoss):
    """EGA for Keras's built-in ``keras.distillation.Distiller``.

    Keras's ``Distiller`` feeds the *same* input to teacher and student and has
    no trainable teacher-side head, so this compares two existing layers
    directly: ``teacher_layer_name`` and ``student_layer_name`` (or the final
    outputs) must produce [B, D] embeddings of the same D when
    ``node_weight > 0`` (the edge term alone works across widths). For the
    published recipe (independent views, online teacher head, separate
    logging of every term) use ``ega_tf.distiller.EGADistiller``.

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
                "ega_tf.distiller.EGADistiller, which learns projections.")

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
