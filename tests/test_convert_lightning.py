"""ResNets inside training checkpoints: PyTorch Lightning ``.ckpt`` files as
solo-learn and LightlySSL write them, and mmselfsup / mmpretrain BYOL files
(the full model and the extracted backbone). Each is written in its
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
                                   mmselfsup_byol, solo_learn_byol)
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
        for legacy in (False, True):
            path = self.tmp_path() / ("byol-cifar100-3hc5ha-ep=999.ckpt")
            torch.save(solo_learn_byol(self.resnet18, legacy), path)
            out = self.tmp_path() / "solo.keras"
            self.assertSucceeded(self.run_cli(
                "convert_teacher", f"--checkpoint={path}", f"--out={out}"))
            teacher = teachers.load(str(out))
            meta = teachers.metadata(teacher)
            self.assertEqual((meta["family"], meta["cifar_stem_padding"],
                              meta["embedding_dim"]),
                             ("lightning_cifar", 2, 512))
            self.check_cifar_teacher(teacher, self.resnet18)

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
        solo = tmp / "solo.ckpt"
        torch.save(solo_learn_byol(cifar_resnet18()), solo)
        for name, source in (("lightly", path), ("solo", solo)):
            self.assertSucceeded(self.run_subprocess([
                "-m", "ega_tf.train", "--dataset=digits",
                f"--teacher={source}", f"--workdir={tmp / name}",
                "--config.epochs=1", "--config.data.image_size=16"]))
