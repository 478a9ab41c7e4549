"""Test-wide settings: quiet TensorFlow, CPU only, and two logical CPU
devices, so the multi-device tests run in this process (devices can only be
split before TensorFlow starts them)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from ega_tf import cli, distribute  # noqa: E402

tf = cli.import_tensorflow()
distribute.split_cpu(2)
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test workers share two cores: one thread each for TensorFlow's
    # ops, rather than two each contending.
    tf.config.threading.set_intra_op_parallelism_threads(1)
