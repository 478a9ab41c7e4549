"""compare --tune: what each method searches, the proposals (published
first, the same in every process), the choice on validation only, a search
interrupted and rerun ending where an uninterrupted one does, and the
grid trained with the chosen values."""

import csv
import json
import shutil

import numpy as np

from ega_tf import config as config_lib
from ega_tf import methods
from ega_tf.comparison import grid, tables, tuning
from ega_tf.core.errors import UserError
from ega_tf.methods.base import TUNE_RANGE, Method
from ega_tf.training import loop
from tests.test_case import TestCase, pixel_teacher


def base_config(**kw):
    c = config_lib.default_config()
    c.dataset, c.teacher = "digits", "t.keras"
    for k, v in kw.items():
        setattr(c, k, v)
    return c


class SpaceTest(TestCase):

    def test_each_method_searches_its_own_weights_around_the_published(
            self):
        base = base_config()
        expect = {"sp": {"loss.beta": 3000.0},
                  "ega": {"loss.node_weight": 0.8, "loss.edge_weight": 0.24},
                  "rkd": {"loss.rkd_distance": 25.0, "loss.rkd_angle": 50.0},
                  "dkd": {"loss.dkd_beta": 8.0},
                  "kd": {"loss.alpha": 0.9, "loss.gamma": 0.1},
                  "none": {}}
        for name, published in expect.items():
            cell = grid.make_cells([name], [0], ["resnet8"], [0.1])[0]
            space = tuning.space(grid.cell_config(base, cell), False)
            self.assertEqual({k: v[2] for k, v in space.items()}, published,
                             name)
            for k, (low, high, value) in space.items():
                self.assertAllClose((low, high),
                                    (value * TUNE_RANGE[0],
                                     value * TUNE_RANGE[1]))
        # --tune_lr adds the student's rate (resnet8's 0.05).
        cell = grid.make_cells(["none"], [0], ["resnet8"], [0.1])[0]
        self.assertAllClose(tuning.space(grid.cell_config(base, cell),
                                         True)[tuning.LR],
                            (0.005, 0.15, 0.05))

    def test_balanced_weights_search_the_ratio_from_trial_0(self):
        base = base_config()
        base.weights = "balanced"
        cell = grid.make_cells(["ega"], [0], ["resnet8"], [0.1],
                               ["balanced"])[0]
        self.assertEqual(tuning.space(grid.cell_config(base, cell),
                                      False),
                         {tuning.RATIO: (0.1, 10.0, 1.0)})

    def test_a_method_declaring_an_untunable_field_is_refused(self):
        with self.assertRaisesRegex(ValueError, "tuned field 'queue' needs "
                                    "a positive, non-integer default"):
            class Bad(Method):
                name = "bad"
                defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0,
                            "queue": 10}
                integer_fields = ("queue",)
                tuned = ("queue",)
            methods.register(Bad)

    def test_no_search_without_held_out_data(self):
        with self.assertRaisesRegex(UserError, "--tune chooses on a "
                                    "validation split"):
            tuning.check(base_config(), 4, None)
        base = base_config()
        base.data.val_fraction = 0.1
        with self.assertRaisesRegex(UserError, "--tune_epochs=0"):
            tuning.check(base, 4, 0)
        tuning.check(base, 0, None)  # no search: nothing to check

    def test_proposals_spread_first_and_are_the_same_in_a_new_study(self):
        import optuna
        from optuna.distributions import FloatDistribution
        setting = tuning.Setting("sp", "resnet8", 0.1)

        def proposals():
            study = optuna.create_study(direction="maximize")
            study.enqueue_trial({"b": 3000.0})
            out = []
            for k in range(6):
                study.sampler = tuning.sampler(setting, k, 6)
                trial = study.ask({"b": FloatDistribution(30, 3e4,
                                                          log=True)})
                study.tell(trial, -abs(np.log(trial.params["b"] / 300)))
                out.append(trial.params["b"])
            return out
        first = proposals()
        self.assertEqual(first, proposals())
        self.assertEqual(first[0], 3000.0)
        # Trials 1-3 (the first half) cover the range's decades evenly.
        decades = sorted(int(np.log10(b / 30)) for b in first[1:4])
        self.assertLen(set(decades), 3)


