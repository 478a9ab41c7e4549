"""Digits data, label masking, and the crop/flip views (eager and tf.data)."""

import numpy as np
import pytest
import tensorflow as tf

from ega_tf import data
from ega_tf.data import augment, pipeline


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_digits_split(digits):
    assert digits.num_classes == 10
    assert digits.image_size == (32, 32)
    assert len(digits.train) == 1347 and len(digits.test) == 450
    assert digits.train.images.dtype == np.uint8
    # Stratified: every class has 25% +- 1 image of its examples in test.
    for c in range(10):
        n_tr = (digits.train.labels == c).sum()
        n_te = (digits.test.labels == c).sum()
        assert abs(n_te - 0.25 * (n_tr + n_te)) <= 1
    assert digits.train.images.max() == 255  # full 0..255 range
    # Grey: the three channels are equal.
    np.testing.assert_array_equal(digits.train.images[..., 0],
                                  digits.train.images[..., 2])


def test_mask_labels_is_stratified_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 30, 40])
    masked = data.mask_labels(labels, 0.1, seed=3)
    for c, n in zip(range(4), [1, 2, 3, 4]):
        assert (masked == c).sum() == n
    assert (masked == -1).sum() == 90
    kept = masked != -1
    np.testing.assert_array_equal(masked[kept], labels[kept])
    np.testing.assert_array_equal(masked, data.mask_labels(labels, 0.1, 3))
    assert not np.array_equal(masked, data.mask_labels(labels, 0.1, 4))
    with pytest.raises(ValueError, match="labeled_fraction"):
        data.mask_labels(labels, 0.0)


def coordinate_image(h=32, w=32):
    """R = row + 1, G = column + 1, B = 255: padding shows up as zeros."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(h)[:, None] + 1
    img[..., 1] = np.arange(w)[None, :] + 1
    img[..., 2] = 255
    return img


def check_crop_geometry(out, padding, h=32, w=32):
    """``out`` is a shifted (maybe mirrored) window of the padded image."""
    real = out[..., 2] == 255
    assert np.all(out[~real] == 0)  # padding is zero in every channel
    rows, cols = np.nonzero(real)
    dy = out[rows, cols, 0].astype(int) - 1 - rows
    assert len(set(dy)) == 1 and abs(dy[0]) <= padding
    src_col = out[rows, cols, 1].astype(int) - 1
    shift, mirror = src_col - cols, src_col + cols
    flipped = len(set(shift)) != 1
    if flipped:
        assert len(set(mirror)) == 1
    offset = (mirror if flipped else shift)[0]
    assert (abs(offset - (w - 1)) if flipped else abs(offset)) <= padding
    return dy[0], offset, flipped


@pytest.mark.parametrize("padding", [0, 4])
def test_pad_crop_flip_geometry_eager_and_in_tf_data(padding):
    img = coordinate_image()
    seen = set()
    for s in range(40):
        out = augment.pad_crop_flip(tf.constant(img), padding,
                                     tf.constant([s, 7], tf.int64)).numpy()
        seen.add(check_crop_geometry(out, padding))
    ds = tf.data.Dataset.from_tensors(img).repeat(40).enumerate().map(
        lambda i, x: augment.pad_crop_flip(x, padding,
                                            tf.stack([i, tf.constant(7, tf.int64)])))
    seen_ds = {check_crop_geometry(o, padding) for o in ds.as_numpy_iterator()}
    assert seen == seen_ds  # the same seeds give the same views in tf.data
    flips = {f for _, _, f in seen}
    assert flips == {True, False}
    if padding:
        assert len({(dy, off) for dy, off, _ in seen}) > 5
    else:
        assert {(dy, off) for dy, off, f in seen if not f} == {(0, 0)}


def test_train_views_independent_same_clean(digits):
    split = data.Split(np.stack([coordinate_image()] * 64), np.zeros(64))
    for mode in pipeline.TEACHER_VIEWS:
        x, y = next(iter(pipeline.train_dataset(split, 64, seed=1,
                                                teacher_view=mode)))
        s, t = x["student"].numpy(), x["teacher"].numpy()
        assert s.dtype == np.uint8 and s.shape == (64, 32, 32, 3)
        for view in (s[0], t[0]):
            check_crop_geometry(view, 4)
        if mode == "same":
            np.testing.assert_array_equal(s, t)
        elif mode == "clean":
            np.testing.assert_array_equal(t, split.images)
        else:
            assert np.mean([np.array_equal(a, b) for a, b in zip(s, t)]) < 0.2
    with pytest.raises(ValueError, match="independent, same, clean"):
        pipeline.train_dataset(split, 8, teacher_view="both")


def test_train_stream_seeded_and_fresh_each_epoch(digits):
    def first(ds):
        return next(iter(ds))[0]["student"].numpy()
    a = pipeline.train_dataset(digits.train, 32, seed=5)
    e1, e2 = first(a), first(a)
    assert not np.array_equal(e1, e2)
    np.testing.assert_array_equal(e1, first(pipeline.train_dataset(
        digits.train, 32, seed=5)))


def test_eval_dataset_is_plain_and_ordered(digits):
    x, y = next(iter(pipeline.eval_dataset(digits.test, 16)))
    np.testing.assert_array_equal(x["student"].numpy(), digits.test.images[:16])
    np.testing.assert_array_equal(x["teacher"].numpy(), digits.test.images[:16])
    np.testing.assert_array_equal(y.numpy(), digits.test.labels[:16])


def test_unknown_dataset_lists_names():
    with pytest.raises(KeyError, match="cifar100, digits, folder:PATH, stl10, tiny_imagenet"):
        data.load("cifar1000")


def test_cifar100_missing_says_what_to_put_where(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load("cifar100", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "cifar-100-binary.tar.gz" in msg
    assert str(tmp_path / "downloads" / "manual") in msg
    # Nothing half-prepared is left that would confuse the next run.
    assert not (tmp_path / "cifar100").exists() or not any(
        (tmp_path / "cifar100").rglob("*.tfrecord*"))
