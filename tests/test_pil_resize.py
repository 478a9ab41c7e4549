"""Pillow's resampling as matrices, against Pillow itself."""

import numpy as np
import pytest
import tensorflow as tf

from ega_tf.teachers import pil_resize

Image = pytest.importorskip("PIL.Image")

# (height, width) in -> out: up, down, both, odd, the teacher cases.
CASES = [((32, 32), (224, 224)), ((32, 32), (256, 256)), ((60, 80), (224, 298)),
         ((300, 200), (97, 64)), ((64, 64), (37, 37)), ((33, 47), (100, 21)),
         ((500, 375), (298, 224)), ((17, 17), (17, 40))]


@pytest.mark.parametrize("method", ["bicubic", "bilinear"])
@pytest.mark.parametrize("shape_in,shape_out", CASES)
def test_matches_pillow(method, shape_in, shape_out):
    rng = np.random.default_rng(sum(shape_in) + sum(shape_out))
    img = rng.integers(0, 256, (*shape_in, 3), dtype=np.uint8)
    # Smooth content as photos have, plus the noise that stresses rounding.
    yy, xx = np.mgrid[:shape_in[0], :shape_in[1]]
    img[..., 0] = (127 + 120 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(
        np.uint8)
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[method]
    want = np.asarray(Image.fromarray(img).resize(shape_out[::-1], resample),
                      np.int32)
    got = pil_resize.resize(img[None], shape_out, method)[0].numpy()
    assert got.shape == want.shape
    diff = np.abs(got.astype(np.int32) - want)
    # float32 vs Pillow's 22-bit fixed point: a rare +-1 at a .5 edge.
    assert diff.max() <= 1, (method, shape_in, shape_out, diff.max())
    assert (diff == 0).mean() >= 0.99


def test_weights_rows_sum_to_one_and_keep_identity():
    w = pil_resize.weights(20, 7, "bicubic").numpy()
    np.testing.assert_allclose(w.sum(1), 1.0, atol=1e-6)
    np.testing.assert_allclose(pil_resize.weights(9, 9).numpy(), np.eye(9),
                               atol=1e-7)


def test_runs_in_tf_data_and_under_xla():
    img = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    eager = pil_resize.resize(img, (224, 224)).numpy()
    xla = tf.function(lambda x: pil_resize.resize(x, (224, 224)),
                      jit_compile=True)(img).numpy()
    np.testing.assert_array_equal(eager, xla)
    ds = tf.data.Dataset.from_tensor_slices(img).map(
        lambda x: pil_resize.resize(x[None], (224, 224))[0])
    np.testing.assert_array_equal(np.stack(list(ds.as_numpy_iterator())),
                                  eager)
