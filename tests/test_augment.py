"""Augmentation ops and the training stream: crop/flip geometry, the
teacher's views, seeding, eager against tf.data, streamed against in-memory
splits."""

import numpy as np
import tensorflow as tf
from absl.testing import parameterized

from ega_tf import data
from ega_tf.core.errors import UserError
from ega_tf.data import augment, pipeline
from tests.test_case import TestCase


def coordinate_image(h=32, w=32):
    """R = row + 1, G = column + 1, B = 255: padding shows up as zeros."""
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 0] = np.arange(h)[:, None] + 1
    img[..., 1] = np.arange(w)[None, :] + 1
    img[..., 2] = 255
    return img


class AugmentTest(TestCase):

    def check_crop_geometry(self, out, padding, h=32, w=32):
        """``out`` is a shifted (maybe mirrored) window of the padded
        image; returns (row shift, column offset, flipped)."""
        real = out[..., 2] == 255
        self.assertTrue(np.all(out[~real] == 0))  # padding is zero
        rows, cols = np.nonzero(real)
        dy = out[rows, cols, 0].astype(int) - 1 - rows
        self.assertLen(set(dy), 1)
        self.assertLessEqual(abs(dy[0]), padding)
        src_col = out[rows, cols, 1].astype(int) - 1
        shift, mirror = src_col - cols, src_col + cols
        flipped = len(set(shift)) != 1
        if flipped:
            self.assertLen(set(mirror), 1)
        offset = (mirror if flipped else shift)[0]
        self.assertLessEqual(abs(offset - (w - 1)) if flipped
                             else abs(offset), padding)
        return dy[0], offset, flipped

    @parameterized.parameters(0, 4)
    def test_pad_crop_flip_geometry_eager_and_in_tf_data(self, padding):
        img = coordinate_image()
        seen = set()
        for s in range(40):
            out = augment.pad_crop_flip(tf.constant(img), padding,
                                        tf.constant([s, 7], tf.int64)).numpy()
            seen.add(self.check_crop_geometry(out, padding))
        ds = tf.data.Dataset.from_tensors(img).repeat(40).enumerate().map(
            lambda i, x: augment.pad_crop_flip(
                x, padding, tf.stack([i, tf.constant(7, tf.int64)])))
        seen_ds = {self.check_crop_geometry(o, padding)
                   for o in ds.as_numpy_iterator()}
        self.assertEqual(seen, seen_ds)  # same seeds, same views
        self.assertEqual({f for _, _, f in seen}, {True, False})
        if padding:
            self.assertGreater(len({(dy, off) for dy, off, _ in seen}), 5)
        else:
            self.assertEqual({(dy, off) for dy, off, f in seen if not f},
                             {(0, 0)})

    def test_train_views_independent_same_clean(self):
        split = data.Split(np.stack([coordinate_image()] * 64), np.zeros(64))
        for mode in augment.TEACHER_VIEWS:
            x, y = next(iter(pipeline.train_dataset(split, 64, seed=1,
                                                    teacher_view=mode)))
            s, t = x["student"].numpy(), x["teacher"].numpy()
            self.assertEqual((s.dtype, s.shape),
                             (np.uint8, (64, 32, 32, 3)))
            for view in (s[0], t[0]):
                self.check_crop_geometry(view, 4)
            if mode == "same":
                np.testing.assert_array_equal(s, t)
            elif mode == "clean":
                np.testing.assert_array_equal(t, split.images)
            else:
                self.assertLess(np.mean([np.array_equal(a, b)
                                         for a, b in zip(s, t)]), 0.2)
        with self.assertRaisesRegex(UserError, "independent, same, clean"):
            pipeline.train_dataset(split, 8, teacher_view="both")

    def test_each_epoch_is_a_function_of_seed_and_epoch(self):
        digits = data.load("digits")

        def first(ds):
            return next(iter(ds))[0]["student"].numpy()
        stream = pipeline.TrainStream(digits.train, 32, seed=5)
        e0, e1 = first(stream.epoch(0)), first(stream.epoch(1))
        self.assertFalse(np.array_equal(e0, e1))  # fresh order and views
        # The same epoch again, iterated any number of times, from a new
        # stream or the old one: the same batches.
        np.testing.assert_array_equal(e0, first(stream.epoch(0)))
        np.testing.assert_array_equal(e1, first(pipeline.TrainStream(
            digits.train, 32, seed=5).epoch(1)))
        self.assertFalse(np.array_equal(e0, first(pipeline.TrainStream(
            digits.train, 32, seed=6).epoch(0))))
        # Starting at step k gives the batches from k on.
        full = list(stream.epoch(1).take(4).as_numpy_iterator())
        later = list(stream.epoch(1, skip=2).take(2).as_numpy_iterator())
        for a, b in zip(full[2:], later):
            np.testing.assert_array_equal(a[0]["student"], b[0]["student"])
            np.testing.assert_array_equal(a[1], b[1])

    def test_eval_dataset_is_plain_and_ordered(self):
        digits = data.load("digits")
        x, y, w = next(iter(pipeline.eval_dataset(digits.test, 16)))
        for view in ("student", "teacher"):
            np.testing.assert_array_equal(x[view].numpy(),
                                          digits.test.images[:16])
        np.testing.assert_array_equal(y.numpy(), digits.test.labels[:16])
        np.testing.assert_array_equal(w.numpy(), np.ones(16))

    def test_default_padding_scales_with_resolution(self):
        self.assertEqual([augment.default_padding((s, s))
                          for s in (32, 64, 96)], [4, 8, 12])
        split = data.Split(np.stack([coordinate_image(64, 64)] * 8),
                           np.zeros(8))
        x, _ = next(iter(pipeline.train_dataset(split, 8, seed=2)))
        for view in x["student"].numpy():
            self.check_crop_geometry(view, 8, 64, 64)

    def test_make_views_eager_equals_tf_data_map(self):
        img = tf.constant(coordinate_image())
        for mode in augment.TEACHER_VIEWS:
            seeds = [tf.constant([s, 3], tf.int64) for s in range(12)]
            eager = [augment.make_views(img, s, 4, mode) for s in seeds]
            ds = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
                lambda s: augment.make_views(img, s, 4, mode))
            for e, m in zip(eager, ds.as_numpy_iterator()):
                np.testing.assert_array_equal(e["student"].numpy(),
                                              m["student"])
                np.testing.assert_array_equal(e["teacher"].numpy(),
                                              m["teacher"])
                self.check_crop_geometry(m["student"], 4)
                if mode == "clean":
                    np.testing.assert_array_equal(m["teacher"], img.numpy())
                else:
                    self.check_crop_geometry(m["teacher"], 4)

    def test_resize_center_crop_geometry_eager_and_in_tf_data(self):
        wide = coordinate_image(20, 40)
        out = augment.resize_center_crop(tf.constant(wide), 20).numpy()
        np.testing.assert_array_equal(out, wide[:, 10:30])  # same scale
        tall = coordinate_image(40, 20)
        out = augment.resize_center_crop(tf.constant(tall), 20).numpy()
        np.testing.assert_array_equal(out, tall[10:30])
        # Halving 40x80: the window is centred on the original's centre.
        big = np.zeros((40, 80, 3), np.uint8)
        big[..., 0] = (np.arange(40)[:, None] * 3).astype(np.uint8)
        big[..., 1] = (np.arange(80)[None, :] * 3).astype(np.uint8)
        out = augment.resize_center_crop(tf.constant(big), 20).numpy()
        self.assertEqual((out.shape, out.dtype), ((20, 20, 3), np.uint8))
        self.assertLess(abs(out[..., 0].mean() / 3 - 19.5), 0.6)  # all rows
        self.assertLess(abs(out[..., 1].mean() / 3 - 39.5), 0.6)  # centre
        self.assertTrue(18 < out[0, :, 1].min() / 3 < 21)
        self.assertTrue(58 < out[0, :, 1].max() / 3 < 61)
        ds = tf.data.Dataset.from_tensors(big).map(
            lambda x: augment.resize_center_crop(x, 20))
        np.testing.assert_array_equal(next(ds.as_numpy_iterator()), out)

    def test_streamed_split_matches_in_memory_split(self):
        images = np.stack([coordinate_image()] * 10)
        images[:, 0, 0, 2] = np.arange(10)  # tell the images apart
        labels = np.arange(10) % 3
        mem = data.Split(images, labels)
        streamed = data.Split(
            labels=labels, image_size=(32, 32),
            reader=lambda: tf.data.Dataset.from_tensor_slices(images))
        self.assertFalse(streamed.in_memory)
        self.assertEqual(streamed.nbytes, images.nbytes)
        for cache in ("auto", "none", "memory"):
            a = pipeline.train_dataset(mem, 5, seed=4, cache=cache)
            b = pipeline.train_dataset(streamed, 5, seed=4, cache=cache)
            for (xa, ya), (xb, yb) in zip(a, b):
                np.testing.assert_array_equal(xa["student"], xb["student"])
                np.testing.assert_array_equal(ya, yb)
        masked = streamed.with_labels(data.mask_labels(labels, 0.5, 0))
        self.assertEqual(masked.num_labeled, 6)  # classes 4, 3, 3: 2+2+2
        both = masked.concatenate(mem)
        self.assertLen(both, 20)
        np.testing.assert_array_equal(both.images[10:], images)
        got = list(both.dataset().as_numpy_iterator())
        np.testing.assert_array_equal([g[1] for g in got], both.labels)
        with self.assertRaisesRegex(UserError,
                                    "Valid values: auto, memory, none"):
            pipeline.train_dataset(mem, 5, cache="disk")
