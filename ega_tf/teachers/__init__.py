"""Teachers: frozen models mapping uint8 images to an embedding.

- ``preprocess``: ``TeacherPreprocess`` (the family's evaluation transform,
  inside the file) and ``FeatureStandardize``.
- ``teacher_file``: the teacher contract, ``assemble``, ``save``, ``load``.
- ``families``, ``convert``, ``checkpoint_io``, ``porting``: published
  checkpoints -> teachers; ``checkpoint_cache``: checkpoints passed to
  ``train``, converted once; ``feature_cache``: the frozen teacher's
  features of the clean views, computed once per run.
- ``resnet``, ``clip_resnet``, ``vit``, ``clip_vit``, ``simclr``,
  ``repdistiller``, ``dinov2`` (with ``position_tables``), ``dinov3``,
  ``convnext``, ``byol``: the architectures; ``hf_folder``: Hugging Face
  folders through keras-hub; ``user_model``: a model you already have.
"""

import importlib

# Each name from the module that defines it, imported on first use: they
# import Keras, and the command lines' --help reads this package's family
# table without starting TensorFlow.
_WHERE = {"load_or_convert": "checkpoint_cache",
          "FeatureStandardize": "preprocess", "TeacherPreprocess": "preprocess", "assemble": "teacher_file",
          "describe": "teacher_file", "load": "teacher_file",
          "metadata": "teacher_file", "save": "teacher_file"}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        module = importlib.import_module(f"ega_tf.teachers.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
