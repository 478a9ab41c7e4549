"""A method of the user's own, from a file: docs/methods.md's example, run
as written, through train (its field overridden and checked, its term
logged, its state checkpointed, a resume), compare, and one device against
two in lockstep; bad files get one line."""

import json
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from ega_tf import methods, students
from ega_tf.nn import layers
from ega_tf.nn.optimizers import TorchSGD
from ega_tf.students.head import build_student
from ega_tf.training import distribute
from ega_tf.training.distiller import Distiller
from tests.test_case import (ROOT, SMALL_CNN, TestCase, conv_teacher,
                             history_rows, lockstep_errors, pixel_teacher,
                             run_lockstep, small_cnn)

CLASS = "CentredCosine"


def documented_method():
    """The fenced block of docs/methods.md that begins with
    ``# file: my_method.py``."""
    text = (ROOT / "docs" / "methods.md").read_text()
    blocks = re.findall(r"```python\n(# file: my_method\.py\n.*?)```", text,
                        re.S)
    assert len(blocks) == 1, "docs/methods.md: one my_method.py block"
    return blocks[0]


class UserMethodTest(TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = cls.class_tempdir()
        (cls.dir / "my_method.py").write_text(documented_method())
        cls.spec = f"{cls.dir / 'my_method.py'}:{CLASS}"
        cls.teacher = pixel_teacher(cls.dir / "teacher.keras")

    def test_trains_and_resumes_from_the_command_line(self):
        tmp = self.tmp_path()
        args = ["--config=configs/digits.py", f"--teacher={self.teacher}",
                f"--distill={self.spec}", "--epochs=1",
                "--config.loss.momentum=0.5", "--config.export=false",
                "--config.checkpoint_every_steps=10",
                "--config.data.image_size=16", f"--student={SMALL_CNN}"]
        r = self.run_cli("train", *args, f"--workdir={tmp}/w")
        self.assertSucceeded(r)
        rows = history_rows(tmp / "w")
        self.assertLen(rows, 1)
        self.assertIn("cosine", rows[0])
        self.assertTrue(0 < rows[-1]["cosine"] < 2)
        # The student's loss is gamma * CE + beta * cosine (1, 1).
        self.assertAllClose(rows[0]["loss"], rows[0]["ce"]
                            + rows[0]["cosine"], rtol=1e-5)
        config = json.loads((tmp / "w" / "config.json").read_text())
        self.assertEqual((config["distill"], config["loss"]["momentum"]),
                         (self.spec, 0.5))
        reader = tf.train.load_checkpoint(str(tmp / "w" / "checkpoints"))
        names = reader.get_variable_to_shape_map()
        self.assertIn("method/centre/.ATTRIBUTES/VARIABLE_VALUE", names)
        self.assertGreater(np.abs(reader.get_tensor(
            "method/centre/.ATTRIBUTES/VARIABLE_VALUE")).max(), 0)
        # Killed after its checkpoint at step 10, then resumed: on this
        # machine, bit for bit the uninterrupted run, both in this process.
        # (This caught Grappler regrouping the logged total's float32 sum
        # between two traces, 1 ulp of 'loss'; the Distiller now sums it in
        # float64.)
        from ega_tf import config as config_lib
        from ega_tf.training import loop

        class Crash(Exception):
            pass

        def crash(epoch, step, logs):
            if (epoch, step) == (0, 14):
                raise Crash
        c = config_lib.default_config()
        c.update(config)
        with self.assertRaises(Crash):
            loop.run(config_lib.resolve(c), str(tmp / "k"), verbose=0,
                     on_step=crash)
        loop.run(config_lib.resolve(c), str(tmp / "k"), verbose=0)
        loop.run(config_lib.resolve(c), str(tmp / "u"), verbose=0)
        self.assertEqual(history_rows(tmp / "k"), history_rows(tmp / "u"))
        self.assertAllClose(history_rows(tmp / "u")[0]["ce"], rows[0]["ce"],
                            rtol=1e-5)  # the command line's run
        # In a grid its cells are named by its class.
        from ega_tf.comparison import grid
        cell, = grid.make_cells([self.spec], [0], ["resnet8"], [0.1])
        self.assertEqual(cell.name, "centred_cosine_resnet8_lf0.1_s0")

    def test_measuring_the_gradients_leaves_the_published_step_alone(self):
        """With published weights the step measures each term's gradient
        on the student's embedding and logs it, and must not change a bit
        of the training: the same steps with the measurement taken out
        give the same state. (The two backward passes once ran side by
        side and made this method's student gradient differ from run to
        run.)"""
        from tests.test_case import run_replica_steps, training_state
        rng = np.random.default_rng(0)
        batches = []
        for _ in range(3):
            y = rng.integers(0, 5, 32)
            y[rng.random(32) > 0.3] = -1
            batches.append(({v: rng.integers(0, 256, (32, 16, 16, 3),
                                             np.uint8)
                             for v in ("student", "teacher")}, y))
        states = []
        for measure in (True, False):
            keras.utils.set_random_seed(0)
            student = build_student(students.create(
                "resnet8", input_shape=(16, 16, 3)), 5, 16)
            method = methods.create(self.spec, {"momentum": 0.5},
                                    embed_dim=16)
            model = Distiller(student, conv_teacher(16), 5, 16,
                              method=method)
            if not measure:
                model.gradient_parts, model.gradient_monitor = [], None
            model.compile(TorchSGD(0.05),
                          teacher_head_optimizer=TorchSGD(0.01))
            logs = run_replica_steps(model, tf.distribute.get_strategy(),
                                     batches)
            # Taken out, its tracker is never updated.
            self.assertEqual(logs[0]["grad_ratio_centred_cosine"] > 0,
                             measure)
            states.append({k: v.numpy() for k, v in
                           training_state(model).items()
                           if not k.startswith("gradient_monitor")})
        self.assertEqual(list(states[0]), list(states[1]))
        for k in states[0]:
            np.testing.assert_array_equal(states[0][k], states[1][k], k)

    @pytest.mark.slow
    def test_compare_next_to_a_built_in_method(self):
        tmp = self.tmp_path()
        r = self.run_cli("compare", "--config=configs/digits.py",
                         f"--teacher={self.teacher}", "--epochs=1",
                         f"--methods=none,{self.spec}", "--seeds=0",
                         "--pictures=false", "--config.export=false",
                         "--config.data.image_size=16",
                         f"--workdir={tmp}/grid")
        self.assertSucceeded(r)
        self.assertTrue((tmp / "grid" / "centred_cosine_resnet8_lf0.1_s0" /
                         "results.json").exists())
        self.assertIn("| centred_cosine |", (tmp / "grid" /
                                             "summary.md").read_text())

    def test_its_fields_are_checked_like_a_built_in_methods(self):
        tmp = self.tmp_path()
        base = ["--config=configs/digits.py", f"--teacher={self.teacher}",
                f"--workdir={tmp}/w"]
        for args, message in (
                ([f"--distill={self.spec}", "--config.loss.momentum=1.5"],
                 "loss.momentum must be in [0, 1); got 1.5"),
                ([f"--distill={self.spec}", "--config.loss.node_weight=1"],
                 "loss.node_weight is not read by --distill="),
                ([f"--distill={tmp}/absent.py:{CLASS}"], "does not exist"),
                ([f"--distill={self.dir / 'my_method.py'}:Nope"],
                 f"has no Method subclass named 'Nope' (it defines {CLASS})")):
            with self.subTest(args=args):
                self.assertOneLineError(self.run_cli("train", *base, *args),
                                        message)
        broken = tmp / "broken.py"
        broken.write_text("from ega_tf import methods\n\n"
                          "raise RuntimeError('not ready')\n")
        self.assertOneLineError(
            self.run_cli("train", *base, f"--distill={broken}:X"),
            f"running the file failed at {broken}:3: RuntimeError: not "
            "ready")
        self.assertFalse((tmp / "w").exists())

    def test_one_device_and_two_give_the_same_steps(self):
        cls = methods.get(self.spec)
        self.assertEqual(cls.name, "centred_cosine")
        rng = np.random.default_rng(0)
        batches = [({v: rng.integers(0, 256, (16, 16, 16, 3), np.uint8)
                     for v in ("student", "teacher")},
                    rng.integers(0, 5, 16)) for _ in range(3)]
        pairs = []
        for strategy in (tf.distribute.get_strategy(),
                         distribute.mirrored(["/cpu:0", "/cpu:1"])):
            with strategy.scope():
                keras.utils.set_random_seed(0)
                student = build_student(
                    small_cnn((16, 16, 3), raw_pixels=False), 5, 8)
                layers.synchronize_batchnorm(student, True)
                model = Distiller(student, conv_teacher(16), 5, 8,
                                  method=methods.create(self.spec,
                                                        embed_dim=8))
                model.compile(TorchSGD(0.01),
                              teacher_head_optimizer=TorchSGD(0.01))
            pairs.append((model, strategy))
        steps = run_lockstep(*pairs, batches)
        terms, state = lockstep_errors(steps)
        print(f"centred_cosine, 1 vs 2 replicas: terms "
              f"{max(terms.values()):.1e}, state {max(state.values()):.1e}")
        self.assertLessEqual(max(terms.values()), 1e-4)
        self.assertLessEqual(max(state.values()), 1e-4)
        # The centre moved, the same on both.
        centre = next(k for k in steps[-1][2] if k.endswith("/centre"))
        self.assertGreater(np.abs(steps[-1][2][centre]).max(), 0)
