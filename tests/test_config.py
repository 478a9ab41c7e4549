"""Configs, flags and registries: one way in per setting, every problem
named at once, help that exits 0 and lists the config."""

from ega_tf import config as config_lib
from ega_tf.core.errors import ConfigError, UserError
from ega_tf.core.registry import Registry
from tests.test_case import TestCase


class RegistryTest(TestCase):

    def test_rejects_duplicates_and_lists_names(self):
        reg = Registry("widget")
        reg.register("a", 1)
        reg.register("b")(2)
        with self.assertRaisesRegex(ValueError, "registered twice"):
            reg.register("a", 3)
        with self.assertRaisesRegex(UserError, "Unknown widget 'c'. Valid "
                                    "names: a, b"):
            reg.get("c")
        self.assertEqual(reg("b"), 2)
        self.assertIn("a", reg)


class ConfigTest(TestCase):

    def test_resolve_fills_the_students_learning_rate(self):
        c = config_lib.default_config()
        c.teacher = "t.keras"
        self.assertEqual(config_lib.resolve(c).optim.lr, 0.05)
        c.student = "ShuffleV2"
        self.assertEqual(config_lib.resolve(c).optim.lr, 0.01)
        c.optim.lr = 0.2
        self.assertEqual(config_lib.resolve(c).optim.lr, 0.2)

    def test_every_problem_is_listed_at_once_dataset_first(self):
        c = config_lib.default_config()
        c.dataset, c.student, c.epochs = "cifar1000", "resnet9", 0
        c.batch_size, c.input.cache = 1, "disk"
        with self.assertRaises(ConfigError) as e:
            config_lib.resolve(c)
        msg = str(e.exception)
        self.assertTrue(msg.startswith("6 problems: (1) Unknown dataset "
                                       "'cifar1000'"), msg)
        for part in ("Unknown student 'resnet9'", "epochs must be at least 1",
                     "batch_size must be at least 2", "Unknown input.cache",
                     "(6) --distill=ega needs a teacher"):
            self.assertIn(part, msg)

    def test_unknown_variant_is_refused(self):
        with self.assertRaisesRegex(UserError, "Unknown config variant "
                                    "'smok'.*Valid variants: smoke"):
            config_lib.get_config("smok")


class FlagsTest(TestCase):

    def test_shortcut_and_override_of_one_field_conflict(self):
        r = self.run_cli("train", "--dataset=digits",
                         "--config.dataset=cifar100")
        self.assertOneLineError(r, "--dataset and --config.dataset are both"
                                   " given")

    def test_bad_flags_and_config_overrides_say_what_to_fix(self):
        for args, message in (
                (["--config.nosuchfield=1"], "no field 'nosuchfield'"),
                (["--config.loss.node_wieght=1"], 'Did you mean '
                 '"node_weight"'),
                (["--config.epochs=abc"], "--config.epochs=abc"),
                (["--batch_size=0", "--distill=none"], "batch_size must be "
                 "at least 1"),
                (["--epochs=0", "--distill=none"], "epochs must be at "
                 "least 1"),
                (["--config=configs/digits.py:smok"], "Unknown config "
                 "variant 'smok'"),
                (["--config=nope.py"], "Cannot load the --config file"),
                (["--nosuchflag"], "Unknown command line flag"),
                (["stray_argument"], "Unexpected argument(s) stray_"),
                (["--dataset=digitz"], "Unknown dataset 'digitz'")):
            with self.subTest(args=args):
                r = self.run_cli("train", "--workdir=/nonexistent/w", *args)
                self.assertOneLineError(r, message)

    def test_help_exits_zero_with_defaults_and_config_fields(self):
        for module, must in (
                ("train", ["--dataset: Dataset", "config default: "
                           "'cifar100'", "ega: gamma=1, alpha=0, beta=1, "
                           "node_weight=0.8, edge_weight=0.24",
                           "crd: ", "crd_negatives=16384",
                           "override any with --config.FIELD=VALUE"]),
                ("pretrain", ["--arch: Backbone", "simclr.temperature = 0.5",
                              "--out: Where to write the teacher (.keras). "
                              "(default: 'teacher.keras')"]),
                ("convert_teacher", ["--allow_pickle:", "RUNS CODE",
                                     "--crop_pct:"]),
                ("predict", ["--top_k: Classes to print per image. "
                             "(default: '5')"])):
            for flag in ("--help", "--helpshort"):
                with self.subTest(module=module, flag=flag):
                    r = self.run_cli(module, flag)
                    self.assertEqual(r.code, 0, r.stderr)
                    for text in must:
                        self.assertIn(text, " ".join(r.stdout.split()))

    def test_help_of_another_config_file_lists_its_fields(self):
        r = self.run_cli("train", "--config=configs/digits.py", "--help")
        self.assertEqual(r.code, 0)
        self.assertIn("dataset = 'digits'", r.stdout)
        self.assertIn("labeled_fraction = 0.1", r.stdout)
