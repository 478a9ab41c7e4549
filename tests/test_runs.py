"""A run survives a crash and ends where an uninterrupted one would; a
workdir belongs to one run; a diverged run says so; the command line runs on
two devices and on two worker processes.

The bit-for-bit comparisons here (a resumed run against an uninterrupted
one, a rerun against the first run) compare two runs on the same machine
with the same threads: that is what must hold everywhere. Values that only
one CPU produces (an accuracy after two epochs) are never asserted; that
one device and two compute the same step is tested in lockstep
(tests/test_distribute.py)."""

import functools
import json
import os
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

from ega_tf import config as config_lib
from ega_tf import data
from ega_tf.core.errors import UserError
from ega_tf.training import loop, report
from tests.test_case import SMALL_CNN, TestCase, history_rows, pixel_teacher

# Digits at 16 px (the teacher resizes them to its 32): a quarter of the
# arithmetic of the default 32 for the same steps and checks.
SMALL = "--config.data.image_size=16"


class Crash(Exception):
    """Stands for a process killed at this point."""


def crash_at(epoch, step):
    def on_step(e, s, logs):
        if (e, s) == (epoch, step):
            raise Crash
    return on_step


class ResumeTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = cls.class_tempdir()
        cls.teacher = pixel_teacher(cls.dir / "teacher.keras")

    def config(self, **kw):
        c = config_lib.default_config()
        c.dataset, c.student, c.teacher = "digits", SMALL_CNN, self.teacher
        c.epochs, c.labeled_fraction = 2, 0.1
        c.checkpoint_every, c.checkpoint_every_steps = 2, 7
        c.data.image_size = 16  # digits small: the teacher resizes to 32
        for k, v in kw.items():
            setattr(c, k, v)
        return config_lib.resolve(c)

    def outputs(self, workdir):
        serve = tf.saved_model.load(str(workdir / "saved_model")).signatures[
            "serving_default"]
        images = data.load("digits", image_size=16).test.images[:64]
        return serve(images=tf.constant(images))["logits"].numpy()

    def test_a_crashed_run_ends_where_an_uninterrupted_one_does(self):
        """Both runs on this machine, so bit for bit. With balanced
        weights, whose moving averages of the gradient norms set every
        step's weight: they must come back from the checkpoint exactly
        (the published weights' state is a subset of this)."""
        tmp = self.tmp_path()
        self.config = functools.partial(self.config, weights="balanced")
        whole = loop.run(self.config(), str(tmp / "whole"), verbose=0)
        # 21 steps an epoch; checkpoints every 7 steps and at the end of
        # epoch 2 (every 2 epochs). The crash comes in epoch 2 at step 11,
        # after epoch 1's history row was written.
        run = tmp / "crashed"
        with self.assertRaises(Crash):
            loop.run(self.config(), str(run), verbose=0,
                     on_step=crash_at(1, 10))
        history = (run / "history.csv").read_text().splitlines()
        self.assertLen(history, 2)  # header, epoch 1
        self.assertFalse((run / "results.json").exists())
        ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.index"))
        self.assertEqual(ckpts, ["ckpt-14.index", "ckpt-28.index",
                                 "ckpt-7.index"])
        # The newest checkpoint is damaged (a disk filled up, say): the run
        # falls back to the one before, inside epoch 1, so epoch 1's row is
        # dropped and computed again from the restored running metrics.
        data_file = next((run / "checkpoints").glob("ckpt-28.data-*"))
        data_file.write_bytes(data_file.read_bytes()[:100])
        with self.assertLogs("absl", "INFO") as logs:
            again = loop.run(self.config(), str(run), verbose=0)
        text = "\n".join(logs.output)
        self.assertIn("ckpt-28 cannot be read", text)
        self.assertIn("ckpt-14 (epoch 0, step 14)", text)
        self.assertEqual((run / "history.csv").read_text().split("\n")[0],
                         (tmp / "whole" / "history.csv").read_text().split(
                             "\n")[0])
        # Every epoch, every term, bit for bit.
        self.assertEqual(history_rows(tmp / "whole"), history_rows(run))
        for key in ("epochs", "test_top1_best", "test_top1_last",
                    "teacher_head_top1_last"):
            self.assertEqual(again[key], whole[key], key)
        np.testing.assert_array_equal(self.outputs(run),
                                      self.outputs(tmp / "whole"))

    def test_a_workdir_belongs_to_one_run(self):
        tmp = self.tmp_path()
        work = tmp / "w"
        config = self.config(epochs=1, checkpoint_every_steps=None)
        first = loop.run(config, str(work), verbose=0)
        stamps = {p: p.stat().st_mtime_ns for p in work.rglob("*")
                  if p.is_file()}
        for changes in ({"seed": 1}, {"labeled_fraction": 0.2},
                        {"epochs": 2}):
            with self.subTest(changes=changes):
                with self.assertRaises(UserError) as e:
                    loop.run(self.config(**{
                        "epochs": 1, "checkpoint_every_steps": None,
                        **changes}), str(work), verbose=0)
                field = next(iter(changes))
                self.assertIn(f"{field}: ", str(e.exception))
                self.assertIn("--config.resume=false", str(e.exception))
        # The same config: reported, nothing rewritten. Operational fields
        # (where data lives, how often to checkpoint) may differ.
        again = loop.run(self.config(epochs=1, checkpoint_every=3,
                                     checkpoint_every_steps=None),
                         str(work), verbose=0)
        self.assertEqual(again, first)
        self.assertEqual({p: p.stat().st_mtime_ns for p in stamps}, stamps)
        # A leftover of an export killed mid-write is removed at the start.
        stale = work / ".saved_model.x1y2z3"
        stale.mkdir()
        (stale / "saved_model.pb").write_bytes(b"partial")
        loop.run(self.config(epochs=1, checkpoint_every_steps=None),
                 str(work), verbose=0)
        self.assertFalse(stale.exists())
        # resume=false starts over in it.
        c = self.config(epochs=1, checkpoint_every_steps=None, seed=1,
                        export=False)
        c.resume = False
        third = loop.run(c, str(work), verbose=0)
        self.assertEqual(third["seed"], 1)
        self.assertEqual(json.loads((work / "config.json").read_text())[
            "seed"], 1)

    def test_divergence_stops_the_run_and_says_where(self):
        tmp = self.tmp_path()
        r = self.run_cli("train", "--dataset=digits", "--student=resnet8",
                         f"--teacher={self.teacher}", "--epochs=2",
                         "--config.optim.lr=1e6", SMALL,
                         "--config.checkpoint_every_steps=1",
                         f"--workdir={tmp}/w")
        self.assertEqual(r.code, 3, r.stderr)
        lines = r.output_lines
        self.assertLen(lines, 1)
        # The first term, or a checkpointed variable (the weights may
        # overflow before a logged term does), that stopped being finite.
        self.assertRegex(lines[0], r"^stopped: training diverged(: [\w/]+ "
                         r"became (nan|inf|inf or nan))? at epoch 1, step "
                         r"(\d+)")
        res = json.loads((tmp / "w" / "results.json").read_text())
        self.assertEqual(res["status"], "diverged")
        self.assertFalse((tmp / "w" / "saved_model").exists())
        # The checkpoints kept are the finite ones before the step.
        step = res["diverged"]["step"]
        kept = sorted((tmp / "w" / "checkpoints").glob("*.index"))
        self.assertTrue(kept)
        self.assertLess(int(kept[-1].name[5:-6]), step)
        reader = tf.train.load_checkpoint(str(kept[-1])[:-6])
        for name in reader.get_variable_to_shape_map():
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                self.assertTrue(np.all(np.isfinite(value)), name)
        # Running it again reports the divergence, trains nothing.
        r = self.run_cli("train", "--dataset=digits", "--student=resnet8",
                         f"--teacher={self.teacher}", "--epochs=2",
                         "--config.optim.lr=1e6", SMALL,
                         "--config.checkpoint_every_steps=1",
                         f"--workdir={tmp}/w")
        self.assertEqual(r.code, 3)
        self.assertIn("training diverged", r.stderr)

    def common(self):
        return ["--dataset=digits", f"--student={SMALL_CNN}",
                f"--teacher={self.teacher}", "--epochs=1",
                "--labeled_fraction=0.1", "--config.export=false",
                "--config.distribute.strategy=mirrored", SMALL]

    def test_mirrored_two_replica_command_line(self):
        tmp = self.tmp_path()
        r = self.run_cli("train", *self.common(), f"--workdir={tmp}/two",
                         "--config.distribute.cpu_replicas=2")
        self.assertSucceeded(r)
        self.assertIn("Strategy mirrored: 2 replica(s)", r.stderr)
        self.assertLen(history_rows(tmp / "two"), 1)

    def test_validation_rejects_before_a_workdir_exists(self):
        tmp = self.tmp_path()
        for args in (["--dataset=digitz"], ["--batch_size=1"],
                     ["--config.distribute.cpu_replicas=0"]):
            with self.subTest(args=args):
                r = self.run_cli("train", f"--workdir={tmp}/never",
                                 "--distill=none", *args)
                self.assertEqual(r.code, 2)
                self.assertFalse((tmp / "never").exists())


