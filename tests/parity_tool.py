"""Runs tools/parity.py as a user would, for the tests that check it."""

import os
import re
import subprocess
import sys

import numpy as np
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_parity_tool(checkpoint, tmp_path, image_shape, seed=0):
    """Writes a random PNG of ``image_shape``, runs the tool on it and
    ``checkpoint``; returns (stdout, network rel err, preprocessing max)."""
    img = np.random.default_rng(seed).integers(0, 256, image_shape, np.uint8)
    png = tmp_path / "photo.png"
    png.write_bytes(tf.io.encode_png(img).numpy())
    r = subprocess.run(
        [sys.executable, "tools/parity.py", f"--checkpoint={checkpoint}",
         f"--image={png}"], cwd=ROOT, capture_output=True, text=True,
        timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    net = float(re.search(r"network:\s+rel err ([^,\s]+)", r.stdout).group(1))
    pre = float(re.search(r"preprocessing: max abs ([^,\s]+)",
                          r.stdout).group(1))
    return r.stdout, net, pre
