"""python -m ega_tf.compare: every method trains an epoch on digits
without a non-finite value (one shared grid, which also gives the tables,
pictures, resuming and workdir checks), a grid killed and rerun (slow), the
bad-input messages; the summary's arithmetic."""

import csv
import json
import math
import os
import signal
import time

import numpy as np
import pytest

from ega_tf import methods
from ega_tf.comparison import grid, pictures, tables
from ega_tf.training import probe
from ega_tf.training import workdir as wd
from tests.test_case import TestCase, history_rows, pixel_teacher

ALL = ",".join(["none", "kd", "hint", "rkd", "pkt", "sp", "nce", "ccl", "crd",
                "dkd", "seed", "compress", "ega_node", "ega_edge", "ega"])


class CompareGridTest(TestCase):
    """One grid, seed 0, one epoch (21 steps) on digits: in the fast tier
    the methods whose machinery differs most (cross-entropy alone, KD's
    alpha term, CRD's banks and index, SEED's queue, EGA); every method in
    the slow tier (AllMethodsGridTest; test_methods steps each one)."""

    METHODS = "none,kd,crd,seed,ega"

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dir = cls.class_tempdir()
        cls.teacher = pixel_teacher(cls.dir / "teacher.keras")
        cls.workdir = cls.dir / "cmp"
        cls.args = ["--config=configs/digits.py", f"--teacher={cls.teacher}",
                    f"--methods={cls.METHODS}", "--seeds=0", "--epochs=1",
                    "--config.export=false", "--embedding_points=60",
                    "--config.data.image_size=16",
                    f"--workdir={cls.workdir}"]
        cls.first = cls.run_cli_static("compare", *cls.args)
        # As the first run wrote it (a rerun rewrites it).
        cls.summary = (cls.workdir / tables.SUMMARY).read_text()

    @classmethod
    def run_cli_static(cls, *args):
        return cls("run").run_cli(*args)

    def rows(self):
        with open(self.workdir / tables.RESULTS_CSV, newline="") as f:
            return list(csv.DictReader(f))

    def test_every_method_trains_with_finite_values(self):
        self.assertSucceeded(self.first)
        rows = self.rows()
        names = self.METHODS.split(",")
        self.assertEqual([r["method"] for r in rows], names)
        for row in rows:
            self.assertEqual((row["status"], row["epochs"]),
                             ("finished", "1"), row["method"])
            history = os.path.join(self.workdir, row["workdir"],
                                   "history.csv")
            with open(history, newline="") as f:
                for epoch in csv.DictReader(f):
                    for key, value in epoch.items():
                        self.assertTrue(math.isfinite(float(value)),
                                        f"{row['method']} {key}: {value}")
            # Its own terms are logged, under their own names.
            with open(history) as f:
                columns = f.readline().strip().split(",")
            for term in methods.METHODS.get(row["method"]).terms:
                self.assertIn(term, columns, row["method"])
        # One seed: the cells trained in one lockstep group; one line per
        # cell as it starts and as it ends.
        n = len(names)
        width = len(str(n))
        self.assertIn(f"[{1:{width}d}/{n}] none resnet8 labeled=0.1 seed=0: "
                      f"training (in lockstep with {n - 1} other cells",
                      self.first.stdout)
        self.assertRegex(self.first.stdout, rf"\[{1:{width}d}/{n}\] none "
                         r"resnet8 labeled=0.1 seed=0: test top-1 last "
                         rf"[0-9.]+, at best val [0-9.]+ in (\d+ min )?\d+ s "
                         rf"for the {n} cells")
        # At --verbose=0 the cells' own INFO lines stay quiet.
        self.assertNotIn("Strategy none", self.first.stderr)

    def test_summary_and_pictures(self):
        summary = self.summary
        self.assertIn("python -m ega_tf.compare --config=configs/digits.py",
                      summary)
        table = [line for line in summary.splitlines()
                 if line.startswith("| ") and "method" not in line]
        self.assertEqual([line.split("|")[1].strip() for line in table],
                         self.METHODS.split(","))
        none_row = table[0].split("|")
        self.assertEqual(none_row[6].strip(), "+0.00")  # none vs none
        silhouettes = [float(line.split("|")[9]) for line in table]
        self.assertTrue(all(-1 <= s <= 1 for s in silhouettes))
        self.assertIn("The frozen teacher's features: silhouette", summary)
        # compare holds out a validation split by default (train does not).
        self.assertIn("validation: 0.1 of each class's labeled training "
                      "images, held out.", summary)
        for row in self.rows():
            cell = json.loads((self.workdir / row["workdir"] /
                               "results.json").read_text())
            self.assertEqual(cell["val_examples"], 136)  # round(0.1 n) per class
            self.assertAlmostEqual(float(row["test_top1_at_best_val"]),
                                   cell["test_top1_at_best_val"], places=3)
        import matplotlib.image
        for name, min_width in ((pictures.CURVES, 1200),
                                (pictures.EMBEDDINGS, 1000),
                                (pictures.GRAPHS, 1000)):
            image = matplotlib.image.imread(self.workdir / name)
            self.assertGreater(image.shape[1], min_width, name)
            self.assertGreater(image[..., :3].std(), 0.05, name)  # not blank

    def test_pictures_and_silhouettes_come_from_the_runs_files(self):
        """Each run kept its test embeddings (probe.npz) and silhouettes:
        a rerun draws every picture with no checkpoint left to restore,
        and --pictures=false keeps the silhouette column."""
        import shutil
        copy = self.dir / "copy"
        shutil.copytree(self.workdir, copy)
        for name in os.listdir(copy):
            if (copy / name).is_dir() and name != tables.HPARAMS:
                self.assertTrue((copy / name / wd.PROBE).exists())
                shutil.rmtree(copy / name / "checkpoints")
        for name in (pictures.EMBEDDINGS, pictures.GRAPHS, tables.SUMMARY):
            os.remove(copy / name)
        args = [a for a in self.args if not a.startswith("--workdir")]
        r = self.run_cli("compare", *args, f"--workdir={copy}")
        self.assertSucceeded(r)
        self.assertIn("from their probe.npz", r.stdout)
        self.assertNotIn("training...", r.stdout)
        for name in (pictures.EMBEDDINGS, pictures.GRAPHS):
            self.assertTrue((copy / name).exists(), name)
        r = self.run_cli("compare", *args, f"--workdir={copy}",
                         "--pictures=false")
        self.assertSucceeded(r)
        table = [line for line in (copy / tables.SUMMARY).read_text()
                 .splitlines() if line.startswith("| ega |")]
        self.assertEqual(len(table), 1)
        # As the run computed it, from the embeddings it kept.
        ega = self.workdir / "ega_resnet8_lf0.1_s0"
        kept = probe.read_probe(ega)
        expected = probe.silhouette(kept["x_s"], kept["labels"])
        self.assertEqual(table[0].split("|")[9].strip(), f"{expected:.3f}")
        results = json.loads((ega / "results.json").read_text())
        self.assertAllClose(results["test_silhouette"], expected, rtol=1e-6)

    def test_every_cell_on_tensorboards_hparams_dashboard(self):
        import glob

        import tensorflow as tf
        from tensorboard.plugins.hparams import plugin_data_pb2
        cell = "ega_resnet8_lf0.1_s0"
        results = json.loads((self.workdir / cell / "results.json")
                             .read_text())
        events, = glob.glob(str(self.workdir / tables.HPARAMS / cell /
                                "events*"))
        params, scalars = {}, {}
        for event in tf.compat.v1.train.summary_iterator(events):
            for v in event.summary.value:
                plugin = v.metadata.plugin_data
                if plugin.plugin_name == "hparams":
                    info = plugin_data_pb2.HParamsPluginData.FromString(
                        plugin.content).session_start_info
                    params = {k: x.string_value or x.number_value
                              for k, x in info.hparams.items()}
                else:
                    scalars[v.tag] = (event.step,
                                      float(tf.make_ndarray(v.tensor)))
        self.assertEqual((params["method"], params["student"],
                          params["loss.node_weight"],
                          params["loss.edge_weight"]),
                         ("ega", "resnet8", 0.8, 0.24))
        self.assertAllClose(scalars["test_top1_last"],
                            (1, results["test_top1_last"]), rtol=1e-6)
        self.assertEqual(len(os.listdir(self.workdir / tables.HPARAMS)),
                         len(self.METHODS.split(",")))

    def test_rerun_keeps_every_finished_cell(self):
        before = (self.workdir / tables.RESULTS_CSV).read_bytes()
        r = self.run_cli("compare", *self.args, "--pictures=false")
        self.assertSucceeded(r)
        n = len(self.METHODS.split(","))
        self.assertIn(f"{n} of {n} cells finished earlier", r.stdout)
        self.assertNotIn("training...", r.stdout)
        self.assertEqual((self.workdir / tables.RESULTS_CSV).read_bytes(),
                         before)

    def test_a_cell_is_an_ordinary_train_workdir(self):
        """compare's validation split (train's default is none) is the
        one field the train command must add."""
        cell = self.workdir / "crd_resnet8_lf0.1_s0"
        r = self.run_cli("train", "--config=configs/digits.py",
                         f"--teacher={self.teacher}", "--distill=crd",
                         "--epochs=1", "--config.export=false",
                         "--config.data.val_fraction=0.1",
                         "--config.data.image_size=16", f"--workdir={cell}")
        self.assertSucceeded(r)
        self.assertIn("holds a finished run of this config", r.stderr)

    def test_a_grid_workdir_belongs_to_one_comparison(self):
        args = [a for a in self.args if not a.startswith("--epochs")]
        r = self.run_cli("compare", *args, "--epochs=3")
        self.assertOneLineError(r, "holds a comparison of other settings "
                                "(epochs: 1 there, 3 now)")