class TuneGridTest(TestCase):

    def test_search_choose_on_validation_resume_and_train_the_grid(self):
        tmp = self.tmp_path()
        teacher = pixel_teacher(tmp / "teacher.keras")
        args = ["--config=configs/digits.py", f"--teacher={teacher}",
                "--methods=hint", "--weights=balanced", "--seeds=0",
                "--epochs=1", "--tune=2", "--tune_lr",
                "--config.export=false", "--pictures=false",
                "--config.data.image_size=16", f"--workdir={tmp}/g"]
        r = self.run_cli("compare", *args)
        self.assertSucceeded(r)
        with open(tmp / "g" / tuning.TUNING_CSV, newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([row["trial"] for row in rows], ["0", "1"])
        self.assertEqual([row["outcome"] for row in rows],
                         ["complete", "complete"])
        # Trial 0: the balanced weights (ratio 1) and the published rate;
        # balanced, the ratio is what is searched.
        self.assertEqual((float(rows[0]["balance.ratio"]),
                          float(rows[0]["optim.lr"])), (1.0, 0.05))
        self.assertTrue(0.1 <= float(rows[1]["balance.ratio"]) <= 10.0)
        self.assertTrue(0.005 <= float(rows[1]["optim.lr"]) <= 0.15)
        self.assertRegex(r.stdout, r"Tuning: 2 trials \(0 pruned, 0 failed"
                         r"\) took .*; the grid's 1 run took ")
        # Chosen on validation: the larger last validation top-1, the
        # published one on a tie.
        scores = [float(row["val_top1_last"]) for row in rows]
        best = 1 if scores[1] > scores[0] else 0
        self.assertEqual([row["chosen"] for row in rows],
                         ["true" if i == best else "false"
                          for i in range(2)])
        tuned = json.loads((tmp / "g" / tuning.TUNED).read_text())
        chosen = tuned["chosen"]["hint_balanced_resnet8_lf0.1"]
        self.assertAllClose(chosen["balance.ratio"],
                            float(rows[best]["balance.ratio"]), rtol=1e-5)
        # A trial is an ordinary run of the first seed on the training
        # images less the validation ones.
        trial = json.loads((tmp / "g" / rows[1]["workdir"] /
                            "results.json").read_text())
        self.assertEqual((trial["seed"], trial["val_examples"]), (0, 136))
        self.assertAllClose(trial["val_top1_last"], scores[1], rtol=1e-5)
        # The grid's cell trained with the chosen values.
        cell = json.loads((tmp / "g" / "hint_balanced_resnet8_lf0.1_s0" /
                           "config.json").read_text())
        self.assertEqual((cell["weights"], cell["balance"]["ratio"],
                          cell["optim"]["lr"]),
                         ("balanced", chosen["balance.ratio"],
                          chosen["optim.lr"]))
        summary = (tmp / "g" / tables.SUMMARY).read_text()
        self.assertIn("Tuned: 2 trials per method", summary)

        # Interrupted inside trial 1 (its results and checkpoints gone),
        # then rerun: trial 0 is read back, trial 1 trained again with the
        # same proposal, and the search ends as before.
        before = (tmp / "g" / tuning.TUNING_CSV).read_text()
        last = tmp / "g" / rows[1]["workdir"]
        (last / "results.json").unlink()
        shutil.rmtree(last / "checkpoints")
        (tmp / "g" / tuning.TUNING_CSV).unlink()
        r = self.run_cli("compare", *args)
        self.assertSucceeded(r)
        self.assertIn("1/2] ratio=1, lr=0.05: validation top-1 last",
                      r.stdout)
        self.assertIn("(done earlier)", r.stdout)
        self.assertIn("2/2] ratio=", r.stdout)
        self.assertIn("1 of 1 cells finished earlier", r.stdout)
        self.assertEqual((tmp / "g" / tuning.TUNING_CSV).read_text(), before)

        # Another search in the same grid is refused.
        other = [a for a in args if a != "--tune=2"] + ["--tune=3"]
        self.assertOneLineError(self.run_cli("compare", *other),
                                "holds a comparison of other settings "
                                "(tune.trials: 2 there, 3 now)")


class ScriptedSearchTest(TestCase):
    """The search's bookkeeping with the training replaced by a script of
    per-epoch validation top-1s (the real loop is in TuneGridTest): a
    collapsed or diverged trial fails and is never chosen, however well it
    scores; the median rule stops a poor trial that TPE proposed, never
    one of the spread (trials 1 to 3 of 6), which may start slowly and end
    best; what it all cost is counted; a rerun reads every trial back."""

    # Trial -> (validation top-1 per epoch, share of zero features,
    # diverges at the last epoch).
    SCRIPT = {0: ([0.30, 0.40, 0.50, 0.60], 0.0, False),
              1: ([0.35, 0.45, 0.55, 0.62], 0.0, False),
              # Of the spread: below the median until the end, runs whole
              # and is the best.
              2: ([0.10, 0.20, 0.45, 0.65], 0.0, False),
              3: ([0.50, 0.70, 0.80, 0.90], 0.9, False),   # collapsed
              4: ([0.20, 0.25, 0.30, 0.35], 0.0, False),   # pruned
              5: ([0.45, 0.55, 0.65, 0.95], 0.0, True)}    # diverged

    def fake_run(self, config, path, verbose=2, on_epoch=None, **kw):
        import os

        from ega_tf.training import divergence
        from ega_tf.training import workdir as wd
        results_path = os.path.join(path, wd.RESULTS)
        if os.path.exists(results_path):
            return wd.read_json(results_path)
        trial = int(os.path.basename(path).split("_")[1])
        scores, dead, diverges = self.SCRIPT[trial]
        self.trained.append(trial)
        os.makedirs(path, exist_ok=True)
        wd.write_json(os.path.join(path, wd.CONFIG), {})
        history, status = [], "finished"
        for epoch, score in enumerate(scores):
            history.append({"epoch": epoch, "val_top1": score,
                            "test_top1": score,
                            "val_zero_features": dead})
            wd.write_history(os.path.join(path, wd.HISTORY), history)
            if diverges and epoch == len(scores) - 1:
                status = "diverged"
                break
            if (epoch + 1 < len(scores) and on_epoch
                    and on_epoch(epoch, history[-1])):
                status = "pruned"
                break
        results = {"status": status, "val_top1_last": 100 * history[-1][
            "val_top1"], "val_top1_best": 100 * max(
            r["val_top1"] for r in history)}
        if status == "diverged":
            results["diverged"] = {"term": "ce", "value": "nan", "epoch": 4,
                                   "step": 1, "lr": 0.05, "message": "x"}
        wd.write_json(results_path, results)
        if status == "diverged":
            raise divergence.DivergedError("ce", float("nan"), 3, 0, 0.05)
        return results

    def test_failed_trials_are_never_chosen_and_poor_ones_are_pruned(self):
        from unittest import mock
        tmp = self.tmp_path()
        base = base_config(epochs=4)
        base.data.val_fraction = 0.1
        cells = grid.make_cells(["sp"], [0], ["resnet8"], [0.1])
        self.trained, lines, cost = [], [], {}
        with mock.patch.object(loop, "run", self.fake_run):
            chosen = tuning.search(base, cells, str(tmp), 6,
                                   log=lines.append, cost=cost)
        with open(tmp / tuning.TUNING_CSV, newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([r["outcome"] for r in rows],
                         ["complete", "complete", "complete", "failed",
                          "pruned", "failed"])
        self.assertEqual([r["collapsed"] for r in rows],
                         ["false", "false", "false", "true", "false",
                          "false"])
        # Collapsed on validation two epochs running: stopped after epoch
        # 2; trial 4, below the median of trials 0-2 at epoch 2, too.
        self.assertEqual([int(r["epochs"]) for r in rows],
                         [4, 4, 4, 2, 2, 4])
        self.assertEqual([r["chosen"] for r in rows],
                         ["false", "false", "true", "false", "false",
                          "false"])
        setting = tuning.Setting("sp", "resnet8", 0.1)
        self.assertAllClose(chosen[setting]["loss.beta"],
                            float(rows[2]["loss.beta"]), rtol=1e-5)
        self.assertEqual((cost["trials"], cost["pruned"], cost["failed"]),
                         (6, 1, 2))
        self.assertTrue(any("pruned after epoch 2" in line
                            for line in lines), lines)
        # A rerun reads every trial back, trains none, chooses the same.
        before = (tmp / tuning.TUNING_CSV).read_text()
        self.trained = []
        with mock.patch.object(loop, "run", self.fake_run):
            again = tuning.search(base, cells, str(tmp), 6,
                                  log=lines.append, cost=cost)
        self.assertEqual(self.trained, [])
        self.assertEqual(again, chosen)
        self.assertEqual((tmp / tuning.TUNING_CSV).read_text(), before)
        self.assertEqual(cost["seconds"], 0.0)

    def test_no_working_trial_keeps_trial_0(self):
        from unittest import mock
        tmp = self.tmp_path()
        base = base_config(epochs=4)
        base.data.val_fraction = 0.1
        self.SCRIPT = {k: ([0.5] * 4, 0.9, False) for k in range(2)}
        self.trained, lines = [], []
        with mock.patch.object(loop, "run", self.fake_run):
            chosen = tuning.search(
                base, grid.make_cells(["sp"], [0], ["resnet8"], [0.1]),
                str(tmp), 2, log=lines.append)
        self.assertEqual(chosen[tuning.Setting("sp", "resnet8", 0.1)],
                         {"loss.beta": 3000.0})
        self.assertTrue(any("no trial trained a working student" in line
                            for line in lines))
