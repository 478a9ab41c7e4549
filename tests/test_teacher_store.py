"""Stored teacher views (``--config.teacher_views``): the views drawn and
replayed, the store against the teacher's own forward view by view, a
killed build resumed, one store shared by every run that needs it, the
stream's reads on one device and on two, and the messages for bad
settings. The whole compare grid that builds the store once, and a kill -9
of a real build, are in the slow tier."""

import json
import os
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from ega_tf import data, teachers
from ega_tf.data import augment, pipeline
from ega_tf.training import distribute, teacher_store
from tests.test_case import TestCase, conv_teacher, pixel_teacher


def numpy_view(image, params, padding):
    """The reference view: zero-pad, crop at (dy, dx), flip."""
    dy, dx, flip = (int(v) for v in params)
    h, w = image.shape[:2]
    padded = np.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    out = padded[dy:dy + h, dx:dx + w]
    return out[:, ::-1] if flip else out


def numpy_views(image, params, padding=4):
    """The reference views of one image, one per row of ``params``."""
    return np.stack([numpy_view(image, p, padding) for p in params])


def tiny_split(n=5, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return data.Split(rng.integers(0, 256, (n, size, size, 3), np.uint8),
                      np.arange(n) % 3)


def meta_for(split, views, padding=4, dtype="float32", teacher="t"):
    return teacher_store.describe(teacher, teacher_store.images_sha256(split),
                                  split.image_size, padding, views, dtype)


class ViewsTest(TestCase):

    def test_table_draws_and_replay(self):
        table = augment.view_table(4)
        self.assertEqual(table.shape, (162, 3))  # 9 x 9 offsets x 2 flips
        self.assertLen({tuple(r) for r in table}, 162)
        # M distinct views per image, a pure function of the image's index:
        # drawn in two chunks or one, the same.
        drawn = augment.drawn_views(0, 10, 16, 4)
        self.assertEqual(drawn.shape, (10, 16, 3))
        np.testing.assert_array_equal(drawn, np.concatenate(
            [augment.drawn_views(0, 4, 16, 4),
             augment.drawn_views(4, 6, 16, 4)]))
        for row in drawn:
            self.assertLen({tuple(v) for v in row}, 16)
        self.assertFalse(np.array_equal(drawn[0], drawn[1]))
        np.testing.assert_array_equal(augment.drawn_views(3, 2, "all", 4)[1],
                                      table)
        # Over many images every view is drawn about equally often.
        many = augment.drawn_views(0, 4000, 1, 4)[:, 0]
        counts = np.bincount(many[:, 0] * 18 + many[:, 1] * 2 + many[:, 2],
                             minlength=162)
        self.assertLess(abs(counts.mean() - 4000 / 162), 1e-9)
        self.assertLess(counts.std(), 3 * np.sqrt(4000 / 162))
        # The replayed view is the pad-crop-flip at those parameters, and a
        # view drawn by the fresh-view augmentation is one of the table's.
        image = tiny_split(1).images[0]
        for params in table[::7]:
            np.testing.assert_array_equal(
                augment.apply_view(tf.constant(image), params, 4).numpy(),
                numpy_view(image, params, 4))
        fresh = augment.pad_crop_flip(tf.constant(image), 4,
                                      tf.constant([3, 5], tf.int64)).numpy()
        self.assertTrue(any(np.array_equal(fresh, numpy_view(image, p, 4))
                            for p in table))


class WithTeacher(TestCase):
    """A small frozen teacher and ``IMAGES`` random 32-px images."""
    IMAGES = 5

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.teacher = conv_teacher(32, batchnorm=False)
        cls.split = tiny_split(cls.IMAGES)


class StoreTest(WithTeacher):

    def test_all_views_equal_the_teachers_forward_on_each_view(self):
        root = self.tmp_path()
        meta = meta_for(self.split, "all")
        store = teacher_store.open_or_build(root, meta, self.teacher,
                                            self.split, verbose=0)
        self.assertEqual(store.features.shape, (5, 162, 12))
        self.assertIsInstance(store.features, np.memmap)
        np.testing.assert_array_equal(store.views[2], augment.view_table(4))
        for i in range(5):
            views = numpy_views(self.split.images[i], store.views[i])
            want = self.teacher.predict(views, batch_size=162, verbose=0)
            # The same forward on the same views: float32 rounding of the
            # batch's summation order at most (measured: equal here).
            np.testing.assert_allclose(store.features[i], want, rtol=1e-6,
                                       atol=1e-7)

    def test_a_killed_build_resumes_and_a_second_run_reads_it(self):
        root = self.tmp_path()
        meta = meta_for(self.split, 3)
        path = os.path.join(root, teacher_store.key_of(meta))
        self.assertIsNone(teacher_store.build(
            path, meta, self.teacher, self.split, chunk_images=2,
            verbose=0, stop_after=2))
        self.assertFalse(os.path.exists(path))
        with open(path + ".partial/progress.json") as f:
            self.assertEqual(json.load(f)["done"], 2)
        with self.assertLogs("absl", level="INFO") as logs:
            resumed = teacher_store.open_or_build(root, meta, self.teacher,
                                                  self.split, verbose=0)
        text = "\n".join(logs.output)
        self.assertIn("resuming the build at image 2 of 5", text)
        self.assertFalse(os.path.exists(path + ".partial"))
        whole = teacher_store.open_or_build(
            self.tmp_path(), meta, self.teacher, self.split, verbose=0)
        np.testing.assert_array_equal(resumed.features, whole.features)
        np.testing.assert_array_equal(resumed.views, whole.views)
        with self.assertLogs("absl", level="INFO") as logs:
            again = teacher_store.open_or_build(root, meta, self.teacher,
                                                self.split, verbose=0)
        self.assertIn("read from", "\n".join(logs.output))
        self.assertEqual(again.path, resumed.path)
        # Other views, dtype, images or teacher: another store.
        keys = {teacher_store.key_of(m) for m in (
            meta, meta_for(self.split, 4), meta_for(self.split, 3,
                                                    dtype="float16"),
            meta_for(tiny_split(5, seed=1), 3),
            meta_for(self.split, 3, teacher="u"))}
        self.assertLen(keys, 5)

    def test_float16_store(self):
        meta32, meta16 = (meta_for(self.split, 2, dtype=d)
                          for d in ("float32", "float16"))
        a = teacher_store.open_or_build(self.tmp_path(), meta32, self.teacher,
                                        self.split, verbose=0)
        b = teacher_store.open_or_build(self.tmp_path(), meta16, self.teacher,
                                        self.split, verbose=0)
        self.assertEqual(b.features.dtype, np.float16)
        self.assertEqual(b.features.nbytes * 2, a.features.nbytes)
        rows = np.arange(10)
        self.assertEqual(b.rows(rows).dtype, np.float32)
        np.testing.assert_allclose(b.rows(rows), a.rows(rows), rtol=1e-3,
                                   atol=1e-4)


class StreamTest(WithTeacher):
    """The training stream's reads from a store."""
    IMAGES = 16

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.store = teacher_store.open_or_build(
            cls.class_tempdir(), meta_for(cls.split, 6), cls.teacher,
            cls.split, verbose=0)

    def batches(self, view, epoch=0, seed=3, kept=None):
        split = self.split if kept is None else self.split.subset(kept)
        stream = pipeline.TrainStream(split, 8, seed=seed,
                                      teacher_view=view, store=self.store,
                                      store_images=kept, index=True)
        return list(stream.epoch(epoch).as_numpy_iterator())

    def test_same_view_replays_the_stored_view(self):
        chosen = set()
        # The whole split, and a split with a validation part held out
        # (the store keeps every training image; each example reads its
        # own image's rows).
        kept = np.array([0, 2, 3, 5, 6, 7, 9, 10, 11, 13, 14, 15])
        batches = [(x, np.arange(16)) for x, _ in self.batches("same")] + [
            (x, kept) for x, _ in self.batches("same", kept=kept)]
        for x, positions in batches:
            rows = [int(np.flatnonzero(np.all(
                self.store.features.reshape(-1, 12) == f, -1))[0])
                for f in x["teacher_features"]]
            for i, row, student in zip(x["index"], rows, x["student"]):
                image = positions[i]
                self.assertEqual(row // 6, image)
                chosen.add(row % 6)
                np.testing.assert_array_equal(student, numpy_view(
                    self.split.images[image],
                    self.store.views[image, row % 6], 4))
            # FKD's consistent teaching: the features read are the
            # teacher's features of the student's own view.
            np.testing.assert_allclose(
                x["teacher_features"],
                self.teacher.predict(x["student"], verbose=0),
                rtol=1e-5, atol=1e-6)
        self.assertGreater(len(chosen), 1)

    def test_choice_follows_seed_and_epoch_and_the_student_view_is_fresh(self):
        def features(**kw):
            return np.concatenate([x["teacher_features"]
                                   for x, _ in self.batches(**kw)])
        a = features(view="independent")
        np.testing.assert_array_equal(a, features(view="independent"))
        self.assertFalse(np.array_equal(a, features(view="independent",
                                                    epoch=1)))
        self.assertFalse(np.array_equal(a, features(view="independent",
                                                    seed=4)))
        # With independent views the student's view is the one a run
        # without a store draws.
        plain = pipeline.TrainStream(self.split, 8, seed=3, index=True)
        for (x, _), (y, _) in zip(self.batches("independent"),
                                  plain.epoch(0).as_numpy_iterator()):
            np.testing.assert_array_equal(x["student"], y["student"])
            np.testing.assert_array_equal(x["index"], y["index"])

    def test_each_replica_reads_its_slice(self):
        stream = pipeline.TrainStream(self.split, 8, seed=3, store=self.store,
                                      teacher_view="same")
        strategy = distribute.mirrored(["/cpu:0", "/cpu:1"])
        one = list(stream.epoch(1).as_numpy_iterator())
        two = iter(stream.distributed(strategy, 1))
        for a in one:
            b = next(two)
            for key in a[0]:
                parts = strategy.experimental_local_results(b[0][key])
                np.testing.assert_array_equal(
                    a[0][key], np.concatenate([p.numpy() for p in parts]))


class SettingsTest(TestCase):

    def test_bad_settings_are_one_line(self):
        for flags, message in (
                (["--config.teacher_views=some"],
                 "teacher_views='some': give 0"),
                (["--config.teacher_views=4", "--config.teacher_view=clean"],
                 "with teacher_view=clean the teacher's features are cached"),
                (["--config.teacher_store_dtype=int8"],
                 "teacher_store_dtype")):
            self.assertOneLineError(self.run_cli(
                "train", "--config=configs/digits.py", "--config.epochs=1",
                f"--workdir={self.tmp_path()}", *flags), message)
        with self.assertRaisesRegex(Exception, "have 50 views; use "
                                    "--config.teacher_views=all"):
            teacher_store.parse_views("51", padding=2)
        self.assertEqual(teacher_store.parse_views(" All "), "all")
        self.assertEqual(teacher_store.parse_views(8), 8)


class SharedStoreTest(TestCase):

    @pytest.mark.slow
    def test_a_grid_builds_the_store_once_and_a_fresh_process_reads_it(self):
        tmp = self.tmp_path()
        teacher = pixel_teacher(tmp / "teacher.keras")
        store_dir = tmp / "store"
        common = [f"--teacher={teacher}", "--config.data.image_size=16",
                  "--config.export=false", "--config.teacher_views=2",
                  f"--config.teacher_store_dir={store_dir}"]
        r = self.run_cli("compare", "--config=configs/digits.py",
                         "--methods=ega,kd", "--seeds=0,1", "--epochs=1",
                         "--pictures=false", f"--workdir={tmp}/grid", *common)
        self.assertSucceeded(r)
        lines = [line for line in r.stdout.splitlines()
                 if line.startswith("Teacher store")]
        self.assertLen(lines, 2, r.stdout)  # one line per lockstep group
        self.assertRegex(lines[0], r"2 views per image\): computed in \d+ s")
        self.assertIn("read (computed earlier)", lines[1])
        self.assertLen([n for n in os.listdir(store_dir)
                        if not n.endswith(".lock")], 1)
        # Another command, in a fresh process, reads the same store.
        r = self.run_subprocess(["-m", "ega_tf.train",
                                 "--config=configs/digits.py",
                                 "--config.epochs=1", "--config.seed=2",
                                 f"--workdir={tmp}/run", *common])
        self.assertSucceeded(r)
        self.assertIn("Teacher store read from", r.stderr)
        with open(tmp / "run" / "results.json") as f:
            record = json.load(f)["teacher_store"]
        self.assertFalse(record["built_by_this_run"])
        self.assertEqual(os.path.dirname(record["path"]), str(store_dir))

    @pytest.mark.slow
    def test_kill_9_mid_build_then_the_next_run_resumes_it(self):
        tmp = self.tmp_path()
        teacher = pixel_teacher(tmp / "teacher.keras")
        args = ["-m", "ega_tf.train", "--config=configs/digits.py",
                "--config.epochs=1", "--config.export=false",
                f"--teacher={teacher}", "--config.teacher_views=all",
                f"--config.teacher_store_dir={tmp / 'store'}",
                f"--workdir={tmp}/run"]
        proc = self.start_process(args)
        progress = None
        while progress is None:
            self.assertIsNone(proc.poll(), "the build ended too early")
            found = [os.path.join(tmp, "store", n, "progress.json")
                     for n in os.listdir(tmp / "store")
                     if n.endswith(".partial")] if os.path.isdir(
                tmp / "store") else []
            if found and os.path.exists(found[0]):
                progress = found[0]
            time.sleep(0.05)
        time.sleep(1.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open(progress) as f:
            done = json.load(f)["done"]
        self.assertBetween(done, 1, 1346)
        r = self.run_subprocess(args)
        self.assertSucceeded(r)
        self.assertIn(f"resuming the build at image {done} of 1347",
                      r.stderr)
        # The images on both sides of the kill hold their views' features.
        path = progress[:-len(".partial/progress.json")]
        store = teacher_store.Store(path)
        model = teachers.load(teacher)
        images = data.load("digits").train.images
        for i in (0, done - 1, done, 1346):
            views = numpy_views(images[i], store.views[i])
            np.testing.assert_allclose(
                store.features[i], model.predict(views, verbose=0),
                rtol=1e-5, atol=1e-6)
