"""ViT teachers: DINO and MoCo v3 (timm layout) and CLIP / open_clip ViTs,
each saved in its published file layout from a PyTorch reference with random
weights, converted, and compared on the same images."""

import numpy as np
import torch

from ega_tf import teachers
from ega_tf.core.constants import CLIP_STD
from ega_tf.core.errors import ConversionError
from ega_tf.teachers import convert
from tests import checkpoints
from tests.test_case import TestCase


def quiet(path, fmt=None, allow_pickle=False):
    return convert.convert(str(path), fmt, allow_pickle, log=lambda s: None)


class TimmViTTest(TestCase):

    def test_dino_full_checkpoint_and_backbone_file(self):
        tmp = self.tmp_path()
        model = checkpoints.timm_vit(seed=0)
        for full in (True, False):
            published = checkpoints.write_dino_vit(tmp, model, full=full)
            teacher = quiet(published.path, allow_pickle=full)
            meta = teachers.metadata(teacher)
            self.assertEqual((meta["family"], meta["heads"],
                              meta["embedding_dim"], meta["resolution"]),
                             ("dino_vit", 2, 128, 224))
            self.assertEqual(teacher.get_layer("preprocess").interpolation,
                             "pil_bicubic")
            self.assertPublishedParity(teacher.get_layer("backbone"),
                                       published,
                                       checkpoints.random_pixels(1))
        images = np.random.default_rng(2).integers(0, 256, (2, 40, 40, 3),
                                                   dtype=np.uint8)
        again = self.run_model_saving_test(teacher, images, teachers.save,
                                           teachers.load,
                                           str(tmp / "dino.keras"),
                                           atol=1e-5)
        self.assertEqual(again.get_layer("backbone").output_shape,
                         (None, 128))

    def test_mocov3_uses_twelve_heads(self):
        tmp = self.tmp_path()
        model = checkpoints.timm_vit(seed=1, dim=96, heads=12)
        published = checkpoints.write_mocov3_vit(tmp, model)
        teacher = quiet(published.path)
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["family"], meta["heads"]), ("mocov3_vit", 12))
        self.assertEqual(teacher.get_layer("preprocess").interpolation,
                         "pil_bilinear")
        x = checkpoints.random_pixels(2)
        self.assertPublishedParity(teacher.get_layer("backbone"), published,
                                   x)
        # The head count is not in the weights: DINO's rule (width / 64)
        # gives 1 head here, and a different function.
        torch.save(model.state_dict(), tmp / "as_dino.pth")
        wrong = quiet(tmp / "as_dino.pth", "dino_vit")
        self.assertEqual(teachers.metadata(wrong)["heads"], 1)
        self.assertGreater(self.rel_err(wrong.get_layer("backbone")(x),
                                        published.reference(x)), 1e-2)


class ClipViTTest(TestCase):

    def test_torchscript_file_parity(self):
        """OpenAI's ViT-B/32 layout (smaller) as a TorchScript archive."""
        published = checkpoints.write_clip_vit(self.tmp_path())
        teacher = quiet(published.path)
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["family"], meta["activation"],
                          meta["embedding_dim"], meta["patch"],
                          meta["heads"], meta["resolution"]),
                         ("clip_vit", "quick_gelu", 64, 32, 2, 224))
        x = checkpoints.random_pixels(5)
        self.assertPublishedParity(teacher.get_layer("backbone"), published,
                                   x)
        self.run_model_saving_test(
            teacher.get_layer("backbone"), x,
            lambda m, p: teachers.save(teacher, p),
            lambda p: teachers.load(p).get_layer("backbone"),
            str(self.tmp_path() / "clip_vit.keras"), atol=1e-5)

    def test_open_clip_gelu_needs_the_activation_named(self):
        tmp = self.tmp_path()
        published = checkpoints.write_open_clip(tmp)
        with self.assertRaisesRegex(ConversionError,
                                    "--format=open_clip_gelu"):
            quiet(published.path)
        teacher = quiet(published.path, "open_clip_gelu")
        self.assertEqual(teachers.metadata(teacher)["activation"], "gelu")
        x = checkpoints.random_pixels(6)
        self.assertPublishedParity(teacher.get_layer("backbone"), published,
                                   x)
        # QuickGELU on GELU weights converts without complaint and is
        # wrong: this is why the format must be named.
        self.assertGreater(self.rel_err(
            quiet(published.path, "clip_vit").get_layer("backbone")(x),
            published.reference(x)), 1e-3)
        # A training checkpoint: {"state_dict": {"module.visual...": ...}}.
        from safetensors.torch import load_file
        sd = load_file(str(published.path))
        torch.save({"epoch": 32, "state_dict": {f"module.{k}": v
                                                for k, v in sd.items()}},
                   tmp / "epoch_32.pt")
        teacher = quiet(tmp / "epoch_32.pt", "open_clip_gelu")
        self.assertPublishedParity(teacher.get_layer("backbone"), published,
                                   x)

    def test_parity_tool_on_a_checkpoint_and_an_image(self):
        """tools/parity.py: a user's check of a real file on a real image.
        Its main() runs in this process; the slow tier runs the tool as a
        program (tests/test_convert_simclr.py)."""
        tmp = self.tmp_path()
        published = checkpoints.write_clip_vit(tmp)
        out, net, pre = run_parity_tool_here(published.path, tmp,
                                             (60, 80, 3), seed=7)
        self.assertIn("family clip_vit, embedding 64, input 80x60 -> "
                      "224x224", out)
        self.assertLessEqual(net, 1e-4)
        self.assertLessEqual(pre, 1 / 255 / min(CLIP_STD) * 1.001)


def run_parity_tool_here(checkpoint, tmp_path, image_shape, seed=0):
    """``tools/parity.py --checkpoint --image`` on a random PNG of
    ``image_shape``, its main() in this process; (stdout, network rel
    err, preprocessing max), as ``TestCase.run_parity_tool`` reads them
    from the program."""
    import contextlib
    import io
    import re
    import sys
    from unittest import mock

    import tensorflow as tf

    from tools import parity
    img = np.random.default_rng(seed).integers(0, 256, image_shape,
                                               np.uint8)
    png = tmp_path / "photo.png"
    png.write_bytes(tf.io.encode_png(img).numpy())
    out = io.StringIO()
    with mock.patch.object(sys, "argv", ["parity.py",
                                         f"--checkpoint={checkpoint}",
                                         f"--image={png}"]), \
            contextlib.redirect_stdout(out):
        parity.main()
    text = out.getvalue()
    net = float(re.search(r"network:\s+rel err ([^,\s]+)", text)[1])
    pre = float(re.search(r"preprocessing: max abs ([^,\s]+)", text)[1])
    return text, net, pre
