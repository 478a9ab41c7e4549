"""ega_tf: distil a frozen self-supervised teacher into a small supervised
student with Embedding Graph Alignment (Ma, Chen & Akata, BMVC 2022).

``import ega_tf`` registers every Keras class the project writes into a
file (teacher preprocessing, CLIP's attention pooling, the ViT class token,
...), as ``import keras_hub`` does for its own, so that a ``.keras`` file
written here loads with Keras's own loader::

    import ega_tf, keras
    teacher = keras.saving.load_model("teacher.keras")

The command lines (``python -m ega_tf.train`` and the others) skip this
while Python starts them: their ``--help`` and flag errors need no
TensorFlow, and they register the classes themselves before reading a file
(``ega_tf.nn.serialization``).
"""

import sys

__version__ = "0.1.0"


def _starting_a_command():
    """Whether this import is ``python -m ega_tf.<command>`` locating its
    module: Python sets ``sys.argv[0]`` to ``"-m"`` until it runs it."""
    return sys.argv[:1] == ["-m"]


if not _starting_a_command():
    from ega_tf.core import runtime as _runtime

    with _runtime.filtered_stderr():  # TensorFlow's start-up notices
        # Every module that registers a Keras class (tests/
        # test_teacher_files.py checks none is missing).
        from ega_tf.nn import layers as _layers  # noqa: F401
        from ega_tf.nn import optimizers as _optimizers  # noqa: F401
        from ega_tf.ssl import augment as _augment  # noqa: F401
        from ega_tf.teachers import clip_resnet as _clip_resnet  # noqa
        from ega_tf.teachers import preprocess as _preprocess  # noqa
        from ega_tf.teachers import vit as _vit  # noqa: F401

