"""RepDistiller's supervised CIFAR teachers: a checkpoint in its published
layout (``{'epoch', 'model': state_dict, 'accuracy'}``, written here from a
PyTorch network with its module names) converts into a teacher whose
``backbone`` gives the PyTorch network's pooled feature and whose
``classifier`` gives its logits; the logit methods then read those logits."""

import json

import numpy as np
import pytest
import torch
from absl.testing import parameterized

from ega_tf import teachers
from ega_tf.core.constants import CIFAR100_MEAN, CIFAR100_STD
from ega_tf.core.errors import ConversionError, UserError
from ega_tf.teachers import convert, teacher_file
from tests.test_case import TestCase
from tools.reference import torch_repdistiller


def write_checkpoint(directory, name, num_classes=100, seed=0):
    """(path, the PyTorch network) of a RepDistiller-layout checkpoint."""
    torch.manual_seed(seed)
    model = torch_repdistiller.randomized(
        torch_repdistiller.create(name, num_classes), seed)
    path = directory / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": model.state_dict(),
                "accuracy": 79.42, "optimizer": {"param_groups": []}}, path)
    return path, model


def torch_outputs(model, images):
    """(pooled feature, logits) of the PyTorch network on uint8 NHWC
    images, normalised as RepDistiller's CIFAR-100 loader does."""
    x = (images / 255.0 - np.array(CIFAR100_MEAN)) / np.array(CIFAR100_STD)
    with torch.no_grad():
        f, z = model(torch.tensor(x, dtype=torch.float32).permute(0, 3, 1, 2))
    return f.numpy(), z.numpy()


def images(seed=0, n=3):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3),
                                                np.uint8)


class RepDistillerTeacherTest(TestCase):

    def check_parity(self, name, num_classes=100):
        path, model = write_checkpoint(self.tmp_path(), name, num_classes)
        teacher = convert.convert(str(path), log=lambda s: None)
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["family"], meta["network"],
                          meta["num_classes"]),
                         ("repdistiller", name, num_classes))
        x = images()
        want_f, want_z = torch_outputs(model, x)
        features = teacher(x).numpy()
        self.assertLess(self.rel_err(features, want_f), 1e-4, name)
        backbone = teacher.get_layer("backbone")
        normalised = teacher_file.preprocess_layer(teacher)(x)
        self.assertLess(self.rel_err(backbone(normalised), want_f), 1e-4)
        logits = teacher.get_layer("classifier")(features).numpy()
        self.assertLess(self.rel_err(logits, want_z), 1e-4, name)
        return teacher

    @parameterized.parameters("resnet8", "wrn_16_2", "vgg8")
    def test_each_layout_converts_with_parity(self, name):
        self.check_parity(name)

    @parameterized.parameters("resnet32x4", "resnet56", "resnet110",
                              "wrn_40_2", "vgg13", "ResNet50")
    @pytest.mark.slow  # the published teachers at full size; the fast
    # tier converts each layout at a small depth and resnet8x4
    def test_published_teachers_convert_with_parity(self, name):
        self.check_parity(name)

    def test_resnet8x4_converts_from_the_command_line(self):
        """convert_teacher writes the file; Keras's own loader reads it, and
        it gives the PyTorch network's features and logits. (Read in a
        fresh process that imported only ega_tf, classifier included:
        tests/test_teacher_files.py, for this family as for the others.)"""
        import keras
        tmp = self.tmp_path()
        path, model = write_checkpoint(tmp, "resnet8x4")
        r = self.run_cli("convert_teacher", f"--checkpoint={path}",
                         f"--out={tmp / 't.keras'}")
        self.assertSucceeded(r)
        self.assertIn("repdistiller_resnet8x4", r.stdout)
        t = keras.saving.load_model(str(tmp / "t.keras"))
        x = images(1)
        f = np.asarray(t(x))
        z = np.asarray(t.get_layer("classifier")(f))
        want_f, want_z = torch_outputs(model, x)
        self.assertLess(self.rel_err(f, want_f), 1e-4)
        self.assertLess(self.rel_err(z, want_z), 1e-4)

    def test_a_layout_the_zoo_does_not_build_is_named(self):
        tmp = self.tmp_path()
        torch.save({"model": {"conv1.weight": torch.zeros(24, 3, 3, 3),
                              "layer1.0.conv1.weight": torch.zeros(
                                  24, 24, 3, 3),
                              "layer1.0.conv2.weight": torch.zeros(
                                  24, 24, 3, 3),
                              "layer2.0.conv2.weight": torch.zeros(
                                  48, 24, 3, 3),
                              "layer3.0.conv2.weight": torch.zeros(
                                  96, 48, 3, 3),
                              "fc.weight": torch.zeros(10, 96)}},
                   tmp / "odd.pth")
        with self.assertRaisesRegex(ConversionError, "CIFAR ResNet of "
                                    r"widths \(24, 24, 48, 96\)"):
            convert.convert(str(tmp / "odd.pth"), log=lambda s: None)


