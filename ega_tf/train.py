r"""Trains a student, distilled from a frozen teacher or alone.

    python -m ega_tf.train --dataset=digits --teacher=teacher.keras \
        --student=resnet8 --epochs=30 --workdir=runs/ega
    python -m ega_tf.train --config=configs/digits.py --distill=none
    python -m ega_tf.train --config=configs/default.py --config.optim.lr=0.1

Every field of the config (ega_tf/config.py, or the file given with
--config) can be set with --config.FIELD=VALUE; the flags below are
shorthands for the most used ones. The workdir receives config.json,
history.csv, TensorBoard logs, checkpoints (a rerun resumes), results.json
and the exported student (saved_model/).
"""

from __future__ import annotations

import json
import os
import sys

from ega_tf import cli
from ega_tf.core.errors import UserError

SHORTCUTS = {
    "dataset": "Dataset: digits, cifar100, stl10, tiny_imagenet, or "
               "folder:PATH (PATH/<split>/<class>/<image>, and PATH/"
               "unlabeled/<image> without a class).",
    "student": "Student network (docs/students.md lists the zoo).",
    "teacher": "Teacher .keras file, or a published checkpoint (converted "
               "once and cached).",
    "distill": "ega: cross-entropy + EGA from the teacher; none: "
               "cross-entropy alone; a baseline or ablation (listed "
               "at the end of --help, docs/methods.md); or a method of "
               "your own: path/to/my_method.py:MyMethod.",
    "weights": "published: the method's own weights (config.loss); "
               "balanced: its beta (and KD's alpha) follow the gradients, "
               "each term pushing the student as hard as the cross-entropy "
               "(--config.balance.ratio times; docs/balanced.md).",
    "epochs": "Training epochs (the decays stay at 150/240, 180/240, "
              "210/240 of the run).",
    "batch_size": "Images per step.",
    "labeled_fraction": "Stratified fraction of training labels kept; the "
                        "rest become -1: the cross-entropy skips them, and "
                        "every method but dkd still distils on them "
                        "(docs/methods.md, \"Unlabeled images\").",
    "seed": "Random seed (initialisation, data order, views, label subset).",
    "data_dir": "TFDS data directory.",
    "download": "Let TFDS download a missing dataset.",
    "unlabeled_split": "stl10: also train on its 100,000 unlabelled images "
                       "(label -1, as labeled_fraction says; a folder:PATH "
                       "reads PATH/unlabeled/ without it).",
    "trust_saved_model": "Load a teacher made from a SavedModel "
                         "(convert_teacher --model=DIR): it may run "
                         "arbitrary TensorFlow ops.",
    "allow_pickle": "Unpickle a --teacher checkpoint that stores Python "
                    "objects. This runs code from the file: only for files "
                    "from a source you trust.",
}


def define_flags(flag_values):
    from ega_tf import methods
    from ega_tf.config import default_config
    # A method from a file adds its fields to the config's loss before
    # --config.loss.FIELD overrides are read.
    methods.load_from_argv(sys.argv[1:])
    cli.define_config_file(
        flag_values, os.path.join(os.path.dirname(__file__), "config.py"),
        "Python config file with get_config(); `file.py:smoke` shrinks it "
        "to a seconds-long run. Fields: --config.optim.lr=0.1.")
    cli.define_shortcuts(flag_values, default_config(), SHORTCUTS)
    cli.define("string", "workdir", None, "Output directory (default: "
               "runs/<dataset>_<student>_<distill>_s<seed>).", flag_values)
    cli.define("integer", "verbose", None, "Keras progress: 1 a bar, 2 one "
               "line per epoch (default: 1 on a terminal, else 2).",
               flag_values)


def main(argv, flag_values):
    from ega_tf import config as config_lib
    from ega_tf.training import build, loop
    if len(argv) > 1:
        raise UserError(f"Unexpected argument(s) {' '.join(argv[1:])}: "
                        "every setting is a --flag (see --help).")
    config = config_lib.resolve(cli.config_from_flags(flag_values,
                                                      SHORTCUTS))
    workdir = flag_values.workdir or build.default_workdir(config)
    verbose = flag_values.verbose or (1 if sys.stdout.isatty() else 2)
    results = loop.run(config, workdir, verbose)
    print(json.dumps(results, indent=2))
    chosen = results.get("test_top1_at_best_val")
    print(f"test top-1: last {results['test_top1_last']:.2f}"
          + (f", at the best validation epoch ({results['val_best_epoch']}) "
             f"{chosen:.2f}" if chosen is not None else "")
          + f", best {results['test_top1_best']:.2f}; student at "
          f"{results.get('saved_model', '(not exported)')}")


def help_extra(flag_values):
    """--help also lists the config's fields and the methods' weights."""
    from ega_tf import methods
    return (cli.config_help(flag_values) + "\n\nDistillation methods "
            "(--distill) and their default weights (loss.* = None takes "
            "them; --config.loss.FIELD=VALUE overrides one):\n"
            + methods.describe())

if __name__ == "__main__":
    cli.run(define_flags, main, help_extra)
