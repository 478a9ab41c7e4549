"""Checkpoint conversion of the torchvision-layout ResNet families and
OpenAI CLIP's ModifiedResNet: each file in its published layout, converted
and compared with the PyTorch reference on the same images."""

import numpy as np
import pytest
import torch
from absl.testing import parameterized

from ega_tf import teachers
from ega_tf.core.constants import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN,
                                   IMAGENET_STD)
from ega_tf.core.errors import ConversionError
from ega_tf.teachers import checkpoint_io, convert
from tests import checkpoints
from tests.test_case import TestCase
from tools.reference.pil_pipeline import torchvision_eval


def quiet(published, **kw):
    return convert.convert(str(published.path) if hasattr(
        published, "path") else str(published), log=lambda s: None,
        **(published.convert_args() if hasattr(published, "path") else {}),
        **kw)


def pil_preprocess(images_uint8, mean, std, shorter=256, crop=224,
                   resample="bilinear"):
    """torchvision's evaluation transform on PIL images, as NHWC."""
    return torchvision_eval(images_uint8, shorter, crop, resample, mean, std)


class ResNetFamiliesTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.model = checkpoints.small_resnet(seed=1)

    @parameterized.parameters(*checkpoints.RESNET_FAMILIES)
    def test_published_layout_converts_with_parity(self, family):
        published = checkpoints.write_resnet(family, self.tmp_path(),
                                             self.model)
        teacher = quiet(published)
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["family"], meta["embedding_dim"]),
                         (family, 2048))
        x = checkpoints.random_pixels(0, size=64)
        self.assertPublishedParity(teacher.get_layer("backbone"), published,
                                   x)

    @pytest.mark.slow  # the full network; the fast tier converts each
    # ResNet family's layout at a small depth
    def test_resnet50_parity_with_preprocessing(self):
        """Full ResNet-50 in the MoCo v2 layout; preprocessing and network
        differences measured separately, then end to end."""
        model = checkpoints.resnet(seed=2, size=224)
        published = checkpoints.write_resnet("moco", self.tmp_path(), model)
        teacher = quiet(published)
        images = np.clip(checkpoints.random_pixels(1, size=32) * 60 + 128,
                         0, 255).astype(np.uint8)
        ref_pixels = pil_preprocess(images, IMAGENET_MEAN, IMAGENET_STD)
        self.assertPixelsMatch(teacher.get_layer("preprocess")(images),
                               ref_pixels, IMAGENET_STD, "MoCo vs PIL")
        self.assertPublishedParity(teacher.get_layer("backbone"), published,
                                   ref_pixels)
        self.assertParity(teacher(images).numpy(),
                          published.reference64(ref_pixels), 1e-4,
                          "ResNet-50 end to end",
                          source=published.reference(ref_pixels))
        self.run_model_saving_test(teacher, images, teachers.save,
                                   teachers.load,
                                   str(self.tmp_path() / "moco.keras"))

    def check_wide_resnet(self, width):
        """A bottleneck ResNet whose widths are not keras-hub's (built by
        ega_tf, keras-hub's ResNet requiring 64 filters) in SwAV's layout:
        widths are read off the file, and the embedding is 32 x width."""
        model = checkpoints.small_resnet(seed=7, width=width)
        published = checkpoints.write_resnet("swav", self.tmp_path(), model)
        teacher = quiet(published)
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["family"], meta["embedding_dim"]),
                         ("swav", 32 * width))
        self.assertEqual(teacher.get_layer("preprocess").std, (0.228, 0.224,
                                                               0.225))
        x = checkpoints.random_pixels(3, size=64)
        self.assertPublishedParity(teacher.get_layer("backbone"), published,
                                   x)

    def test_resnet_of_other_widths_converts_with_parity(self):
        """SwAV's wide ResNets (w2, w4, w5) scale every width. Any width
        but 64 takes the same path (the widths read off the file, ega_tf's
        own network); a half-width one is the cheapest, and the 2x-wide
        one is converted in the slow tier."""
        self.check_wide_resnet(32)

    @pytest.mark.slow  # 32 M parameters; the fast tier converts width 32
    def test_wide_swav_resnet_converts_with_parity(self):
        """SwAV's RN50-w2 widths (128 filters in the stem) at a small
        depth."""
        self.check_wide_resnet(128)

    def test_wrong_architecture_lists_every_mismatch(self):
        sd = checkpoints.resnet_layout("torchvision", self.model)
        sd["layer2.0.conv2.weight"] = torch.zeros(128, 128, 5, 5)
        sd["extra.thing"] = torch.zeros(3)
        del sd["layer3.0.bn1.running_var"]
        path = self.tmp_path() / "bad.pth"
        torch.save(sd, path)
        with self.assertRaises(ConversionError) as e:
            quiet(path)
        msg = str(e.exception)
        for part in ("layer2.0.conv2.weight", "(5, 5, 128, 128)",
                     "layer3.0.bn1.running_var", "extra.thing"):
            self.assertIn(part, msg)

    def test_stray_keys_outside_the_prefix_are_refused(self):
        ck = checkpoints.resnet_layout("moco", self.model)
        ck["state_dict"]["module.something_else.weight"] = torch.zeros(2)
        path = self.tmp_path() / "m.pth.tar"
        torch.save(ck, path)
        with self.assertRaisesRegex(ConversionError, "something_else"):
            quiet(path)

    def test_python_objects_need_allow_pickle(self):
        published = checkpoints.write_resnet("dino", self.tmp_path(),
                                             self.model)
        with self.assertRaisesRegex(ConversionError,
                                    "--allow_pickle runs code stored in"):
            quiet(str(published.path))
        teacher = quiet(published)  # allow_pickle=True
        self.assertEqual(teachers.metadata(teacher)["family"], "dino")

    def test_text_and_truncated_files_are_not_called_pickles(self):
        tmp = self.tmp_path()
        text = tmp / "notes.pth"
        text.write_text("these are my notes, not weights")
        with self.assertRaisesRegex(ConversionError, "is not a checkpoint"):
            quiet(text)
        good = checkpoints.write_resnet("swav", tmp, self.model).path
        truncated = tmp / "trunc.pth"
        truncated.write_bytes(good.read_bytes()[:len(good.read_bytes())
                                                // 2])
        with self.assertRaises(ConversionError) as e:
            quiet(truncated)
        self.assertRegex(str(e.exception), "Could not read|not a checkpoint")
        self.assertNotIn("--allow_pickle", str(e.exception))


class ClipResNetTest(TestCase):
    """OpenAI CLIP's ModifiedResNet. The fast tier converts RN50's layout
    (width 64, 32 heads, 1024-d, 224 px) at one block per stage, and
    RN50x4's shape at a small resolution; the slow tier the full RN50 and
    RN50x4's shape at its 288 px."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        # RN50's TorchScript file with one block per stage: what the parity
        # and the preprocessing tests read (neither changes it for good).
        cls.published = checkpoints.write_clip_resnet(
            cls.class_tempdir(), checkpoints.clip_resnet(
                seed=5, layers=(1, 1, 1, 1)))
        cls.teacher = quiet(cls.published)

    def check_torchscript_parity(self, published, teacher):
        """OpenAI's RN50 as a TorchScript archive with a text tower. A random
        RN50's embedding is nearly the same for every image, so the test
        also asserts the image-dependent part, and shows that a wrong layer
        in the trunk fails it."""
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["family"], meta["embedding_dim"],
                          meta["heads"], meta["resolution"]),
                         ("clip", 1024, 32, 224))
        x = checkpoints.random_pixels(4)
        want = published.reference64(x)
        backbone = teacher.get_layer("backbone")
        self.assertPublishedParity(backbone, published, x)
        # Negative control: one 3x3 conv deep in the trunk off by 2%
        # (put back when the test ends).
        kernel = backbone.get_layer("layer3_0_conv2").kernel
        original = kernel.numpy()
        self.addCleanup(kernel.assign, original)
        kernel.assign(original * 1.02)
        got = backbone(x).numpy()
        plain = self.rel_err(got, want)
        centred = self.rel_err(got - got.mean(0), want - want.mean(0))
        print(f"CLIP RN50 with a wrong trunk layer: rel err {plain:.2e}, "
              f"image-dependent {centred:.2e}")
        self.assertGreater(centred, 1e-3)

    def test_rn50_layout_torchscript_file_parity(self):
        self.check_torchscript_parity(self.published, self.teacher)

    @pytest.mark.slow  # the full network; the fast tier converts RN50's
    # layout with one block per stage
    def test_rn50_torchscript_file_parity(self):
        visual = checkpoints.clip_resnet(seed=5)
        published = checkpoints.write_clip_resnet(self.tmp_path(), visual)
        self.check_torchscript_parity(published, quiet(published))

    def test_rn50_preprocessing_matches_pil_bicubic(self):
        """Pillow's bicubic to 224 then CLIP's statistics, as CLIP's own
        transform does on PIL images."""
        img = np.random.default_rng(5).integers(0, 256, (2, 48, 40, 3),
                                                np.uint8)
        self.assertPixelsMatch(
            self.teacher.get_layer("preprocess")(img),
            pil_preprocess(img, CLIP_MEAN, CLIP_STD, 224, 224, "bicubic"),
            CLIP_STD, "CLIP vs PIL bicubic")

    def check_rn50x4_shape(self, resolution):
        """RN50x4's shape (width 80, 40 heads, 640-d output, its own
        resolution read off the positional embedding) as a state dict goes
        through the same code; fewer blocks keep the test small."""
        visual = checkpoints.clip_resnet(seed=8, layers=(1, 1, 1, 1),
                                         out_dim=640, width=80,
                                         resolution=resolution)
        published = checkpoints.write_clip_resnet(
            self.tmp_path(), visual, torchscript=False, name="RN50x4")
        teacher = quiet(published)
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["width"], meta["heads"], meta["resolution"],
                          meta["embedding_dim"]), (80, 40, resolution, 640))
        x = checkpoints.random_pixels(6, size=resolution)
        self.assertPublishedParity(teacher.get_layer("backbone"), published,
                                   x)

    def test_rn50x4_shaped_state_dict_at_96_px_converts_with_parity(self):
        self.check_rn50x4_shape(96)

    @pytest.mark.slow  # RN50x4's 288 px; the fast tier takes 96
    def test_rn50x4_shaped_state_dict_converts_with_parity(self):
        self.check_rn50x4_shape(288)

    def test_state_dict_without_visual_parts_fails(self):
        from tools.reference.torch_clip import CLIPStandIn, ModifiedResNet
        sd = CLIPStandIn(ModifiedResNet(
            layers=(1, 1, 1, 1), out_dim=64, width=16,
            resolution=64)).state_dict()
        del sd["visual.attnpool.c_proj.bias"]
        sd["visual.extra.weight"] = torch.zeros(2)
        path = self.tmp_path() / "clip_sd.pt"
        torch.save(sd, path)
        with self.assertRaises(ConversionError) as e:
            quiet(path)
        self.assertIn("attnpool.c_proj.bias", str(e.exception))
        self.assertIn("extra.weight", str(e.exception))


class CacheTest(TestCase):

    def test_raw_checkpoint_is_converted_once_and_cached(self):
        tmp = self.tmp_path()
        self.enter_context(_env("EGA_TF_CACHE", str(tmp / "cache")))
        # The smallest family's file: what is tested is the cache.
        published = checkpoints.write_repdistiller(tmp)
        first = teachers.load_or_convert(str(published.path))
        cached = list((tmp / "cache").iterdir())
        self.assertLen(cached, 1)
        self.assertEqual(cached[0].name,
                         checkpoint_io.sha256(published.path) + ".keras")
        stamp = cached[0].stat().st_mtime_ns
        again = teachers.load_or_convert(str(published.path))
        self.assertEqual(cached[0].stat().st_mtime_ns, stamp)  # not redone
        x = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3),
                                              np.uint8)
        np.testing.assert_allclose(again(x).numpy(), first(x).numpy(),
                                   rtol=1e-6)


class _env:
    """Sets an environment variable for the duration of a test."""

    def __init__(self, name, value):
        self.name, self.value = name, value

    def __enter__(self):
        import os
        self.old = os.environ.get(self.name)
        os.environ[self.name] = self.value

    def __exit__(self, *exc):
        import os
        if self.old is None:
            os.environ.pop(self.name, None)
        else:
            os.environ[self.name] = self.old

