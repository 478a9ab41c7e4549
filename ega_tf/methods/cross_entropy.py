"""``--distill=none``: cross-entropy alone, the baseline every method is
measured against (the same student, pipeline and recipe, no teacher)."""

from __future__ import annotations

from ega_tf.methods.base import Method, register

__all__ = ["CrossEntropy"]


@register
class CrossEntropy(Method):
    """Cross-entropy alone: the same network and pipeline, no teacher."""
    name = "none"
    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 0.0}
    source = "cross-entropy alone"
    uses_teacher = False
    min_batch = 1
