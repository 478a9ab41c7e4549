"""Shared command-line set-up: quiet TensorFlow logs, seeds, precision."""

from __future__ import annotations

import os


def quiet_tensorflow():
    """Hides TensorFlow's C++ start-up chatter (set before importing TF) and
    its Python INFO lines (checkpoint sharding, SavedModel asset notices),
    keeping warnings and this project's own log lines."""
    import logging
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


def set_seed(seed):
    import keras
    keras.utils.set_random_seed(int(seed))


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def set_precision(policy):
    """Sets the global Keras dtype policy, with a clear error for typos."""
    import keras
    from ega_tf.registry import check_choice
    check_choice("precision", policy, PRECISIONS)
    keras.mixed_precision.set_global_policy(policy)


USER_ERRORS = (ValueError, KeyError, FileNotFoundError, ImportError)


def friendly_errors(main):
    """Wraps an absl ``main``: bad input exits 2 with one clear line instead
    of a traceback (set EGA_TF_DEBUG=1 to see the traceback)."""
    import functools
    import sys

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as e:
            if os.environ.get("EGA_TF_DEBUG"):
                raise
            msg = e.args[0] if isinstance(e, KeyError) and e.args else e
            print(f"error: {msg}", file=sys.stderr)
            sys.exit(2)

    return wrapped
