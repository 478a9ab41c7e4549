"""EGA as a loss of Keras's own ``keras.distillation.Distiller``.

For the published recipe (independent views, an online teacher head, every
term logged, several devices) use ``ega_tf.training.distiller.Distiller``; this is
for a user who already distils with Keras's and wants EGA's graph terms
between two of its layers.
"""

from __future__ import annotations

import keras

from ega_tf.methods import ega


class EGADistillationLoss(keras.distillation.DistillationLoss):
    """EGA for Keras's built-in ``keras.distillation.Distiller``.

    Keras's ``Distiller`` feeds the *same* input to teacher and student and has
    no trainable teacher-side head, so this compares two existing layers
    directly: ``teacher_layer_name`` and ``student_layer_name`` (or the final
    outputs) must produce [B, D] embeddings of the same D when
    ``node_weight > 0`` (the edge term alone works across widths). For the
    published recipe (independent views, online teacher head, separate
    logging of every term) use ``ega_tf.training.distiller.Distiller``.

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
                "ega_tf.training.distiller.Distiller, which learns projections.")

    def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
        if self.node_weight == 0:
            return self.edge_weight * ega.edge_term(teacher_outputs,
                                                    student_outputs)
        return ega.ega_loss(teacher_outputs, student_outputs,
                            self.node_weight, self.edge_weight)

    def get_config(self):
        return {"node_weight": self.node_weight,
                "edge_weight": self.edge_weight,
                "teacher_layer_name": self.teacher_layer_name,
                "student_layer_name": self.student_layer_name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
