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
from tests.test_case import TestCase
from tools.reference.pil_pipeline import torchvision_eval


def _bn1d(prefix, n):
    return {f"{prefix}.weight": torch.ones(n), f"{prefix}.bias": torch.zeros(n),
            f"{prefix}.running_mean": torch.zeros(n),
            f"{prefix}.running_var": torch.ones(n),
            f"{prefix}.num_batches_tracked": torch.tensor(7)}


def _linear(prefix, a, b, bias=True):
    out = {f"{prefix}.weight": torch.randn(b, a)}
    if bias:
        out[f"{prefix}.bias"] = torch.randn(b)
    return out


def _lightning(state, version, **extra):
    """What Lightning's ``trainer.save_checkpoint`` writes around a
    module's state dict."""
    return {"epoch": 999, "global_step": 97000,
            "pytorch-lightning_version": version, "state_dict": state,
            "loops": {"fit_loop": {"state_dict": {}, "epoch_progress": {
                "total": {"ready": 1000, "completed": 999}}}},
            "callbacks": {}, "optimizer_states": [
                {"state": {}, "param_groups": [{"lr": 0.3, "params": [0]}]}],
            "lr_schedulers": [{"last_epoch": 999, "base_lrs": [0.3]}],
            **extra}


def solo_learn_byol(model, legacy=False):
    """solo-learn's BYOL on CIFAR (solo/methods/byol.py): backbone,
    projector, momentum copies, predictor, online classifier; files before
    its December 2021 rename say ``encoder``."""
    sd = {k: v for k, v in model.state_dict().items()
          if not k.startswith("fc.")}
    width = model.fc.in_features
    proj = {**_linear("projector.0", width, 64), **_bn1d("projector.1", 64),
            **_linear("projector.3", 64, 16)}
    name, momentum = (("encoder", "momentum_encoder") if legacy
                      else ("backbone", "momentum_backbone"))
    state = {**{f"{name}.{k}": v for k, v in sd.items()}, **proj,
             **{f"{momentum}.{k}": v.clone() for k, v in sd.items()},
             **{f"momentum_{k}": v.clone() for k, v in proj.items()},
             **_linear("predictor.0", 16, 64), **_bn1d("predictor.1", 64),
             **_linear("predictor.3", 64, 16),
             **_linear("classifier", width, 100)}
    return _lightning(state, "1.5.3" if legacy else "2.0.9")


def lightly_byol(model):
    """LightlySSL's ImageNet ResNet-50 BYOL benchmark
    (benchmarks/imagenet/resnet50/byol.py): online backbone and heads, the
    EMA teacher, the online classifier, Lightning's callbacks and
    hyper-parameters, the 16-bit scaler."""
    sd = {k: v for k, v in model.state_dict().items()
          if not k.startswith("fc.")}
    width = model.fc.in_features
    head = {**_linear("layers.0", width, 64, bias=False),
            **_bn1d("layers.1", 64), **_linear("layers.3", 64, 16)}
    state = {**{f"backbone.{k}": v for k, v in sd.items()},
             **{f"projection_head.{k}": v for k, v in head.items()},
             **{f"prediction_head.{k}": v.clone() for k, v in head.items()},
             **{f"teacher_backbone.{k}": v.clone() for k, v in sd.items()},
             **{f"teacher_projection_head.{k}": v.clone()
                for k, v in head.items()},
             **_linear("online_classifier.classification_head", width, 1000)}
    return _lightning(
        state, "2.1.2", hparams_name="kwargs",
        hyper_parameters={"batch_size_per_device": 128, "num_classes": 1000},
        MixedPrecision={"scale": 65536.0, "growth_factor": 2.0,
                        "backoff_factor": 0.5, "growth_interval": 2000,
                        "_growth_tracker": 10})


def mmselfsup_byol(model, version):
    """mmselfsup's BYOL: ``1.x`` (mmpretrain: backbone, neck, head,
    target_net.module.*), ``0.x`` (online_net.0/1 repeating backbone and
    neck, target_net.0/1), or ``backbone`` (its extraction tool's
    output)."""
    sd = {k: v for k, v in model.state_dict().items()
          if not k.startswith("fc.")}
    if version == "backbone":
        return {"state_dict": sd, "author": "MMSelfSup"}
    width = model.fc.in_features
    neck = {**_linear("fc0", width, 64), **_bn1d("bn0", 64),
            **_linear("fc1", 64, 16)}
    head = {f"predictor.{k}": v for k, v in {
        **_linear("fc0", 16, 64), **_bn1d("bn0", 64),
        **_linear("fc1", 64, 16)}.items()}
    state = {**{f"backbone.{k}": v for k, v in sd.items()},
             **{f"neck.{k}": v for k, v in neck.items()},
             **{f"head.{k}": v for k, v in head.items()}}
    if version == "1.x":
        state.update({f"target_net.module.0.{k}": v.clone()
                      for k, v in sd.items()})
        state.update({f"target_net.module.1.{k}": v.clone()
                      for k, v in neck.items()})
        state["target_net.steps"] = torch.tensor([50000])
    else:
        for i, part in enumerate((sd, neck)):
            state.update({f"online_net.{i}.{k}": v for k, v in part.items()})
            state.update({f"target_net.{i}.{k}": v.clone()
                          for k, v in part.items()})
    return {"meta": {"epoch": 200, "iter": 1000000, "seed": 0,
                     "mmengine_version": "0.1.0", "time": "20220825_1400",
                     "dataset_meta": {"classes": ["tench", "goldfish"]}},
            "state_dict": state}


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


def cifar_resnet18(seed=0):
    """solo-learn's CIFAR ResNet-18 (3x3 stem, padding 2, no max-pool)."""
    from tools.reference.torch_resnet import ResNet, randomized
    torch.manual_seed(seed)
    model = randomized(ResNet(blocks=(2, 2, 2, 2), bottleneck=False,
                              cifar_stem_padding=2, num_classes=100), seed)
    return checkpoints.trained_like(model, 32, forward=model.features)


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