@pytest.mark.slow
class AllMethodsGridTest(CompareGridTest):
    """The same grid with all fifteen methods."""

    METHODS = ALL


class CompareKillTest(TestCase):

    @pytest.mark.slow
    def test_kill_9_mid_grid_then_rerun_gives_the_uninterrupted_grid(self):
        """A grid trained in lockstep (the default), killed in its second
        epoch, then run again, ends with the results and histories of the
        same grid trained one cell after another and never interrupted."""
        tmp = self.tmp_path()
        teacher = pixel_teacher(tmp / "teacher.keras")
        args = ["--config=configs/digits.py", f"--teacher={teacher}",
                "--methods=none,crd,ega", "--seeds=0", "--epochs=3",
                "--config.export=false", "--pictures=false",
                "--config.data.image_size=16",
                "--config.checkpoint_every_steps=5"]
        # Every grid in a fresh process of its own: a process in which
        # other tests have run (logical devices split, say) may add float32
        # numbers in another order, and training amplifies the difference.
        self.assertSucceeded(self.run_subprocess(
            ["-m", "ega_tf.compare", *args, "--share_teacher=false",
             f"--workdir={tmp}/whole"]))
        proc = self.start_process(["-m", "ega_tf.compare", *args,
                                   f"--workdir={tmp}/killed"])
        history = tmp / "killed" / "ega_resnet8_lf0.1_s0" / "history.csv"
        while not history.exists():  # the group finished an epoch
            self.assertIsNone(proc.poll(), "the grid ended too early")
            time.sleep(0.2)
        time.sleep(2.0)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r = self.run_subprocess(["-m", "ega_tf.compare", *args,
                                 f"--workdir={tmp}/killed"])
        self.assertSucceeded(r)
        self.assertIn("resuming (in lockstep with 2 other cells", r.stdout)

        def results(name):
            with open(tmp / name / tables.RESULTS_CSV, newline="") as f:
                return [{k: v for k, v in row.items() if k != "wall_time_s"}
                        for row in csv.DictReader(f)]

        self.assertEqual(results("whole"), results("killed"))
        for cell in ("none", "crd", "ega"):
            a, b = (history_rows(tmp / name / f"{cell}_resnet8_lf0.1_s0")
                    for name in ("whole", "killed"))
            self.assertLen(a, 3)
            self.assertEqual(a, b, cell)


