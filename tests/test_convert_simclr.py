"""SimCLR v1/v2 TF1 checkpoints: written with TF1's Saver under the
published variable names, converted without PyTorch, and compared with the
network computed by raw tf.nn ops as SimCLR's code does."""

import os

import numpy as np
import pytest

from ega_tf import teachers
from ega_tf.teachers import convert
from ega_tf.teachers.porting import ConversionError
from ega_tf.teachers.reference import tf_simclr


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def simclr_ckpt(tmp_path_factory):
    weights = tf_simclr.variables(seed=3)
    d = tmp_path_factory.mktemp("simclr")
    prefix = tf_simclr.save_tf1(weights, str(d / "model.ckpt-250228"))
    with open(d / "checkpoint", "w") as f:
        f.write('model_checkpoint_path: "model.ckpt-250228"\n')
    return weights, prefix


def test_simclr_tf1_checkpoint_parity(simclr_ckpt):
    weights, prefix = simclr_ckpt
    teacher = convert.convert(prefix, log=lambda s: None)
    meta = teachers.metadata(teacher)
    assert meta["family"] == "simclr" and meta["embedding_dim"] == 2048
    assert meta["blocks"] == [3, 4, 6, 3] and meta["width"] == 1
    # 64 px: the stem gives 32x32, where TF's SAME 3x3/2 pool pads only at
    # the end (0, 1) and a PyTorch-style pool would pad (1, 1).
    x = np.random.default_rng(0).uniform(size=(2, 64, 64, 3)).astype(
        np.float32)
    want = tf_simclr.forward(weights, x)
    got = teacher.get_layer("backbone")(x).numpy()
    err = rel_err(got, want)
    print(f"SimCLR ResNet-50 model rel err {err:.2e}")
    assert err <= 1e-4
    torch_style = rel_err(got, tf_simclr.forward(weights, x, pool="torch"))
    print(f"... against a PyTorch-style stem pool: {torch_style:.2e}")
    assert torch_style > 1e-3


def test_simclr_preprocessing_matches_its_eval_crop(simclr_ckpt):
    """Centre crop 0.875 of the shorter side (offset (side - crop + 1) // 2),
    bicubic to 224, clip to [0, 1], no mean/std."""
    _, prefix = simclr_ckpt
    teacher = convert.convert(prefix, log=lambda s: None)
    img = np.random.default_rng(1).integers(0, 256, (1, 40, 33, 3), np.uint8)
    want = tf_simclr.eval_preprocess(img[0])  # crop 29 at (6, 2)
    got = teacher.get_layer("preprocess")(img)
    diff = float(np.abs(got.numpy() - want).max())
    print(f"SimCLR preprocessing max abs diff {diff:.2e}")
    assert diff < 1e-5


def test_simclr_checkpoint_forms_and_errors(simclr_ckpt, tmp_path):
    _, prefix = simclr_ckpt
    a = convert.convert(prefix + ".index", log=lambda s: None)
    b = convert.convert(os.path.dirname(prefix), "simclr", log=lambda s: None)
    assert teachers.metadata(a)["source_sha256"] == \
        teachers.metadata(b)["source_sha256"]
    # A truncated data file: one clear error.
    bad = tmp_path / "model.ckpt-1"
    for suffix in (".index", ".data-00000-of-00001"):
        data = open(prefix + suffix, "rb").read()
        (tmp_path / f"model.ckpt-1{suffix}").write_bytes(
            data if suffix == ".index" else data[: len(data) // 2])
    with pytest.raises(ConversionError, match="Could not read|complete"):
        convert.convert(str(bad), log=lambda s: None)
    with pytest.raises(FileNotFoundError):
        convert.convert(str(tmp_path / "nothing"), log=lambda s: None)


def test_parity_tool_on_a_simclr_checkpoint(simclr_ckpt, tmp_path):
    from tests.parity_tool import run_parity_tool
    out, net, pre = run_parity_tool(simclr_ckpt[1], tmp_path, (50, 70, 3))
    assert "family simclr, embedding 2048" in out
    assert net <= 1e-4 and pre < 1e-5


def _convert_without_torch(checkpoint, out):
    """convert_teacher in a process where `import torch` fails."""
    import subprocess
    import sys
    code = f"""
import runpy, sys
class NoTorch:  # as if PyTorch were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'")
sys.meta_path.insert(0, NoTorch())
sys.argv = ["convert_teacher", "--checkpoint={checkpoint}", "--out={out}"]
runpy.run_module("ega_tf.convert_teacher", run_name="__main__")
"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run([sys.executable, "-c", code], cwd=root,
                          capture_output=True, text=True, timeout=600)


def test_without_pytorch_simclr_converts_and_pytorch_files_say_why(
        simclr_ckpt, tmp_path):
    _, prefix = simclr_ckpt
    out = tmp_path / "simclr.keras"
    r = _convert_without_torch(prefix, out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert out.exists()
    pth = tmp_path / "moco.pth.tar"
    pth.write_bytes(b"PK\x03\x04 not really")  # never opened: torch is absent
    r = _convert_without_torch(pth, tmp_path / "moco.keras")
    assert r.returncode == 2
    assert "needs PyTorch: pip install 'ega_tf[convert]'" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "moco.keras").exists()
