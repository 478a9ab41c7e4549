"""Student zoo: parameter counts equal the PyTorch reference; PyTorch
padding; seeded, per-layer initialisation."""

import hashlib

import keras
import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from ega_tf import students
from ega_tf.core import runtime
from ega_tf.nn.layers import ChannelShuffle, conv
from tests.test_case import TestCase

# name: (trainable parameters with a 100-class classifier, pooled width),
# as printed by the RepDistiller PyTorch models.
TABLE = {
    "resnet8": (83_892, 64), "resnet14": (181_108, 64),
    "resnet20": (278_324, 64), "resnet32": (472_756, 64),
    "resnet44": (667_188, 64), "resnet56": (861_620, 64),
    "resnet110": (1_736_564, 64), "resnet8x4": (1_233_540, 256),
    "resnet32x4": (7_433_860, 256), "wrn_16_1": (180_916, 64),
    "wrn_16_2": (703_284, 128), "wrn_40_1": (569_780, 64),
    "wrn_40_2": (2_255_156, 128), "vgg8": (3_965_028, 512),
    "vgg11": (9_277_284, 512), "vgg13": (9_462_180, 512),
    "vgg16": (14_774_436, 512), "vgg19": (20_086_692, 512),
    "MobileNetV2": (812_836, 1280), "ShuffleV1": (949_258, 960),
    "ShuffleV2": (1_355_528, 1024), "ResNet50": (23_705_252, 2048),
}

# Initial weights of resnet8 under seed 1, summarised (see below).
_CHECKSUM = """
import hashlib, keras, numpy as np
keras.utils.set_random_seed(1)  # before anything of ega_tf is imported
from ega_tf import students
m = students.create("resnet8", num_classes=10)
print(hashlib.sha256(b"".join(np.asarray(w).tobytes()
                              for w in m.weights)).hexdigest())
"""


def _count(weights):
    return sum(int(np.prod(w.shape)) for w in weights)


def _uninitialised(name, **kwargs):
    """``students.create(name, **kwargs)`` with every variable created at
    its shape and none initialised: inside a ``StatelessScope`` Keras defers
    the initialisers, and this one never runs them. Counting parameters
    needs the shapes only; drawing ResNet50's 24 M random numbers, one
    variable at a time, is most of the time it takes to build (the zoo
    builds in a third of the time so). The model cannot run."""
    with keras.StatelessScope(initialize_variables=False):
        return students.create(name, **kwargs)


def _checksum(model):
    return hashlib.sha256(b"".join(np.asarray(w).tobytes()
                                   for w in model.weights)).hexdigest()


class StudentZooTest(TestCase):

    def test_registry_covers_table(self):
        self.assertCountEqual(students.names(), TABLE)

    @parameterized.parameters(*sorted(TABLE))
    def test_parameter_count_and_feature_width(self, name):
        params, width = TABLE[name]
        model = _uninitialised(name, num_classes=100)
        self.assertEqual(_count(model.trainable_weights), params)
        # count_params() also holds BN's moving statistics (PyTorch buffers).
        bn_buffers = sum(_count(l.non_trainable_weights)
                         for l in model.layers)
        self.assertEqual(model.count_params(), params + bn_buffers)
        self.assertEqual(_count(model.non_trainable_weights), bn_buffers)
        backbone = _uninitialised(name)
        self.assertEqual(backbone.output.shape[-1], width)
        self.assertEqual(_count(backbone.trainable_weights),
                         params - (width * 100 + 100))

    @parameterized.parameters("resnet8", "wrn_16_1", "vgg8", "MobileNetV2",
                              "ShuffleV1", "ShuffleV2")
    def test_forward_other_resolution(self, name):
        model = students.create(name, num_classes=7, input_shape=(64, 64, 3))
        out = model(tf.random.normal([2, 64, 64, 3]), training=False)
        self.assertEqual(out.shape, (2, 7))
        self.assertTrue(np.all(np.isfinite(out.numpy())))

    def test_published_learning_rates(self):
        self.assertEqual(students.default_lr("resnet8x4"), 0.05)
        for name in ("MobileNetV2", "ShuffleV1", "ShuffleV2"):
            self.assertEqual(students.default_lr(name), 0.01)

    def test_strided_conv_pads_like_pytorch(self):
        # PyTorch's 3x3/2 conv with padding 1: output row i reads input rows
        # 2i-1..2i+1, so a lone pixel at (2, 2) reaches output (1, 1) only.
        # TF's 'same' pads at the end only and would also light up (0, 0),
        # (0, 1) and (1, 0).
        inp = keras.Input((6, 6, 1))
        model = keras.Model(inp, conv(inp, 1, 3, 2, name="c"))
        model.get_layer("c").set_weights([np.ones((3, 3, 1, 1), np.float32)])
        img = np.zeros((1, 6, 6, 1), np.float32)
        img[0, 2, 2, 0] = 1.0
        want = np.zeros((3, 3))
        want[1, 1] = 1.0
        np.testing.assert_array_equal(model(img).numpy()[0, :, :, 0], want)

    def test_channel_shuffle_matches_pytorch_permutation(self):
        x = np.arange(6, dtype=np.float32).reshape(1, 1, 1, 6)
        out = ChannelShuffle(3)(x).numpy().ravel()
        # torch: view(1, 3, 2).transpose(1, 2) -> [0, 2, 4, 1, 3, 5]
        np.testing.assert_array_equal(out, [0, 2, 4, 1, 3, 5])

    def test_unknown_name_lists_valid_names(self):
        from ega_tf.core.errors import UserError
        with self.assertRaisesRegex(UserError, "resnet8x4"):
            students.create("resnet9")


class InitialisationTest(TestCase):
    """Each layer draws its own initial weights from the run's seed."""

    def test_layers_of_the_same_shape_start_different(self):
        model = students.create("resnet8")
        a = model.get_layer("stage1_block0_1_conv").kernel.numpy()
        b = model.get_layer("stage1_block0_2_conv").kernel.numpy()
        self.assertEqual(a.shape, b.shape)
        self.assertGreater(np.abs(a - b).max(), 1e-3)

    def test_seed_fixes_initial_weights_whatever_the_import_order(self):
        runtime.set_seed(1)  # ega_tf was imported long before, here
        first = _checksum(students.create("resnet8", num_classes=10))
        runtime.set_seed(1)
        self.assertEqual(_checksum(students.create("resnet8",
                                                   num_classes=10)), first)
        runtime.set_seed(2)
        self.assertNotEqual(_checksum(students.create("resnet8",
                                                      num_classes=10)), first)
        # A fresh process that seeds before importing ega_tf agrees.
        r = self.run_subprocess(["-c", _CHECKSUM])
        self.assertSucceeded(r)
        self.assertEqual(r.stdout.strip().splitlines()[-1], first)
