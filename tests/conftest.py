"""Test-wide settings: quiet TensorFlow, CPU only, and two logical CPU
devices, so the multi-device tests run in this process (devices can only be
split before TensorFlow starts them)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from ega_tf import cli, distribute  # noqa: E402

cli.import_tensorflow()
distribute.split_cpu(2)
