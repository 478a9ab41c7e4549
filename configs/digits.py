"""The embedded default: EGA on scikit-learn's digits, small and fast on CPU.

The published recipe (ega_tf/config.py) with a CIFAR-style resnet8 student,
20 epochs (the step decays keep their place as fractions of the run) and 90%
of the training labels hidden (-1), so EGA also learns from unlabeled images.
"""

from ega_tf.config import check_variant, default_config


def get_config(arg=None):
    check_variant(arg)
    c = default_config()
    c.dataset = "digits"
    c.student = "resnet8"
    c.epochs = 20
    c.labeled_fraction = 0.1
    if arg == "smoke":
        c.epochs = 1
        c.batch_size = 32
    return c
