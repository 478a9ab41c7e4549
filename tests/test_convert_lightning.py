"""ResNets inside training checkpoints: PyTorch Lightning ``.ckpt`` files as
solo-learn and LightlySSL write them, mmselfsup / mmpretrain BYOL files
(the full model and the extracted backbone), and DeepMind's BYOL pickle. Each is written in its
publisher's layout around a reference ResNet with random weights
(tools/reference/torch_resnet.py), converted, and compared end to end,
preprocessing included."""

import pathlib

import numpy as np
import pytest
import torch

from ega_tf import teachers
from ega_tf.core.constants import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, \
    IMAGENET_STD
from ega_tf.teachers import convert, resnet
from tests import checkpoints
from tests.checkpoints_ssl import (cifar_resnet18, lightly_byol,
                                   mmselfsup_byol, solo_learn_byol,
                                   write_byol_deepmind)
from tests.test_case import TestCase
from tools.reference.pil_pipeline import torchvision_eval


def uint8_images(seed, size):
    return np.clip(checkpoints.random_pixels(seed, n=3, size=size) * 60 + 128,
                   0, 255).astype(np.uint8)


class LightningTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.resnet18 = cifar_resnet18()

    def check_cifar_teacher(self, teacher, model):
        images = uint8_images(0, 32)
        x = ((images / 255.0 - np.array(CIFAR10_MEAN))
             / np.array(CIFAR10_STD)).astype(np.float32)
        with torch.no_grad():
            want = model.features(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
        self.assertParity(teacher(images).numpy(), want, 1e-4,
                          "solo-learn ResNet-18, CIFAR stem")

    def test_solo_learn_cifar_resnet18(self):
        path = self.tmp_path() / "byol-cifar100-3hc5ha-ep=999.ckpt"
        torch.save(solo_learn_byol(self.resnet18), path)
        out = self.tmp_path() / "solo.keras"
        self.assertSucceeded(self.run_cli(
            "convert_teacher", f"--checkpoint={path}", f"--out={out}"))
        teacher = teachers.load(str(out))
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["family"], meta["cifar_stem_padding"],
                          meta["embedding_dim"]), ("lightning_cifar", 2, 512))
        self.check_cifar_teacher(teacher, self.resnet18)
        # A file from before solo-learn's December 2021 rename (encoder.*).
        torch.save(solo_learn_byol(self.resnet18, legacy=True), path)
        self.check_cifar_teacher(convert.convert(str(path),
                                                 log=lambda s: None),
                                 self.resnet18)

    @pytest.mark.slow  # the tool's logic is tested fast on a CLIP file
    def test_parity_tool_on_a_solo_learn_file(self):
        from tests.test_convert_vit import run_parity_tool_here
        path = self.tmp_path() / "solo.ckpt"
        torch.save(solo_learn_byol(self.resnet18), path)
        out, net, pre = run_parity_tool_here(path, self.tmp_path(),
                                             (32, 32, 3))
        self.assertIn("family lightning_cifar, embedding 512", out)
        self.assertLessEqual(net, 1e-4)
        self.assertLessEqual(pre, 1e-5)

    def test_the_cifar_stem_padding_is_the_familys(self):
        """Padding 1 (another reading of a 3x3 stem) is another function."""
        path = self.tmp_path() / "solo.ckpt"
        torch.save(solo_learn_byol(self.resnet18), path)
        family, arch, kept = convert.load_backbone(str(path))
        arch["cifar_stem_padding"] = 1
        other = resnet.build(arch)
        resnet.port(other, kept, ignore=family.drop_heads)
        x = checkpoints.random_pixels(1, n=3, size=32)
        with torch.no_grad():
            want = self.resnet18.features(
                torch.tensor(x).permute(0, 3, 1, 2)).numpy()
        self.assertGreater(self.rel_err(other(x), want), 1e-2)

    def test_lightly_resnet_benchmark(self):
        model = checkpoints.small_resnet(seed=3)
        path = self.tmp_path() / "epoch=99-step=500400.ckpt"
        torch.save(lightly_byol(model), path)
        teacher = convert.convert(str(path), log=lambda s: None)
        self.assertEqual(teachers.metadata(teacher)["family"], "lightning")
        self.check_imagenet_teacher(teacher, model, "LightlySSL BYOL")

    def check_imagenet_teacher(self, teacher, model, label):
        images = uint8_images(1, 40)
        x = torchvision_eval(images, 256, 224, "bilinear", IMAGENET_MEAN,
                             IMAGENET_STD)
        self.assertPixelsMatch(teacher.get_layer("preprocess")(images), x,
                               IMAGENET_STD, label)
        with torch.no_grad():
            want = model.features(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
        self.assertParity(teacher.get_layer("backbone")(x).numpy(), want,
                          1e-4, label)

    def test_mmselfsup_byol_files(self):
        model = checkpoints.small_resnet(seed=4)
        for version, family in (("1.x", "mmselfsup"), ("0.x", "mmselfsup"),
                                ("backbone", "mmselfsup_backbone")):
            path = self.tmp_path() / f"byol_resnet50_{version}.pth"
            torch.save(mmselfsup_byol(model, version), path)
            teacher = convert.convert(str(path), log=lambda s: None)
            self.assertEqual(teachers.metadata(teacher)["family"], family)
            self.check_imagenet_teacher(teacher, model, f"BYOL {version}")

    def test_an_unknown_module_in_a_lightning_file_is_named(self):
        ckpt = solo_learn_byol(self.resnet18)
        ckpt["state_dict"]["mystery_head.weight"] = torch.zeros(3)
        path = self.tmp_path() / "odd.ckpt"
        torch.save(ckpt, path)
        with self.assertRaisesRegex(Exception, "mystery_head.weight"):
            convert.convert(str(path), log=lambda s: None)


class ByolDeepMindTest(TestCase):

    def test_release_pickle_matches_haikus_network(self):
        import sys
        published = write_byol_deepmind(self.tmp_path())
        with self.assertRaisesRegex(Exception, "add --allow_pickle"):
            convert.convert(str(published.path), log=lambda s: None)
        teacher = convert.convert(str(published.path), allow_pickle=True,
                                  log=lambda s: None)
        self.assertFalse({"byol", "haiku", "optax", "jax"} & set(
            sys.modules))  # named by the file, never imported
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["family"], meta["embedding_dim"],
                          meta["input_resolution"]),
                         ("byol_deepmind", 2048, 224))
        for size in (224, 64):  # TF's "SAME" padding at even and odd maps
            x = checkpoints.random_pixels(9, n=2, size=size)
            self.assertParity(teacher.get_layer("backbone")(x).numpy(),
                              published.reference(x), 1e-4,
                              f"BYOL (Haiku) at {size}")

    def test_evaluation_crop_truncates(self):
        """BYOL crops int(0.875 * shorter side) pixels (SimCLR rounds):
        at 33 px that is 28, not 29."""
        import tensorflow as tf
        published = write_byol_deepmind(self.tmp_path())
        teacher = convert.convert(str(published.path), allow_pickle=True,
                                  log=lambda s: None)
        images = uint8_images(2, 33)[:, :, :]
        side, top = 28, (33 - 28 + 1) // 2
        crop = tf.cast(images[:, top:top + side, top:top + side], tf.float32)
        want = tf.clip_by_value(tf.image.resize(crop, (224, 224), "bicubic")
                                / 255.0, 0.0, 1.0)
        want = (want - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
        self.assertAllClose(teacher.get_layer("preprocess")(images), want,
                            atol=1e-5)

    def test_a_pickle_cannot_run_code(self):
        import os
        import pickle

        marker = self.tmp_path() / "ran"

        class Payload:
            def __reduce__(self):
                return os.system, (f"touch {marker}",)
        path = self.tmp_path() / "evil.pkl"
        path.write_bytes(pickle.dumps({"experiment_state": Payload()}))
        with self.assertRaisesRegex(Exception, "not DeepMind BYOL"):
            convert.convert(str(path), allow_pickle=True)
        self.assertFalse(marker.exists())


@pytest.mark.slow  # the full ResNet-50 and a training run in its own process
class FullSizeTest(TestCase):

    def test_lightly_resnet50_converts_and_trains_a_student(self):
        tmp = self.tmp_path()
        model = checkpoints.resnet(seed=5, size=224)
        path = pathlib.Path(tmp) / "epoch=99-step=500400.ckpt"
        torch.save(lightly_byol(model), path)
        out = tmp / "lightly.keras"
        self.assertSucceeded(self.run_subprocess([
            "-m", "ega_tf.convert_teacher", f"--checkpoint={path}",
            f"--out={out}"]))
        teacher = teachers.load(str(out))
        LightningTest.check_imagenet_teacher(self, teacher, model,
                                             "LightlySSL ResNet-50")
        byol = write_byol_deepmind(tmp, blocks=(3, 4, 6, 3))
        x = checkpoints.random_pixels(10, n=2, size=224)
        self.assertParity(convert.convert(
            str(byol.path), allow_pickle=True, log=lambda s: None)
            .get_layer("backbone")(x).numpy(), byol.reference(x), 1e-4,
            "BYOL (Haiku) ResNet-50")
        solo = tmp / "solo.ckpt"
        torch.save(solo_learn_byol(cifar_resnet18()), solo)
        mm = tmp / "byol_mm.pth"
        torch.save(mmselfsup_byol(checkpoints.small_resnet(seed=4), "1.x"),
                   mm)
        (tmp / "small").mkdir()
        small_byol = write_byol_deepmind(tmp / "small")
        for name, source, *flags in (
                ("solo", solo), ("mmselfsup", mm),
                ("byol", small_byol.path, "--allow_pickle")):
            self.assertSucceeded(self.run_subprocess([
                "-m", "ega_tf.convert_teacher", f"--checkpoint={source}",
                f"--out={tmp / name}.keras", *flags]))
        for name in ("lightly", "solo", "mmselfsup", "byol"):
            self.assertSucceeded(self.run_subprocess([
                "-m", "ega_tf.train", "--dataset=digits",
                f"--teacher={tmp / name}.keras", f"--workdir={tmp / name}",
                "--config.epochs=1", "--config.data.image_size=16"]))
