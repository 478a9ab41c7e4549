"""compare --tune: what each method searches, the proposals (published
first, the same in every process), the choice on validation only, a search
interrupted and rerun ending where an uninterrupted one does, and the
grid trained with the chosen values."""

import csv
import json
import shutil

import numpy as np

from ega_tf import config as config_lib
from ega_tf import grid, methods, tuning
from ega_tf.errors import UserError
from ega_tf.methods.base import TUNE_RANGE, Method
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
            space = tuning.space(grid.cell_config(base, cell), name, False)
            self.assertEqual({k: v[2] for k, v in space.items()}, published,
                             name)
            for k, (low, high, value) in space.items():
                self.assertAllClose((low, high),
                                    (value * TUNE_RANGE[0],
                                     value * TUNE_RANGE[1]))
        # --tune_lr adds the student's rate (resnet8's 0.05).
        cell = grid.make_cells(["none"], [0], ["resnet8"], [0.1])[0]
        self.assertAllClose(tuning.space(grid.cell_config(base, cell),
                                         "none", True)[tuning.LR],
                            (0.005, 0.15, 0.05))

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
                "--methods=hint", "--seeds=0", "--epochs=1", "--tune=2",
                "--tune_lr", "--config.export=false", "--pictures=false",
                f"--workdir={tmp}/g"]
        r = self.run_cli("compare", *args)
        self.assertSucceeded(r)
        with open(tmp / "g" / tuning.TUNING_CSV, newline="") as f:
            rows = list(csv.DictReader(f))
        self.assertEqual([row["trial"] for row in rows], ["0", "1"])
        # Trial 0: the published weight and rate.
        self.assertEqual((float(rows[0]["loss.beta"]),
                          float(rows[0]["optim.lr"])), (100.0, 0.05))
        self.assertTrue(1.0 <= float(rows[1]["loss.beta"]) <= 1000.0)
        self.assertTrue(0.005 <= float(rows[1]["optim.lr"]) <= 0.15)
        # Chosen on validation: the larger last validation top-1, the
        # published one on a tie.
        scores = [float(row["val_top1_last"]) for row in rows]
        best = 1 if scores[1] > scores[0] else 0
        self.assertEqual([row["chosen"] for row in rows],
                         ["true" if i == best else "false"
                          for i in range(2)])
        tuned = json.loads((tmp / "g" / tuning.TUNED).read_text())
        chosen = tuned["chosen"]["hint_resnet8_lf0.1"]
        self.assertAllClose(chosen["loss.beta"],
                            float(rows[best]["loss.beta"]), rtol=1e-5)
        # A trial is an ordinary run of the first seed on the training
        # images less the validation ones.
        trial = json.loads((tmp / "g" / rows[1]["workdir"] /
                            "results.json").read_text())
        self.assertEqual((trial["seed"], trial["val_examples"]), (0, 136))
        self.assertAllClose(trial["val_top1_last"], scores[1], rtol=1e-5)
        # The grid's cell trained with the chosen values.
        cell = json.loads((tmp / "g" / "hint_resnet8_lf0.1_s0" /
                           "config.json").read_text())
        self.assertEqual((cell["loss"]["beta"], cell["optim"]["lr"]),
                         (chosen["loss.beta"], chosen["optim.lr"]))
        summary = (tmp / "g" / grid.SUMMARY).read_text()
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
        self.assertIn("1/2] beta=100, lr=0.05: validation top-1 last",
                      r.stdout)
        self.assertIn("(done earlier)", r.stdout)
        self.assertIn("2/2] beta=", r.stdout)
        self.assertIn("1 of 1 cells finished earlier", r.stdout)
        self.assertEqual((tmp / "g" / tuning.TUNING_CSV).read_text(), before)

        # Another search in the same grid is refused.
        other = [a for a in args if a != "--tune=2"] + ["--tune=3"]
        self.assertOneLineError(self.run_cli("compare", *other),
                                "holds a comparison of other settings "
                                "(tune.trials: 2 there, 3 now)")
