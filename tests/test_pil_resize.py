"""Pillow's resampling as matrices, against Pillow itself."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized
from PIL import Image

from ega_tf.teachers import pil_resize
from tests.test_case import TestCase

# (height, width) in -> out: up, down, both, odd, the teacher cases.
CASES = [((32, 32), (224, 224)), ((32, 32), (256, 256)),
         ((60, 80), (224, 298)), ((300, 200), (97, 64)),
         ((64, 64), (37, 37)), ((33, 47), (100, 21)),
         ((500, 375), (298, 224)), ((17, 17), (17, 40))]


class PilResizeTest(TestCase):

    @parameterized.product(method=["bicubic", "bilinear"], case=CASES)
    def test_matches_pillow(self, method, case):
        shape_in, shape_out = case
        rng = np.random.default_rng(sum(shape_in) + sum(shape_out))
        img = rng.integers(0, 256, (*shape_in, 3), dtype=np.uint8)
        # Smooth content as photos have, plus noise that stresses rounding.
        yy, xx = np.mgrid[:shape_in[0], :shape_in[1]]
        img[..., 0] = (127 + 120 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
                       ).astype(np.uint8)
        resample = {"bicubic": Image.BICUBIC,
                    "bilinear": Image.BILINEAR}[method]
        want = np.asarray(Image.fromarray(img).resize(shape_out[::-1],
                                                      resample), np.int32)
        got = pil_resize.resize(img[None], shape_out, method)[0].numpy()
        self.assertEqual(got.shape, want.shape)
        diff = np.abs(got.astype(np.int32) - want)
        # float32 vs Pillow's 22-bit fixed point: a rare +-1 at a .5 edge.
        self.assertLessEqual(diff.max(), 1)
        self.assertGreaterEqual((diff == 0).mean(), 0.99)

    def test_weights_rows_sum_to_one_and_keep_identity(self):
        w = pil_resize.weights(20, 7, "bicubic").numpy()
        np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
        np.testing.assert_allclose(pil_resize.weights(9, 9).numpy(),
                                   np.eye(9), atol=1e-7)

    def test_runs_in_tf_data_and_under_xla(self):
        img = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3),
                                                np.uint8)
        eager = pil_resize.resize(img, (224, 224)).numpy()
        xla = tf.function(lambda x: pil_resize.resize(x, (224, 224)),
                          jit_compile=True)(img).numpy()
        np.testing.assert_array_equal(eager, xla)
        ds = tf.data.Dataset.from_tensor_slices(img).map(
            lambda x: pil_resize.resize(x[None], (224, 224))[0])
        np.testing.assert_array_equal(np.stack(list(ds.as_numpy_iterator())),
                                      eager)