class CompareInputTest(TestCase):

    def test_bad_input_is_one_line_naming_the_fix(self):
        tmp = self.tmp_path
        base = ["--config=configs/digits.py", "--teacher=t.keras",
                f"--workdir={tmp}/w"]
        for args, message in (
                (["--methods=ega,fitnet"], "Unknown method(s) fitnet in "
                 "--methods. Valid names: ccl, "),
                (["--seeds=0,one"], "--seeds takes comma-separated values"),
                (["--seeds=1,1"], "--seeds needs distinct values"),
                (["--seeds=0,1", "--config.seed=3"], "--seeds and "
                 "--config.seed are both given"),
                (["--methods=rkd", "--config.loss.rkd_angle=-1"],
                 "rkd resnet8 labeled=0.1 seed=0: loss.rkd_angle must be "
                 ">= 0"),
                (["--methods=none,ega", "--student=resnet9"],
                 "Unknown student 'resnet9'")):
            with self.subTest(args=args):
                self.assertOneLineError(self.run_cli("compare", *base, *args),
                                        message)
        self.assertFalse(os.path.exists(f"{tmp}/w"))

    def test_a_grid_wide_loss_field_reaches_the_methods_that_read_it(self):
        from ega_tf import config as config_lib
        base = config_lib.default_config()
        base.teacher = "t.keras"
        base.loss.rkd_angle, base.loss.alpha = 10.0, 0.5
        cells = grid.make_cells(["rkd", "ega"], [0], ["resnet8"], [1.0])
        configs = grid.configs(base, cells)
        rkd, ega = (configs[c].loss for c in cells)
        self.assertEqual((rkd.rkd_angle, rkd.rkd_distance, rkd.alpha),
                         (10.0, 25.0, 0.5))
        self.assertEqual((ega.rkd_angle, ega.node_weight, ega.alpha),
                         (None, 0.8, 0.5))


