"""Teachers: frozen models mapping uint8 images to an embedding.

- ``preprocess``: ``TeacherPreprocess`` (the family's evaluation transform,
  inside the file) and ``FeatureStandardize``.
- ``teacher_file``: the teacher contract, ``assemble``, ``save``, ``load``.
- ``families``, ``convert``, ``checkpoint_io``, ``porting``: published
  checkpoints -> teachers; ``cache``: checkpoints passed to ``train``.
- ``resnet``, ``clip_resnet``, ``vit``, ``clip_vit``, ``simclr``: the
  architectures; ``user_model``: a model you already have.
"""

from ega_tf.teachers.cache import load_or_convert
from ega_tf.teachers.preprocess import FeatureStandardize, TeacherPreprocess
from ega_tf.teachers.teacher_file import (assemble, describe, load, metadata,
                                          save)

__all__ = ["FeatureStandardize", "TeacherPreprocess", "assemble", "describe",
           "load", "load_or_convert", "metadata", "save"]