class ProcessesTest(TestCase):
    """Real processes: kill -9, and two workers over loopback."""

    ARGS = ["--dataset=digits", "--student=resnet8", "--labeled_fraction=0.1",
            "--verbose=2", SMALL]

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = cls.class_tempdir()
        cls.teacher = pixel_teacher(cls.dir / "teacher.keras")

    @pytest.mark.slow  # three processes
    def test_a_failing_worker_stops_the_launch_with_its_status(self):
        tmp = self.tmp_path()
        r = self.run_subprocess(["-m", "ega_tf.launch", "--workers=2", "--",
                                 "--dataset=digitz", f"--workdir={tmp}/bad"])
        self.assertEqual(r.returncode, 2, r.stdout[-2000:])
        self.assertRegex(r.stdout, r"\[worker 0\] error: .*Unknown dataset "
                         r"'digitz'")
        self.assertIn("failed with status 2", r.stdout)
        self.assertFalse((tmp / "bad").exists())

    @pytest.mark.slow
    def test_two_workers_give_the_two_replica_run(self):
        tmp = self.tmp_path()
        args = [*self.ARGS, f"--teacher={self.teacher}", "--epochs=2"]
        r = self.run_subprocess(["-m", "ega_tf.launch", "--workers=2", "--",
                                 *args, f"--workdir={tmp}/mw"], timeout=900)
        self.assertSucceeded(r)
        self.assertIn("[worker 1]", r.stdout)
        self.assertIn("Strategy multi_worker: 2 replica(s) on 2 workers",
                      r.stdout)
        written = sorted(p.name for p in (tmp / "mw").iterdir())
        self.assertEqual(written, ["checkpoints", "config.json",
                                   "history.csv", "logs", "probe.npz",
                                   "results.json", "saved_model"])
        self.assertSucceeded(self.run_cli(
            "train", *args, f"--workdir={tmp}/mirrored",
            "--config.distribute.strategy=mirrored",
            "--config.distribute.cpu_replicas=2"))
        # The same arithmetic but for the collectives' implementation
        # (ring across processes, local within one): equal to float32.
        a, b = history_rows(tmp / "mw"), history_rows(tmp / "mirrored")
        self.assertLen(a, 2)
        apart = max(abs(v - row_b[k]) / max(abs(v), 1e-12)
                    for row_a, row_b in zip(a, b) for k, v in row_a.items())
        # Both on this machine: 1.2e-7 measured.
        print(f"two workers against two mirrored replicas: {apart:.1e}")
        for row_a, row_b in zip(a, b):
            for k, v in row_a.items():
                self.assertAllClose(v, row_b[k], rtol=1e-5, msg=k)
        res = json.loads((tmp / "mw" / "results.json").read_text())
        self.assertEqual(res["epochs"], 2)

    @pytest.mark.slow
    def test_kill_9_then_the_same_command_ends_like_an_uninterrupted_run(
            self):
        tmp = self.tmp_path()
        args = [*self.ARGS, f"--teacher={self.teacher}", "--epochs=6",
                "--config.checkpoint_every_steps=5"]
        self.assertSucceeded(self.run_subprocess(
            ["-m", "ega_tf.train", *args, f"--workdir={tmp}/whole"]))
        proc = self.start_process(["-m", "ega_tf.train", *args,
                                   f"--workdir={tmp}/k"])
        history = tmp / "k" / "history.csv"
        while len(history.read_text().splitlines()) < 3 \
                if history.exists() else True:  # noqa: E127
            time.sleep(0.2)
        time.sleep(1.5)  # into epoch 3
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.assertSucceeded(self.run_subprocess(
            ["-m", "ega_tf.train", *args, f"--workdir={tmp}/k"]))
        a = json.loads((tmp / "whole" / "results.json").read_text())
        b = json.loads((tmp / "k" / "results.json").read_text())
        self.assertEqual(a["test_top1_last"], b["test_top1_last"])
        self.assertEqual(
            history_rows(tmp / "whole"), history_rows(tmp / "k"))

    @pytest.mark.slow
    def test_killing_a_worker_then_relaunching_resumes(self):
        tmp = self.tmp_path()
        args = [*self.ARGS, f"--teacher={self.teacher}", "--epochs=3",
                "--config.checkpoint_every_steps=5"]
        whole = self.run_subprocess(["-m", "ega_tf.launch", "--workers=2",
                                     "--", *args, f"--workdir={tmp}/whole"])
        self.assertSucceeded(whole)
        proc = self.start_process(["-m", "ega_tf.launch", "--workers=2",
                                   "--", *args, f"--workdir={tmp}/k"])
        history = tmp / "k" / "history.csv"
        while not history.exists() or len(
                history.read_text().splitlines()) < 2:
            time.sleep(0.2)
        time.sleep(2)
        import subprocess
        workers = subprocess.run(
            ["pgrep", "-f", f"workdir={tmp}/k"], capture_output=True,
            text=True).stdout.split()
        os.kill(int([w for w in workers if int(w) != proc.pid][-1]),
                signal.SIGKILL)
        self.assertNotEqual(proc.wait(timeout=300), 0)
        self.assertSucceeded(self.run_subprocess(
            ["-m", "ega_tf.launch", "--workers=2", "--", *args,
             f"--workdir={tmp}/k"]))
        self.assertEqual(
            history_rows(tmp / "whole"), history_rows(tmp / "k"))


