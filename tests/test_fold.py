"""Folding the frozen teacher's BatchNorm into its convolutions
(``teachers/fold.py``): the folded network computes the unfolded one's
features to float32 rounding; only the pairs that fold are folded; training
loads the teacher folded unless told not to, and its file is untouched."""

import keras
import numpy as np
import tensorflow as tf

from ega_tf import config as config_lib
from ega_tf import students, teachers
from ega_tf.teachers import fold
from ega_tf.training import build
from tests.test_case import TestCase, pixel_teacher


def randomise_batchnorm(model, seed=0):
    """Moving statistics and affine parameters far from the identity, so
    a fold that got any of them wrong shows."""
    rng = np.random.default_rng(seed)
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, c))
            layer.moving_variance.assign(rng.uniform(0.2, 3.0, c))
            if layer.scale:
                layer.gamma.assign(rng.uniform(0.3, 2.0, c))
            if layer.center:
                layer.beta.assign(rng.normal(0, 0.5, c))


def mixed_network():
    """Conv2D (no bias) -> BN; DepthwiseConv2D (multiplier 2, with bias)
    -> BN (no scale); a Conv2D whose output also feeds a second branch
    (must not fold); BN after an addition (must not fold)."""
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="c1")(inp)
    x = keras.layers.BatchNormalization(name="b1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="d2")(x)
    x = keras.layers.BatchNormalization(scale=False, name="b2")(x)
    y = keras.layers.Conv2D(16, 1, name="c3")(x)
    z = keras.layers.BatchNormalization(name="b3")(y)
    z = keras.layers.Add()([z, y])  # c3's output read twice
    z = keras.layers.BatchNormalization(name="b4")(keras.layers.Add()(
        [z, x]))
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(z),
                       name="backbone")


class FoldTest(TestCase):

    def assertSameFeatures(self, a, b, x, rtol=1e-5):
        got = np.asarray(b(x, training=False), np.float64)
        want = np.asarray(a(x, training=False), np.float64)
        self.assertLess(np.abs(got - want).max() / np.abs(want).max(), rtol)

    def test_folds_exactly_the_foldable_pairs(self):
        keras.utils.set_random_seed(0)
        net = mixed_network()
        randomise_batchnorm(net)
        pairs = [(c.name, b.name) for c, b in fold.foldable_pairs(net)]
        self.assertEqual(pairs, [("c1", "b1"), ("d2", "b2")])
        folded, count = fold.fold_batchnorm(net)
        self.assertEqual(count, 2)
        names = {type(layer).__name__ for layer in folded.layers}
        self.assertIn("FoldedBatchNorm", names)
        kept = [layer.name for layer in folded.layers if isinstance(
            layer, keras.layers.BatchNormalization)]
        self.assertEqual(kept, ["b3", "b4"])
        x = np.random.default_rng(1).normal(size=(4, 12, 12, 3)).astype(
            "float32")
        self.assertSameFeatures(net, folded, x)

    def test_folded_weights_against_float64(self):
        keras.utils.set_random_seed(0)
        net = mixed_network()
        randomise_batchnorm(net)
        conv, bn = net.get_layer("d2"), net.get_layer("b2")
        kernel, bias = fold.folded_weights(conv, bn)
        scale = 1 / np.sqrt(np.asarray(bn.moving_variance, np.float64)
                            + bn.epsilon)
        k = np.asarray(conv.kernel, np.float64)  # [3, 3, 8, 2]
        want = k * scale.reshape(8, 2)
        np.testing.assert_allclose(kernel, want, rtol=1e-6)
        np.testing.assert_allclose(bias, (np.asarray(conv.bias, np.float64)
                                          - np.asarray(bn.moving_mean))
                                   * scale + np.asarray(bn.beta),
                                   rtol=1e-6, atol=1e-7)

    def test_a_zoo_teacher_folds_every_batchnorm(self):
        keras.utils.set_random_seed(0)
        backbone = students.create("resnet8x4", input_shape=(32, 32, 3))
        backbone.name = "backbone"
        randomise_batchnorm(backbone)
        teacher = teachers.assemble(backbone, teachers.TeacherPreprocess())
        folded, count = fold.fold_batchnorm(teacher)
        bns = [layer for layer in backbone._flatten_layers()
               if isinstance(layer, keras.layers.BatchNormalization)]
        self.assertEqual(count, len(bns))
        x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3),
                                              np.uint8)
        self.assertSameFeatures(teacher, folded, x)
        forward = tf.function(
            lambda images, training: folded(images, training=training))
        self.assertSameFeatures(teacher, forward, x)

    def test_training_loads_the_teacher_folded_unless_told_not_to(self):
        tmp = self.tmp_path()
        path = pixel_teacher(tmp / "teacher.keras")
        keras.utils.set_random_seed(0)
        backbone = students.create("resnet8", input_shape=(32, 32, 3))
        backbone.name = "backbone"
        randomise_batchnorm(backbone)
        teachers.save(teachers.assemble(backbone,
                                        teachers.TeacherPreprocess()), path)
        before = open(path, "rb").read()
        c = config_lib.default_config()
        c.dataset, c.teacher, c.student = "digits", path, "resnet8"
        config = config_lib.resolve(c)
        with self.assertLogs("absl", "INFO") as logs:
            folded = build.load_teacher(config, (32, 32))
        self.assertIn("Folded 9 BatchNorm layers", "\n".join(logs.output))
        config.teacher_fold_bn = False
        plain = build.load_teacher(config, (32, 32))
        self.assertFalse(fold.foldable_pairs(folded))
        self.assertLen(fold.foldable_pairs(plain), 9)
        x = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3),
                                              np.uint8)
        self.assertSameFeatures(plain, folded, x)
        self.assertEqual(open(path, "rb").read(), before)
