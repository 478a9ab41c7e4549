"""Runs trained in lockstep (``loop.run_lockstep``: one batch and one
teacher forward per step for all of them) end bit for bit where each ends
alone: history, results, every checkpointed variable; a run that diverges
stops alone; the clean view's cached features are computed once; on two
replicas as on one. Both sides of every comparison run in this process, on
this machine. ``compare`` groups its cells so (tests/test_compare.py kills
such a grid and reruns it)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from ega_tf import config as config_lib
from ega_tf.comparison import grid
from ega_tf.training import divergence, loop
from ega_tf.training import workdir as wd
from tests.test_case import SMALL_CNN, TestCase, history_rows, pixel_teacher


def checkpointed(workdir):
    """{name: value} of every variable in the run's newest checkpoint."""
    path = tf.train.latest_checkpoint(os.path.join(workdir, wd.CHECKPOINTS))
    reader = tf.train.load_checkpoint(path)
    return {name: reader.get_tensor(name)
            for name in reader.get_variable_to_shape_map()}


def results_of(workdir):
    """results.json without its wall time."""
    with open(os.path.join(workdir, wd.RESULTS)) as f:
        results = json.load(f)
    results.pop("wall_time_s")
    return results


class LockstepTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = cls.class_tempdir()
        cls.teacher = pixel_teacher(cls.dir / "teacher.keras")

    def config(self, method, student=SMALL_CNN, **fields):
        c = config_lib.default_config()
        c.dataset, c.teacher = "digits", self.teacher
        c.distill, c.student = method, student
        # 21 steps of 64, checkpoints inside the epoch; digits at 16 px
        # (the teacher resizes them to its 32).
        c.epochs, c.labeled_fraction, c.export = 1, 0.1, False
        c.data.image_size = 16
        c.checkpoint_every_steps = 10
        for name, value in fields.items():
            section, _, field = name.rpartition("__")
            (c[section] if section else c)[field] = value
        return config_lib.resolve(c)

    def assertSameRun(self, group_dir, alone_dir):
        self.assertEqual(history_rows(group_dir), history_rows(alone_dir))
        self.assertEqual(results_of(group_dir), results_of(alone_dir))
        a, b = checkpointed(group_dir), checkpointed(alone_dir)
        self.assertEqual(sorted(a), sorted(b))
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)

    def test_each_run_ends_where_it_ends_alone(self):
        """CRD (its banks read the examples' indices, which the group's
        batches carry); cross-entropy alone (no teacher) with another
        student; EGA at a rate that diverges within the first steps. (EGA
        that trains is in the next test.)"""
        from unittest import mock

        from ega_tf.training import cell
        tmp = self.tmp_path()
        runs = [self.config("ega", optim__lr=1e4), self.config("crd"),
                self.config("none", "resnet8")]
        made = []

        def keep(make):
            return lambda *a: made.append(make(*a)) or made[-1]
        with mock.patch.object(cell, "cell_step_function",
                               keep(cell.cell_step_function)), \
                mock.patch.object(loop, "fetch_function",
                                  keep(loop.fetch_function)):
            outcomes = loop.run_lockstep(
                [(c, str(tmp / "group" / str(i)))
                 for i, c in enumerate(runs)])
        self.assertEqual([type(o).__name__ for o in outcomes],
                         ["DivergedError", "dict", "dict"])
        # Two fetches (training, evaluation) and each run's train and test
        # steps, each traced at most once: every batch of a stream has one
        # shape. (TensorFlow's retracing warning, which counts the traces
        # of every step function the group makes as one function's, is
        # therefore dropped: loop._RetracingFilter.)
        self.assertLen(made, 2 + 2 * len(runs))
        traces = [f.experimental_get_tracing_count() for f in made]
        self.assertLessEqual(max(traces), 1, traces)
        self.assertGreaterEqual(sum(traces), 6, traces)
        # The others went on after the first run stopped.
        self.assertEqual([o["epochs"] for o in outcomes[1:]], [1, 1])
        for i in (1, 2):
            with self.subTest(run=runs[i].distill):
                alone = str(tmp / "alone" / str(i))
                loop.run(runs[i], alone, verbose=0)
                self.assertSameRun(str(tmp / "group" / str(i)), alone)
        with self.assertRaises(divergence.DivergedError) as e:
            loop.run(runs[0], str(tmp / "alone" / "0"), verbose=0)
        self.assertEqual(str(e.exception), str(outcomes[0]))
        self.assertIn("learning rate 10000", str(outcomes[0]))
        self.assertEqual(results_of(tmp / "group" / "0"),
                         results_of(tmp / "alone" / "0"))
        # A finished group asked again reports every run as it stands.
        again = loop.run_lockstep(
            [(c, str(tmp / "group" / str(i))) for i, c in enumerate(runs)])
        self.assertEqual(again[1:], outcomes[1:])
        self.assertEqual(str(again[0]), str(outcomes[0]))

    def test_cached_teacher_features_are_computed_once(self):
        """With the clean view the group reads one copy of the features,
        linked into every run's workdir; the runs still end as alone."""
        tmp = self.tmp_path()
        runs = [self.config(m, teacher_view="clean") for m in ("ega", "kd")]
        with self.assertLogs("absl", "INFO") as logs:
            loop.run_lockstep(
                [(c, str(tmp / "group" / m)) for c, m in zip(runs, "ab")])
        computed = [line for line in logs.output
                    if "computed once" in line]
        self.assertLen(computed, 2)  # the training and the test images
        for split in ("train", "test"):
            a, b = (tmp / "group" / m / wd.features_file(split)
                    for m in "ab")
            self.assertTrue(os.path.samefile(a, b), split)
        loop.run(runs[1], str(tmp / "alone"), verbose=0)
        self.assertSameRun(str(tmp / "group" / "b"), str(tmp / "alone"))

    @pytest.mark.slow
    def test_two_replicas(self):
        """On two (logical CPU) devices, as on one."""
        tmp = self.tmp_path()
        runs = [self.config(m, distribute__strategy="mirrored",
                            distribute__cpu_replicas=2)
                for m in ("ega", "crd")]
        loop.run_lockstep(
            [(c, str(tmp / "group" / m)) for c, m in zip(runs, "ab")])
        loop.run(runs[1], str(tmp / "alone"), verbose=0)
        self.assertSameRun(str(tmp / "group" / "b"), str(tmp / "alone"))

    def test_groups_and_bad_groups(self):
        cells = grid.make_cells(["none", "ega"], [0, 1], ["resnet8"],
                                [0.1, 1.0])
        configs = grid.configs(self.config("ega"), cells)
        groups = grid.lockstep_groups(cells, configs)
        self.assertEqual(
            [[(c.method.name, c.seed, c.labeled_fraction) for c in g]
             for g in groups],
            [[("none", s, f), ("ega", s, f)] for f in (0.1, 1.0)
             for s in (0, 1)])
        with self.assertRaisesRegex(ValueError, "must share every config "
                                    "field but distill, loss"):
            loop.run_lockstep([(self.config("ega"), "a"),
                               (self.config("ega", seed=1), "b")])
        with self.assertRaisesRegex(ValueError, "a workdir each"):
            loop.run_lockstep([(self.config("ega"), "a"),
                               (self.config("kd"), "a")])
