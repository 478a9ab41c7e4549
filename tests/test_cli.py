"""The command lines end to end on digits: pretrain -> train -> predict,
each once as a real program (python -m) and otherwise in this process."""

import json

import numpy as np
import tensorflow as tf

from ega_tf import data
from tests.test_case import TestCase

# TensorFlow's C++ start-up notices that the commands must not show.
_NOISE = ("oneDNN custom operations", "cuInit", "Could not find cuda",
          "absl::InitializeLog")


class EndToEndTest(TestCase):

    def test_pretrain_train_predict_as_a_user_would(self):
        """pretrain and predict as programs (``python -m``), train in this
        process between them on the teacher file pretrain wrote; predict
        reads the SavedModel train exported."""
        tmp = self.tmp_path()
        user = {"TF_CPP_MIN_LOG_LEVEL": ""}  # as in a fresh shell
        teacher = tmp / "t.keras"
        r = self.run_subprocess(["-m", "ega_tf.pretrain",
                                 "--config=ega_tf/ssl/config.py:smoke",
                                 "--arch=resnet8", f"--out={teacher}"],
                                env=user)
        self.assertSucceeded(r)
        self.assertIn("SimCLR teacher resnet8 on digits", r.stdout)
        for noise in _NOISE:
            self.assertNotIn(noise, r.stderr)
        summary = json.loads(r.stdout.strip().splitlines()[-1])
        # Digits' classes are far apart: a resnet8 of random weights
        # already reaches 0.81-0.89 by k-NN, and one epoch of SimCLR leaves
        # it there (0.82-0.91 over seeds 0-4, with 1 thread and with
        # oneDNN off). Below 0.5 (chance 0.1) the features or the labels
        # are broken, on any CPU.
        self.assertGreater(summary["knn_top1"], 0.5)
        self.assertGreater(summary["knn_top1_random_init"], 0.5)

        work = tmp / "run"
        args = ["--dataset=digits", "--student=resnet8", f"--teacher={teacher}",
                "--epochs=2", "--labeled_fraction=0.5", f"--workdir={work}",
                "--config.optim.lr=0.01"]
        r = self.run_cli("train", *args)
        self.assertSucceeded(r)
        res = json.loads((work / "results.json").read_text())
        history = (work / "history.csv").read_text().splitlines()
        header = history[0].split(",")
        rows = [dict(zip(header, map(float, h.split(","))))
                for h in history[1:]]
        self.assertLen(rows, 2)
        self.assertEqual(res["epochs"], 2)
        self.assertAlmostEqual(res["test_top1_last"],
                               100 * rows[-1]["test_top1"], places=4)
        self.assertAlmostEqual(res["test_top1_best"],
                               100 * max(r["test_top1"] for r in rows),
                               places=4)
        self.assertIsNotNone(res["teacher_head_top1_last"])
        cfg = json.loads((work / "config.json").read_text())
        self.assertEqual((cfg["optim"]["lr"], cfg["labeled_fraction"]),
                         (0.01, 0.5))
        self.assertTrue((work / "saved_model" / "saved_model.pb").exists())
        for name in ("ce", "node", "edge", "top1", "top5", "teacher_top1",
                     "test_top1"):
            self.assertIn(name, header)
        # The same command again: the run is complete; its results are
        # reported, not rewritten.
        before = (work / "results.json").read_bytes()
        r = self.run_cli("train", *args)
        self.assertSucceeded(r)
        self.assertIn("holds a finished run of this config", r.stderr)
        self.assertEqual((work / "results.json").read_bytes(), before)
        self.assertEqual(json.loads(r.stdout[:r.stdout.rindex("}") + 1]),
                         res)

        digits = data.load("digits")
        paths = []
        for i in range(3):
            p = tmp / f"d{i}.png"
            p.write_bytes(tf.io.encode_png(digits.test.images[i]).numpy())
            paths.append(p)
        r = self.run_subprocess(["-m", "ega_tf.predict",
                                 f"--model={work}/saved_model", "--top_k=2",
                                 *paths], env=user)
        self.assertSucceeded(r)
        lines = r.stdout.strip().splitlines()
        self.assertLen(lines, 3)
        self.assertTrue(all(line.count("%") == 2 for line in lines))
        self.assertEqual(r.stderr.strip(), "")
        r = self.run_subprocess(["-m", "ega_tf.train", "--helpshort"],
                                env=user)
        self.assertEqual(r.returncode, 0)
        self.assertIn("Config fields", r.stdout)
        self.assertEqual(r.stderr.strip(), "")

    def test_bad_input_one_clear_line(self):
        work = self.tmp_path() / "w"
        for args, message in (
                (["--dataset=digits", "--student=resnet9", "--distill=none"],
                 "Valid names: MobileNetV2"),
                (["--dataset=digits"], "--distill=ega needs a teacher"),
                (["--dataset=digits", "--teacher=/nonexistent.keras"],
                 "does not exist"),
                (["--dataset=digits", "--distill=none",
                  "--config.precision=fp8"], "Valid values: float32")):
            with self.subTest(args=args):
                self.assertOneLineError(
                    self.run_cli("train", f"--workdir={work}", *args),
                    message)
        r = self.run_cli("pretrain", "--out=x.h5", "--epochs=1")
        self.assertOneLineError(r, "must end in .keras")
        np.testing.assert_equal(r.stdout, "")  # nothing trained


