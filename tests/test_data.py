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


def test_default_padding_scales_with_resolution():
    assert [augment.default_padding((s, s)) for s in (32, 64, 96)] == [4, 8, 12]
    split = data.Split(np.stack([coordinate_image(64, 64)] * 8), np.zeros(8))
    x, _ = next(iter(pipeline.train_dataset(split, 8, seed=2)))
    for view in x["student"].numpy():
        check_crop_geometry(view, 8, 64, 64)


def test_make_views_eager_equals_tf_data_map():
    img = tf.constant(coordinate_image())
    for mode in augment.TEACHER_VIEWS:
        seeds = [tf.constant([s, 3], tf.int64) for s in range(12)]
        eager = [augment.make_views(img, s, 4, mode) for s in seeds]
        ds = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
            lambda s: augment.make_views(img, s, 4, mode))
        for e, m in zip(eager, ds.as_numpy_iterator()):
            np.testing.assert_array_equal(e["student"].numpy(), m["student"])
            np.testing.assert_array_equal(e["teacher"].numpy(), m["teacher"])
            check_crop_geometry(m["student"], 4)
            if mode == "clean":
                np.testing.assert_array_equal(m["teacher"], img.numpy())
            else:
                check_crop_geometry(m["teacher"], 4)


def test_resize_center_crop_geometry_eager_and_in_tf_data():
    wide = coordinate_image(20, 40)
    out = augment.resize_center_crop(tf.constant(wide), 20).numpy()
    np.testing.assert_array_equal(out, wide[:, 10:30])  # same scale: a crop
    tall = coordinate_image(40, 20)
    out = augment.resize_center_crop(tf.constant(tall), 20).numpy()
    np.testing.assert_array_equal(out, tall[10:30])
    # Halving 40x80: the window is centred on the original's centre.
    big = np.zeros((40, 80, 3), np.uint8)
    big[..., 0] = (np.arange(40)[:, None] * 3).astype(np.uint8)
    big[..., 1] = (np.arange(80)[None, :] * 3).astype(np.uint8)
    out = augment.resize_center_crop(tf.constant(big), 20).numpy()
    assert out.shape == (20, 20, 3) and out.dtype == np.uint8
    assert abs(out[..., 0].mean() / 3 - 19.5) < 0.6   # rows: all of them
    assert abs(out[..., 1].mean() / 3 - 39.5) < 0.6   # columns: the centre
    assert 18 < out[0, :, 1].min() / 3 < 21 and 58 < out[0, :, 1].max() / 3 < 61
    ds = tf.data.Dataset.from_tensors(big).map(
        lambda x: augment.resize_center_crop(x, 20))
    np.testing.assert_array_equal(next(ds.as_numpy_iterator()), out)


def test_streamed_split_matches_in_memory_split():
    images = np.stack([coordinate_image()] * 10)
    images[:, 0, 0, 2] = np.arange(10)  # tell the images apart
    labels = np.arange(10) % 3
    mem = data.Split(images, labels)
    streamed = data.Split(labels=labels, image_size=(32, 32),
                          reader=lambda: tf.data.Dataset.from_tensor_slices(
                              images))
    assert not streamed.in_memory and streamed.nbytes == images.nbytes
    for cache in ("auto", "none", "memory"):
        a = pipeline.train_dataset(mem, 5, seed=4, cache=cache)
        b = pipeline.train_dataset(streamed, 5, seed=4, cache=cache)
        for (xa, ya), (xb, yb) in zip(a, b):
            np.testing.assert_array_equal(xa["student"], xb["student"])
            np.testing.assert_array_equal(ya, yb)
    masked = streamed.with_labels(data.mask_labels(labels, 0.5, 0))
    assert masked.num_labeled == 6  # classes of 4, 3, 3: 2 + 2 + 2
    both = masked.concatenate(mem)
    assert len(both) == 20
    np.testing.assert_array_equal(both.images[10:], images)
    got = list(both.dataset().as_numpy_iterator())
    np.testing.assert_array_equal([g[1] for g in got], both.labels)
    with pytest.raises(ValueError, match="Valid values: auto, memory, none"):
        pipeline.train_dataset(mem, 5, cache="disk")
