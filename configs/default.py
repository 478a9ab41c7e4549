"""The published EGA recipe: CIFAR-100, resnet8x4 student.

    python -m ega_tf.train --config=configs/default.py --teacher=t.keras
    python -m ega_tf.train --config=configs/default.py:smoke   # seconds

Any field can be overridden, e.g. ``--config.optim.lr=0.1``; the convenience
flags (--dataset, --student, ...) override the matching fields. The fields
and their meaning are in ega_tf/config.py.
"""

from ega_tf.config import default_config


def get_config(arg=None):
    return default_config(arg)