class TeacherLogitsTest(TestCase):
    """The logit methods read a supervised teacher's own logits."""

    def test_kd_reads_the_teachers_own_classifier(self):
        import keras

        from ega_tf import students
        from ega_tf.students.head import build_student
        from ega_tf.training.distiller import Distiller
        from tests.references import np_kd
        path, model = write_checkpoint(self.tmp_path(), "resnet8", 10)
        teacher = convert.convert(str(path), log=lambda s: None)
        keras.utils.set_random_seed(0)
        student = build_student(students.create("resnet8"), 10, 16)
        x = images(2, n=6)
        y = np.arange(6) % 10
        own = Distiller(student, teacher, 10, 16, method="kd",
                        teacher_logits="classifier")
        head = Distiller(student, teacher, 10, 16, method="kd",
                         teacher_logits="head")
        self.assertIs(Distiller(student, teacher, 10, 16, method="kd")
                      .own_classifier, teacher.get_layer("classifier"))
        z_s = student(x)["logits"].numpy()
        _, want_z = torch_outputs(model, x)
        data = ({"student": x, "teacher": x}, y)
        for distiller, z_t in ((own, want_z), (head, None)):
            terms = distiller.test_step(data)
            if z_t is None:  # the online head's logits, read back
                feats = teacher(x)
                z_t = distiller.teacher_classifier(
                    distiller.teacher_embed(feats)).numpy()
            self.assertAllClose(float(terms["kd"]), np_kd(z_t, z_s, 4.0),
                                rtol=1e-4)
        with self.assertRaisesRegex(UserError, "a classifier for 10 "
                                    "classes, and the data set has 100"):
            Distiller(student, teacher, 100, 16, method="kd",
                      teacher_logits="classifier")

    def test_a_run_says_which_logits_its_methods_read(self):
        """One epoch on a tiny folder of three classes, with a teacher
        trained on three."""
        from ega_tf import config as config_lib
        from ega_tf.training import loop
        from tools.synthetic import write_image_folder
        tmp = self.tmp_path()
        path, _ = write_checkpoint(tmp, "resnet8", 3)
        teacher_file.save(convert.convert(str(path), log=lambda s: None),
                          str(tmp / "t.keras"))
        self.assertEqual(write_image_folder(tmp / "images", 4, 2), 18)
        c = config_lib.default_config("smoke")
        c.dataset = f"folder:{tmp / 'images'}"
        c.student, c.distill = "resnet8", "kd"
        c.teacher, c.epochs, c.export = str(tmp / "t.keras"), 1, False
        c.batch_size = 6
        with self.assertLogs("absl", "INFO") as logs:
            results = loop.run(config_lib.resolve(c), str(tmp / "w"),
                               verbose=0)
        self.assertIn("from its own classifier (3 classes)",
                      " ".join(logs.output))
        self.assertEqual(results["teacher_logits"], "classifier")
        stored = json.loads((tmp / "w" / "results.json").read_text())
        self.assertEqual(stored["teacher_logits"], "classifier")
        self.assertTrue(np.isfinite(results["test_top1_last"]))
        # head: asked for, or when the classifier is for other classes.
        teacher = teacher_file.load(str(tmp / "t.keras"))
        source = teacher_file.logits_source
        self.assertEqual(source(teacher, 3, "head")[0], "head")
        chosen, why = source(teacher, 7, "auto")
        self.assertEqual(chosen, "head")
        self.assertIn("online teacher head (its own classifier has 3 "
                      "classes, the data 7)", why)
        with self.assertRaisesRegex(UserError, "a classifier for 3 "
                                    "classes, and the data set has 7"):
            source(teacher, 7, "classifier")