_DEAD = '''
import keras


def dead(input_shape):
    """A student whose pooled features are all exactly zero."""
    inputs = keras.Input(input_shape)
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.ReLU(max_value=0.0)(x))
'''


class CollapseTest(TestCase):

    def test_history_says_since_when_and_whether_it_recovered(self):
        def rows(*shares):
            return [{"epoch": i, "test_zero_features": s}
                    for i, s in enumerate(shares)]
        self.assertEqual(report.collapse(rows(0.0, 0.1)),
                         (False, None, 0.1))
        self.assertEqual(report.collapse(rows(0.1, 0.6, 0.9)),
                         (True, 2, 0.9))
        self.assertEqual(report.collapse(rows(0.6, 0.1, 0.5)),
                         (True, 3, 0.5))  # threshold included; recovered once
        self.assertEqual(report.collapse(rows(0.9, 0.2)),
                         (False, None, 0.2))
        self.assertEqual(report.collapse([{"epoch": 0}]),
                         (False, None, None))  # a run that does not log it

    def test_a_dead_student_says_so_in_one_line_and_in_its_results(self):
        import sys
        tmp = self.tmp_path()
        (tmp / "dead_student.py").write_text(_DEAD)
        sys.path.insert(0, str(tmp))
        self.addCleanup(sys.path.remove, str(tmp))
        c = config_lib.default_config()
        c.dataset, c.student, c.distill = ("digits", "dead_student:dead",
                                           "none")
        c.epochs, c.export, c.data.image_size = 2, False, 16
        with self.assertLogs("absl", "WARNING") as logs:
            results = loop.run(config_lib.resolve(c), str(tmp / "w"),
                               verbose=0)
        warnings = [m for m in logs.output if "collapsed" in m]
        self.assertLen(warnings, 1)  # once, not every epoch
        self.assertIn("collapsed at epoch 1: 100% of its pooled features "
                      "are exactly zero", warnings[0])
        self.assertEqual((results["collapsed"],
                          results["collapsed_since_epoch"],
                          results["test_zero_features_last"]), (True, 1, 1.0))
        saved = json.loads((tmp / "w" / "results.json").read_text())
        self.assertEqual(saved["collapsed"], True)
        self.assertEqual([r["test_zero_features"]
                          for r in history_rows(tmp / "w")], [1.0, 1.0])
