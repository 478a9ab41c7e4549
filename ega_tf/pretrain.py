r"""Pretrains a self-supervised teacher with SimCLR, without labels.

    python -m ega_tf.pretrain --dataset=digits --arch=resnet20 --epochs=60 \
        --out=teacher.keras

Trains --arch (a student-zoo network) with SimCLR on the training images
only, then freezes it and reports its weighted k-NN top-1 on the test split
(and that of the same network untrained). Every setting is a field of the
config (ega_tf/ssl/config.py), overridable with --config.FIELD=VALUE.
"""

from __future__ import annotations

import json
import os
import time

from ega_tf import cli
from ega_tf.core.errors import UserError

SHORTCUTS = {
    "dataset": "Dataset (the labels are never used for training).",
    "data_dir": "TFDS data directory.",
    "arch": "Backbone from the student zoo.",
    "epochs": "Pretraining epochs.",
    "batch_size": "Images per step (two views each).",
    "seed": "Random seed.",
}


def define_flags(flag_values):
    from ega_tf.ssl import config
    cli.define_config_file(
        flag_values, os.path.join(os.path.dirname(__file__), "ssl",
                                  "config.py"),
        "Pretraining config file with get_config().")
    cli.define_shortcuts(flag_values, config.get_config(), SHORTCUTS)
    cli.define("string", "out", "teacher.keras", "Where to write the "
               "teacher (.keras).", flag_values)


def main(argv, flag_values):
    from ega_tf import data
    from ega_tf.core import runtime
    from ega_tf.ssl import config as config_lib
    from ega_tf.ssl.pretrain import pretrain
    from ega_tf.teachers import teacher_file
    if len(argv) > 1:
        raise UserError(f"Unexpected argument(s) {' '.join(argv[1:])} "
                        "(see --help).")
    config = cli.config_from_flags(flag_values, SHORTCUTS)
    config_lib.validate(config)
    out = flag_values.out
    teacher_file.check_output_path(out)  # before hours of training
    runtime.set_seed(config.seed)
    runtime.set_precision(config.precision)
    dataset = data.load(config.dataset, data_dir=config.data_dir)
    from absl import logging
    logging.info("%s", dataset.describe())
    start = time.time()
    teacher, acc, knn_random = pretrain(
        dataset, arch=config.arch, epochs=config.epochs,
        batch_size=config.batch_size, knn_k=config.knn_k, seed=config.seed,
        standardize=config.standardize, **config.optim, **config.simclr)
    teacher_file.save(teacher, out)
    summary = {"teacher": out, "arch": config.arch, "knn_top1": acc,
               "knn_top1_random_init": knn_random, "knn_k": config.knn_k,
               "chance": 1.0 / dataset.num_classes,
               "wall_time_s": round(time.time() - start, 1)}
    print(f"SimCLR teacher {config.arch} on {dataset.name}: k-NN top-1 "
          f"{100 * acc:.2f}% (untrained: {100 * knn_random:.2f}%, chance "
          f"{100 / dataset.num_classes:.1f}%), written to {out}")
    print(json.dumps(summary))


help_extra = cli.config_help  # --help also lists the config's fields

if __name__ == "__main__":
    cli.run(define_flags, main, help_extra)
