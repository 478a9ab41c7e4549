"""FitNets' hint (Romero et al., ICLR 2015) in embedding form: the squared
error between the projections (no regressor: both are D wide)."""

from __future__ import annotations

from ega_tf.methods.base import CE_PLUS_METHOD, Method, register
from ega_tf.methods.maths import f32
from ega_tf.nn.keras_ops import ops

__all__ = ["Hint", "hint_loss", "hint_per_example"]


def hint_per_example(teacher_emb, student_emb):
    """The squared error of each example, averaged over the features."""
    return ops.mean(ops.square(f32(student_emb) - f32(teacher_emb)), -1)


def hint_loss(teacher_emb, student_emb):
    """Mean squared error between the embeddings."""
    return ops.mean(hint_per_example(teacher_emb, student_emb))


@register
class Hint(Method):
    """FitNets' hint in embedding form: mean((x_s - x_t)^2)."""
    name = "hint"
    terms = {"hint": None}
    defaults = {**CE_PLUS_METHOD, "beta": 100.0}
    source = "RepDistiller's FitNet weight (-b 100)"
    min_batch = 1

    def compute(self, b):
        return self.weighted({"hint": self.per_example(
            hint_per_example(b.x_t, b.x_s), b.valid)})
