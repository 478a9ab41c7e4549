"""Test-wide settings: quiet TensorFlow, CPU only, and two logical CPU
devices, so the multi-device tests run in this process (devices can only be
split before TensorFlow starts them)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two test workers share two cores: one thread each for TensorFlow's
    # ops and its scheduler, and for PyTorch's and NumPy's OpenMP pools,
    # rather than two each contending. Set before any of them is imported;
    # the programs the tests start inherit them.
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS",
                 "OMP_NUM_THREADS"):
        os.environ.setdefault(name, "1")

from ega_tf.core import runtime  # noqa: E402
from ega_tf.training import distribute  # noqa: E402

tf = runtime.import_tensorflow()
distribute.split_cpu(2)
