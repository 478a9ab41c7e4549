"""The process: TensorFlow started without its start-up notices
(``import_tensorflow``, ``filtered_stderr``), and the settings a run fixes
before building anything (the seed, the Keras dtype policy, TensorFlow's
op determinism)."""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from ega_tf.core.registry import check_choice

# Lines TensorFlow prints at start-up that say nothing about the run.
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "oneDNN custom operations are on",
    "Could not find cuda drivers on your machine",
    "failed call to cuInit",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "Unable to register cu",
)


@contextlib.contextmanager
def filtered_stderr(noise=_STARTUP_NOISE):
    """Captures file descriptor 2 (C++ and Python writes alike) and writes
    back the lines that contain none of ``noise``."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not any(n in line for n in noise)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


_DEVICES_LISTED = []


def import_tensorflow():
    """Imports TensorFlow (``import ega_tf`` may have done so already) and
    lists its devices, which is when CUDA's notices come, without the
    start-up notices; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not _DEVICES_LISTED:
        with filtered_stderr():
            import tensorflow as tf
            tf.config.list_physical_devices()
        import logging
        logging.getLogger("tensorflow").setLevel(logging.WARNING)
        _DEVICES_LISTED.append(True)
    return sys.modules["tensorflow"]


PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")


def check_precision(policy):
    check_choice("precision", policy, PRECISIONS)


def set_precision(policy):
    """Sets the global Keras dtype policy."""
    import keras
    check_precision(policy)
    keras.mixed_precision.set_global_policy(policy)


def set_seed(seed):
    """Seeds Python, NumPy and TensorFlow (initializers draw from these)."""
    import keras
    keras.utils.set_random_seed(int(seed))


@contextlib.contextmanager
def op_determinism(on=True):
    """TensorFlow's op determinism inside the block, the process's previous
    setting restored after it: a run must not leave it on for what the
    process does next (Keras, for one, then refuses to compile with XLA).

    TensorFlow's public API can only turn it on; reading and restoring the
    setting use its ``tensorflow.python.framework.config`` functions (as
    Keras does). Where those are missing, it stays on after the block."""
    import tensorflow as tf
    try:
        from tensorflow.python.framework import config as tf_config
        was = tf_config.is_op_determinism_enabled()
        restore = tf_config.disable_op_determinism
    except (ImportError, AttributeError):
        was, restore = False, None
    if on and not was:
        tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if on and not was and restore is not None:
            restore()
