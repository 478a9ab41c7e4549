"""SimCLR pieces against references."""

import numpy as np
import tensorflow as tf

from ega_tf.ssl import knn_accuracy, nt_xent
from ega_tf.ssl.augment import RandomResizedCrop, simclr_augment
from tests.references import np_nt_xent
from tests.test_case import TestCase


class SimCLRPiecesTest(TestCase):

    def test_nt_xent_matches_reference(self):
        rng = np.random.default_rng(0)
        z1, z2 = rng.normal(size=(2, 6, 5)).astype(np.float32)
        np.testing.assert_allclose(float(nt_xent(z1, z2, 0.5)),
                                   np_nt_xent(z1, z2, 0.5), rtol=1e-5)
        # Identical, well separated views give a lower loss than random.
        self.assertLess(float(nt_xent(z1, z1, 0.1)),
                        float(nt_xent(z1, z2, 0.1)))

    def test_knn_accuracy_known_answer(self):
        train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
        labels = np.array([0, 0, 1, 1])
        test = np.array([[1, 0.05], [0.05, 1], [1, 0.2]])
        self.assertEqual(knn_accuracy(train, labels, test, [0, 1, 0], k=2),
                         1.0)
        self.assertAlmostEqual(knn_accuracy(train, labels, test, [1, 1, 1],
                                            k=2), 1 / 3)

    def test_augment_is_per_image_inside_a_compiled_step(self):
        aug = simclr_augment(seed=3)
        images = tf.constant(np.tile(np.linspace(
            0, 255, 16 * 16 * 3, dtype=np.float32).reshape(1, 16, 16, 3),
            (8, 1, 1, 1)))
        out = tf.function(lambda x: aug(x, training=True))(images).numpy()
        diffs = [np.abs(out[i] - out[0]).mean() for i in range(1, 8)]
        self.assertGreater(min(diffs), 0.5)  # each image its own crop
        self.assertEqual(out.shape, (8, 16, 16, 3))
        np.testing.assert_array_equal(
            RandomResizedCrop()(images, training=False).numpy(),
            images.numpy())

    def test_random_resized_crop_full_box_is_identity(self):
        img = tf.random.uniform((2, 8, 8, 3), 0, 255)
        crop = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))
        np.testing.assert_allclose(crop(img, training=True).numpy(),
                                   img.numpy(), atol=1e-3)
