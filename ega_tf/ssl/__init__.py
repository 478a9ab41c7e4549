"""Self-supervised pretraining, to make a real teacher where none can be
downloaded: SimCLR (Chen et al., ICML 2020) on unlabeled training images."""

import importlib

__all__ = ["SimCLR", "embed", "knn_accuracy", "nt_xent"]


def __getattr__(name):
    # From simclr.py on first use: it imports TensorFlow, and
    # ``python -m ega_tf.pretrain --help`` reads ``ega_tf.ssl.config``
    # without starting it.
    if name in __all__:
        return getattr(importlib.import_module("ega_tf.ssl.simclr"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
