"""Embedding Graph Alignment (Ma, Chen & Akata, BMVC 2022, arXiv
2211.13264), and its two ablations ``ega_node`` and ``ega_edge``.

For a batch of B node embeddings from the teacher (``x_t``) and the student
(``x_s``), both [B, D]:

    corr(a, b)[i, j] = Pearson correlation of a_i and b_j over the D features
    E_t = corr(x_t, x_t), E_s = corr(x_s, x_s)      edge matrices, [B, B]
    N   = corr(x_t, x_s)                             node matrix,   [B, B]
    L_node = ||N - I||_F,  L_edge = ||E_t - E_s||_F  (Frobenius, not / B)
    L_EGA  = node_weight * L_node + edge_weight * L_edge

computed in float32 over the gathered global batch (``ega_tf.methods.maths`` has
the correlations; a constant row correlates 0 with everything).
"""

from __future__ import annotations

from typing import Dict

from ega_tf.methods.base import CE_PLUS_METHOD, Method, register
from ega_tf.methods.maths import frobenius_norm, gram, standardize_rows
from ega_tf.nn.keras_ops import ops

__all__ = ["EGA", "EGAEdge", "EGANode", "edge_term", "ega_loss",
           "ega_terms"]


def edge_term(teacher_emb, student_emb):
    """L_edge = ||E_t - E_s||_F; the two widths may differ."""
    z_t, z_s = standardize_rows(teacher_emb), standardize_rows(student_emb)
    return frobenius_norm(gram(z_t, z_t) - gram(z_s, z_s))


def ega_terms(teacher_emb, student_emb, mask=None) -> Dict[str, object]:
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
    z_t, z_s = standardize_rows(teacher_emb), standardize_rows(student_emb)
    n = gram(z_t, z_s)
    node = n - ops.eye(ops.shape(n)[0], dtype="float32")
    edge = gram(z_t, z_t) - gram(z_s, z_s)
    if mask is not None:
        m = ops.cast(ops.reshape(mask, (-1,)), "float32")
        pairs = m[:, None] * m[None, :]
        node, edge = node * pairs, edge * pairs
    return {"node": frobenius_norm(node), "edge": frobenius_norm(edge)}


def ega_loss(teacher_emb, student_emb, node_weight=0.8, edge_weight=0.24):
    """``node_weight * ||N - I||_F + edge_weight * ||E_t - E_s||_F``."""
    terms = ega_terms(teacher_emb, student_emb)
    return node_weight * terms["node"] + edge_weight * terms["edge"]


@register
class EGA(Method):
    """Embedding Graph Alignment over the gathered global batch:
    node_weight * ||N - I||_F + edge_weight * ||E_t - E_s||_F."""
    name = "ega"
    terms = {"node": "node_weight", "edge": "edge_weight"}
    defaults = {**CE_PLUS_METHOD, "node_weight": 0.8, "edge_weight": 0.24}
    source = "EGA's train_student.py defaults"

    def compute(self, b):
        from ega_tf.nn import replicas
        t, s, m = (replicas.gather(v) for v in (b.x_t, b.x_s, b.valid))
        terms = ega_terms(t, s, mask=m)
        return self.weighted({k: self.graph(terms[k]) for k in self.terms})


@register
class EGANode(EGA):
    """EGA's ablation: the node term alone."""
    name = "ega_node"
    terms = {"node": "node_weight"}
    defaults = {**CE_PLUS_METHOD, "node_weight": 0.8}
    source = "EGA, node term only"


@register
class EGAEdge(EGA):
    """EGA's ablation: the edge term alone."""
    name = "ega_edge"
    terms = {"edge": "edge_weight"}
    defaults = {**CE_PLUS_METHOD, "edge_weight": 0.24}
    source = "EGA, edge term only"
