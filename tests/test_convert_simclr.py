"""SimCLR v1/v2 TF1 checkpoints: written with TF1's Saver under the
published variable names, converted without PyTorch, and compared with the
network computed by raw tf.nn ops as SimCLR's code does."""

import os

import numpy as np
import pytest
import tensorflow as tf

from ega_tf import teachers
from ega_tf.core.errors import ConversionError, UserError
from ega_tf.teachers import checkpoint_io, convert
from tests import checkpoints
from tests.test_case import TestCase
from tools.reference import tf_simclr


def quiet(path, fmt=None):
    return convert.convert(str(path), fmt, log=lambda s: None)


class SimCLRTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.published = checkpoints.write_simclr(cls.class_tempdir())
        cls.prefix = str(cls.published.path)
        # Converted once: the tests below read it and change nothing.
        cls.teacher = quiet(cls.prefix)

    def test_writer_writes_what_tf1s_saver_writes(self):
        """The fixture's writer (one SaveV2 op, eager) and TF1's Saver in a
        graph and session write the same two files byte for byte."""
        weights = dict(list(tf_simclr.variables(blocks=(1, 1, 1, 1))
                            .items())[:10])
        tmp = self.tmp_path()
        (tmp / "ours").mkdir()
        (tmp / "saver").mkdir()
        tf_simclr.save_tf1(weights, str(tmp / "ours" / "model.ckpt-1"))
        tf_simclr.save_tf1_with_saver(weights,
                                      str(tmp / "saver" / "model.ckpt-1"))
        for suffix in (".index", ".data-00000-of-00001"):
            ours = (tmp / "ours" / f"model.ckpt-1{suffix}").read_bytes()
            self.assertEqual(
                ours, (tmp / "saver" / f"model.ckpt-1{suffix}").read_bytes(),
                suffix)
        self.assertLen(tf.train.list_variables(str(tmp / "ours" /
                                                   "model.ckpt-1")), 16)

    def test_tf1_checkpoint_parity(self):
        teacher = self.teacher
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["family"], meta["embedding_dim"],
                          meta["blocks"], meta["width"]),
                         ("simclr", 2048, [3, 4, 6, 3], 1))
        # 64 px: the stem gives 32x32, where TF's SAME 3x3/2 pool pads only
        # at the end (0, 1) and a PyTorch-style pool would pad (1, 1).
        x = np.clip(checkpoints.random_pixels(0, size=64) * 0.25 + 0.5, 0, 1)
        got = teacher.get_layer("backbone")(x).numpy()
        self.assertParity(got, self.published.reference(x), 1e-4, "SimCLR")
        weights = tf_simclr.variables(seed=3)
        torch_style = self.rel_err(got, tf_simclr.forward(weights, x,
                                                          pool="torch"))
        print(f"... against a PyTorch-style stem pool: {torch_style:.2e}")
        self.assertGreater(torch_style, 1e-3)

    def test_preprocessing_matches_its_eval_crop(self):
        """Centre crop 0.875 of the shorter side (offset (side - crop + 1)
        // 2), bicubic to 224, clip to [0, 1], no mean/std."""
        img = np.random.default_rng(1).integers(0, 256, (1, 40, 33, 3),
                                                np.uint8)
        want = tf_simclr.eval_preprocess(img[0])  # crop 29 at (6, 2)
        diff = float(np.abs(self.teacher.get_layer("preprocess")(img)
                            .numpy() - want).max())
        print(f"SimCLR preprocessing max abs diff {diff:.2e}")
        self.assertLess(diff, 1e-5)

    def test_checkpoint_forms_and_errors(self):
        """The prefix (converted in setUpClass), its .index file and its
        directory name the same checkpoint: the same files (their SHA-256,
        which the teacher records), the same family, network and tensors
        (what conversion builds the teacher from)."""
        family, arch, kept = convert.load_backbone(self.prefix)
        self.assertEqual(teachers.metadata(self.teacher)["source_sha256"],
                         checkpoint_io.sha256(self.prefix))
        for form, fmt in ((self.prefix + ".index", None),
                          (os.path.dirname(self.prefix), "simclr")):
            with self.subTest(form=form):
                self.assertEqual(checkpoint_io.sha256(form),
                                 checkpoint_io.sha256(self.prefix))
                f, a, k = convert.load_backbone(form, fmt)
                self.assertEqual((f.name, a), (family.name, arch))
                self.assertCountEqual(k, kept)
                for name, value in kept.items():
                    np.testing.assert_array_equal(k[name], value, name)
        # A truncated data file: one clear error.
        tmp = self.tmp_path()
        for suffix in (".index", ".data-00000-of-00001"):
            data = open(self.prefix + suffix, "rb").read()
            (tmp / f"model.ckpt-1{suffix}").write_bytes(
                data if suffix == ".index" else data[: len(data) // 2])
        with self.assertRaisesRegex(ConversionError, "Could not read|complete"):
            quiet(tmp / "model.ckpt-1")
        with self.assertRaisesRegex(UserError, "does not exist"):
            quiet(tmp / "nothing")

    @pytest.mark.slow  # a program of its own
    def test_parity_tool_on_a_simclr_checkpoint(self):
        out, net, pre = self.run_parity_tool(self.prefix, self.tmp_path(),
                                             (50, 70, 3))
        self.assertIn("family simclr, embedding 2048", out)
        self.assertLessEqual(net, 1e-4)
        self.assertLess(pre, 1e-5)

    @pytest.mark.slow  # a program of its own
    def test_without_pytorch_simclr_converts_and_pytorch_files_say_why(self):
        tmp = self.tmp_path()
        out = tmp / "simclr.keras"
        r = self.run_subprocess(["-c", _NO_TORCH, f"--checkpoint="
                                 f"{self.prefix}", f"--out={out}"])
        self.assertSucceeded(r)
        self.assertTrue(out.exists())
        pth = tmp / "moco.pth.tar"
        import zipfile  # a PyTorch archive's shape; torch is never asked
        with zipfile.ZipFile(pth, "w") as z:
            z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        r = self.run_subprocess(["-c", _NO_TORCH, f"--checkpoint={pth}",
                                 f"--out={tmp / 'moco.keras'}"])
        self.assertOneLineError(r, "needs PyTorch: pip install "
                                "'ega_tf[convert]'")
        self.assertFalse((tmp / "moco.keras").exists())


# convert_teacher in a process where `import torch` fails.
_NO_TORCH = """
import runpy, sys
class NoTorch:  # as if PyTorch were not installed
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError("No module named 'torch'")
sys.meta_path.insert(0, NoTorch())
sys.argv = ["convert_teacher", *sys.argv[1:]]
runpy.run_module("ega_tf.convert_teacher", run_name="__main__")
"""