# A checkpoint whose unpickling would run code: it writes a marker file.
_EVIL = """
import os, sys, torch
class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {sys.argv[2]}",))
torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Payload()},
           sys.argv[1])
"""

# A tool run where `import matplotlib` fails, as if the extra were absent.
_NO_MATPLOTLIB = """
import runpy, sys
class NoMatplotlib:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "matplotlib":
            raise ModuleNotFoundError("No module named 'matplotlib'")
sys.meta_path.insert(0, NoMatplotlib())
sys.argv = ["plot_history.py", *sys.argv[1:]]
runpy.run_path("tools/plot_history.py", run_name="__main__")
"""


class BadInputTest(TestCase):
    """Bad input gets one line naming the fix, and leaves nothing behind."""

    def test_a_pickle_payload_never_runs_and_the_message_says_why(self):
        tmp = self.tmp_path()
        evil, marker = tmp / "evil.pth", tmp / "ran"
        self.assertSucceeded(self.run_subprocess(["-c", _EVIL, evil, marker]))
        r = self.run_cli("train", "--dataset=digits", f"--teacher={evil}",
                         f"--workdir={tmp}/w")
        self.assertOneLineError(r, "--allow_pickle runs code stored in the "
                                "file")
        self.assertIn("train --allow_pickle", r.stderr)
        self.assertFalse(marker.exists())
        self.assertFalse((tmp / "w").exists())
        # A text file named .pth is not called a pickle.
        (tmp / "notes.pth").write_text("my notes")
        r = self.run_cli("train", "--dataset=digits",
                         f"--teacher={tmp}/notes.pth", f"--workdir={tmp}/w")
        self.assertOneLineError(r, "is not a checkpoint")
        self.assertNotIn("allow_pickle", r.stderr)
        self.assertFalse((tmp / "w").exists())
        # The parity tool says the same in one line.
        r = self.run_subprocess(["tools/parity.py",
                                 f"--checkpoint={tmp}/notes.pth",
                                 f"--image={tmp}/none.png"])
        self.assertOneLineError(r, "is not a checkpoint")

    def test_a_model_that_cannot_be_a_teacher_is_refused_before_writing(self):
        import keras
        tmp = self.tmp_path()
        inputs = keras.Input((28, 28, 1))
        x = keras.layers.Flatten()(keras.layers.Conv2D(4, 3)(inputs))
        keras.Model(inputs, keras.layers.Dense(8)(x)).save(tmp / "m.keras")
        r = self.run_cli("convert_teacher", f"--model={tmp}/m.keras",
                         "--input_size=28", f"--out={tmp}/t.keras")
        self.assertOneLineError(r, "28x28x3")
        self.assertFalse((tmp / "t.keras").exists())
        (tmp / "text.keras").write_text("not a model")
        r = self.run_cli("convert_teacher", f"--model={tmp}/text.keras",
                         "--input_size=28", f"--out={tmp}/t.keras")
        self.assertOneLineError(r, "is not a valid Keras file")
        r = self.run_cli("train", "--dataset=digits",
                         f"--teacher={tmp}/text.keras", f"--workdir={tmp}/w")
        self.assertOneLineError(r, "is not a valid Keras file")
        self.assertEqual(sorted(p.name for p in tmp.iterdir()),
                         ["m.keras", "text.keras"])

    def test_plot_tool_names_the_missing_extra(self):
        r = self.run_subprocess(["-c", _NO_MATPLOTLIB, "runs/none"])
        self.assertEqual(r.returncode, 1)
        self.assertEqual(r.stderr.strip(), "error: plotting needs "
                         "matplotlib, the [plot] extra: pip install -e "
                         "'.[plot]' (make install includes it).")


class LogFilterTest(TestCase):

    def test_tensorflow_info_lines_are_dropped_ours_and_warnings_kept(self):
        import logging
        import os

        from ega_tf import cli
        tf_file = os.path.join(os.path.dirname(tf.__file__), "python",
                               "checkpoint", "functional_saver.py")
        ours = os.path.join(os.path.dirname(cli.__file__), "training.py")

        def kept(path, level):
            record = logging.LogRecord("absl", level, path, 1, "m", (), None)
            return cli._without_tensorflow_info(record)

        self.assertFalse(kept(tf_file, logging.INFO))
        self.assertTrue(kept(tf_file, logging.WARNING))
        self.assertTrue(kept(ours, logging.INFO))


ENTRIES = ("train", "compare", "pretrain", "convert_teacher", "export",
           "predict", "launch")


class HelpTest(TestCase):

    def test_every_entry_point_helps_without_starting_tensorflow(self):
        """Each command's --help as a user runs it (``python -m``): its
        text only, and neither TensorFlow nor Keras imported (Python's
        own -X importtime lists every module the process imported), whose
        start-up lines and seconds of import a --help would pay."""
        for entry in ENTRIES:
            with self.subTest(entry=entry):
                r = self.run_subprocess(["-X", "importtime", "-m",
                                         f"ega_tf.{entry}", "--help"])
                self.assertSucceeded(r)
                self.assertGreater(len(r.stdout.splitlines()), 8)
                imported = [line.rsplit("|", 1)[-1].strip()
                            for line in r.stderr.splitlines()
                            if line.startswith("import time:")]
                self.assertIn("ega_tf.cli", imported)
                self.assertEqual([m for m in imported if m.split(".")[0]
                                  in ("tensorflow", "keras", "torch")], [])
                self.assertEqual([line for line in r.stderr.splitlines()
                                  if not line.startswith("import time:")],
                                 [])