class SummaryTest(TestCase):

    def test_means_spreads_and_differences(self):
        rows = []
        for method, lasts in (("none", [70.0, 72.0, 74.0]),
                              ("ega", [80.0, 81.0, 85.0])):
            for seed, last in enumerate(lasts):
                rows.append({"student": "s", "labeled_fraction": 0.1,
                             "method": method, "seed": seed,
                             "status": "finished",
                             "test_top1_best": last + 2,
                             "test_top1_at_best_val": last + 1,
                             "test_top1_last": last,
                             "overfit_gap": 100 - last, "wall_time_s": 10.0,
                             "test_silhouette": last / 1000,
                             "teacher_silhouette": 0.5})
        rows.append({**rows[-1], "seed": 3, "status": "diverged",
                     "test_top1_last": 1.0})
        rows[3]["collapsed"] = True  # ega, seed 0: counted, and flagged
        summary = tables.summarise(rows, ["none", "ega"])
        none, ega = summary
        self.assertAllClose(none["last"], (72.0, 2.0))
        self.assertAllClose(ega["last"], (82.0, np.std([80, 81, 85],
                                                       ddof=1)))
        self.assertEqual((ega["runs"], ega["diverged"]), (3, 1))
        self.assertAllClose((ega["vs_none"], none["vs_ega"]), (10.0, -10.0))
        self.assertAllClose(ega["gap"][0], 18.0)
        # 95 % intervals: t(0.975, 2 degrees of freedom) = 4.3026527...
        t2 = 4.302652729911275
        self.assertAllClose(ega["last_ci"],
                            t2 * np.std([80, 81, 85], ddof=1) / np.sqrt(3))
        # Paired by seed: differences 10, 9, 11 (seed 3 diverged, unpaired).
        self.assertEqual(ega["vs_none_pairs"], 3)
        self.assertAllClose(ega["vs_none_ci"], t2 * 1.0 / np.sqrt(3))
        text = tables.summary_markdown(summary, "# t")
        self.assertIn("| ega | 3 (1 diverged, 1 collapsed) | 82.00 ± 2.65 | "
                      "[75.43, 88.57] | 83.00 ± 2.65 "
                      "| +10.00 [+7.52, +12.48]* | +0.00 | 18.00 ± 2.65 | "
                      "0.082 ± 0.003 | 10 s |", text)
        self.assertIn("| none | 3 | 72.00 ± 2.00 | [67.03, 76.97] | "
                      "73.00 ± 2.00 | +0.00 | -10.00 [-12.48, -7.52]* |",
                      text)
        self.assertNotIn("74.00", text)  # test_top1_best: not a headline
        self.assertIn("The frozen teacher's features: silhouette 0.500.",
                      text)

    def test_a_paired_difference_within_noise_is_not_marked(self):
        rows = [{"student": "s", "labeled_fraction": 1.0, "method": m,
                 "seed": seed, "status": "finished",
                 "test_top1_at_best_val": None,
                 "test_top1_last": v, "overfit_gap": 0.0,
                 "wall_time_s": 1.0, "test_silhouette": None}
                for m, values in (("none", [70.0, 75.0, 72.0]),
                                  ("ega", [71.0, 73.0, 74.0]))
                for seed, v in enumerate(values)]
        none, ega = tables.summarise(rows, ["none", "ega"])
        # Differences +1, -2, +2: mean 1/3, interval wide across 0.
        self.assertAllClose(ega["vs_none"], 1 / 3)
        text = tables.summary_markdown(tables.summarise(rows, ["none", "ega"]),
                                       "# t")
        line = next(x for x in text.splitlines() if x.startswith("| ega |"))
        self.assertIn("+0.33 [", line)
        self.assertNotIn("*", line)

    def test_paired_grids_tool(self):
        """tools/paired_grids.py pairs two grids' runs by seed."""
        tmp = self.tmp_path()
        for name, lasts in (("ref", {"ega": [80.0, 81.0, 85.0],
                                     "kd": [70.0, 70.0, 70.0]}),
                            ("other", {"ega": [81.0, 83.0, 86.0],
                                       "kd": [69.0, 71.0, 70.0]})):
            os.makedirs(tmp / name)
            with open(tmp / name / tables.RESULTS_CSV, "w", newline="") as f:
                out = csv.writer(f)
                out.writerow(["method", "student", "labeled_fraction",
                              "seed", "status", "test_top1_last"])
                out.writerows([m, "s", "0.1000", seed, "finished", v]
                              for m, values in lasts.items()
                              for seed, v in enumerate(values))
        r = self.run_subprocess(["tools/paired_grids.py", str(tmp / "ref"),
                                 str(tmp / "other")])
        self.assertSucceeded(r)
        # ega: differences 1, 2, 1 (mean 4/3, sd 0.577; t(0.975, 2) =
        # 4.3027): [-0.10, +2.77]; kd: -1, +1, 0.
        half = 4.302652729911275 * np.std([1, 2, 1], ddof=1) / np.sqrt(3)
        self.assertIn(f"| ega | 82.00 ± 2.65 | 83.33 ± 2.52 | +1.33 "
                      f"[{4 / 3 - half:+.2f}, {4 / 3 + half:+.2f}] |",
                      r.stdout)
        self.assertIn("| kd | 70.00 ± 0.00 | 70.00 ± 1.00 | +0.00 [-2.48, "
                      "+2.48] |", r.stdout)

    def test_silhouette_against_its_definition(self):
        rng = np.random.default_rng(0)
        labels = np.repeat([0, 1, 2], 7)
        x = rng.normal(size=(21, 5)) + 2 * labels[:, None] * rng.normal(
            size=5)
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        dist = 1 - unit @ unit.T
        s = []
        for i in range(len(x)):
            same = (labels == labels[i]) & (np.arange(len(x)) != i)
            a = dist[i, same].mean()
            b = min(dist[i, labels == c].mean() for c in set(labels)
                    if c != labels[i])
            s.append((b - a) / max(a, b))
        self.assertAllClose(probe.silhouette(x, labels), np.mean(s),
                            rtol=1e-9)

    def test_a_smaller_picture_draws_from_the_runs_probe(self):
        """The pictures' first P of the probe's points are the first P of
        the test split's, so a run's 1,000 serve any smaller picture."""
        labels = np.random.default_rng(1).integers(0, 7, 3000)
        labels[labels == 3] = 9  # a class absent, one with a gap
        first = probe.subset(labels, probe.PROBE_POINTS)
        for points in (2, 60, 500, 999, 1000):
            self.assertAllEqual(first[probe.subset(labels[first], points)],
                                probe.subset(labels, points))


class PictureStylesTest(TestCase):

    def test_every_method_its_own_colour_and_balanced_dashed(self):
        """The 15-method grid with published and balanced weights (28
        labels), and 25 methods: one distinct colour per method, its
        balanced label in the same colour dashed."""
        names = [f"m{i}" for i in range(14)]
        labels = [*names, *(n + grid.BALANCED for n in names)]
        for order, methods_ in ((labels, names),
                                ([f"m{i}" for i in range(25)], None),
                                (["none", "ega"], None)):
            styles = pictures.line_styles(order)
            methods_ = methods_ or order
            colours = {styles[m][0] for m in methods_}
            self.assertLen(colours, len(methods_))
            for m in methods_:
                self.assertEqual(styles[m][1], "-")
                balanced = m + grid.BALANCED
                if balanced in styles:
                    self.assertEqual(styles[balanced],
                                     (styles[m][0], "--"))
