r"""Trains a student, distilled with EGA from a frozen teacher or alone.

    python -m ega_tf.train --dataset=digits --teacher=teacher.keras \
        --student=resnet8 --epochs=30 --workdir=runs/ega
    python -m ega_tf.train --config=configs/digits.py --distill=none
    python -m ega_tf.train --config=configs/default.py --config.optim.lr=0.1

The workdir receives ``config.json`` (everything resolved), ``history.csv``
and TensorBoard logs (``logs/``), checkpoints (``checkpoints/``; a rerun with
the same workdir resumes from the last one), ``results.json`` and the
exported student (``saved_model/``).
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time

from absl import app, flags, logging
from ml_collections import config_flags

from ega_tf import cli

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", os.path.join(os.path.dirname(__file__), "config.py"),
    "Python config file with get_config(); `file.py:arg` passes arg. "
    "Fields can be overridden: --config.optim.lr=0.1.")
flags.DEFINE_string("dataset", None, "Dataset: digits, cifar100, stl10, "
                    "tiny_imagenet, or folder:PATH (PATH/<split>/<class>/"
                    "<image>).")
flags.DEFINE_string("student", None, "Student network (ega_tf.students).")
flags.DEFINE_string("teacher", None, "Teacher .keras file, or a published "
                    "checkpoint (converted once, cached) for --distill=ega.")
flags.DEFINE_enum("distill", None, ["ega", "none"],
                  "ega: CE + EGA from the teacher; none: CE alone.")
flags.DEFINE_integer("epochs", None, "Training epochs.")
flags.DEFINE_integer("batch_size", None, "Images per step.")
flags.DEFINE_float("labeled_fraction", None,
                   "Stratified fraction of training labels kept; the rest "
                   "become -1 (used by EGA only).")
flags.DEFINE_integer("seed", None, "Random seed (data order, init, views).")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_bool("download", None, "Let TFDS download a missing dataset.")
flags.DEFINE_bool("trust_saved_model", None, "Load a teacher made from a "
                  "SavedModel (convert_teacher --model=DIR): it may run "
                  "arbitrary TensorFlow ops.")
flags.DEFINE_bool("unlabeled_split", None, "stl10: also train on its "
                  "100,000 unlabelled images (label -1, EGA only).")
flags.DEFINE_string("workdir", None, "Output directory (default: "
                    "runs/<dataset>_<student>_<distill>_s<seed>).")
flags.DEFINE_integer("verbose", None, "Keras progress: 1 bar, 2 one line "
                     "per epoch (default: 1 on a terminal, else 2).")

_SHORTCUTS = ("dataset", "student", "teacher", "distill", "epochs",
              "batch_size", "labeled_fraction", "seed", "data_dir",
              "download", "unlabeled_split", "trust_saved_model")
_LOW_LR_STUDENTS = ("MobileNetV2", "ShuffleV1", "ShuffleV2")


def resolve_config(config, overrides):
    """Applies flag overrides and fills derived defaults; validates."""
    from ega_tf.registry import check_choice
    config = config.copy_and_resolve_references()
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, value)
    if config.optim.lr is None:
        config.optim.lr = 0.01 if config.student in _LOW_LR_STUDENTS else 0.05
    check_choice("distill", config.distill, ("ega", "none"))
    check_choice("precision", config.precision, cli.PRECISIONS)
    check_choice("jit_compile", str(config.jit_compile).lower(),
                 ("auto", "true", "false"))
    check_choice("teacher_view", config.teacher_view,
                 ("independent", "same", "clean"))
    check_choice("data.cache", config.data.cache, ("auto", "memory", "none"))
    if config.distill == "ega" and not config.teacher:
        raise ValueError(
            "--distill=ega needs a teacher: pass --teacher=FILE.keras. Make "
            "one offline with `python -m ega_tf.pretrain --dataset="
            f"{config.dataset} --out=teacher.keras`, or use --distill=none "
            "for the cross-entropy baseline.")
    return config


def _xla_works(fn, example):
    """Whether ``fn`` compiles with XLA on this device (some ops, e.g.
    bicubic resizing, have no XLA kernel)."""
    import tensorflow as tf
    try:
        tf.function(fn, jit_compile=True)(example)
        return True
    except Exception as e:  # the XLA bridge raises several error types
        logging.warning("XLA cannot compile the teacher (%s); training "
                        "without jit_compile.", str(e).splitlines()[0][:200])
        return False


def build_model(config, dataset):
    """The EGADistiller, compiled, for ``config`` on ``dataset``."""
    import numpy as np
    from ega_tf import students, teachers
    from ega_tf.distiller import EGADistiller, build_student
    from ega_tf.optimizers import TorchSGD, step_schedule

    size = dataset.image_size
    student = build_student(
        students.create(config.student, input_shape=(*size, 3)),
        dataset.num_classes, config.embed_dim)
    teacher = None
    if config.distill == "ega":
        teacher = teachers.load_or_convert(
            config.teacher, trust_saved_model=config.trust_saved_model)
        logging.info("%s", teachers.describe(teacher))
    model = EGADistiller(
        student, teacher, dataset.num_classes, config.embed_dim,
        gamma=config.loss.gamma, beta=config.loss.beta,
        alpha=config.loss.alpha, node_weight=config.loss.node_weight,
        edge_weight=config.loss.edge_weight,
        kd_temperature=config.loss.kd_temperature)
    steps = len(dataset.train) // config.batch_size
    lr = step_schedule(config.optim.lr, steps, config.epochs,
                       config.optim.decay_fractions, config.optim.decay_factor)
    jit = str(config.jit_compile).lower()
    if jit == "auto":
        example = np.zeros((2, *size, 3), np.uint8)
        jit = teacher is None or _xla_works(
            lambda x: teacher(x, training=False), example)
    model.compile(
        optimizer=TorchSGD(lr, config.optim.momentum,
                           config.optim.weight_decay),
        teacher_head_optimizer=(TorchSGD(config.optim.teacher_head_lr,
                                         config.optim.momentum,
                                         config.optim.weight_decay)
                                if teacher is not None else None),
        jit_compile=jit in (True, "true"))
    model.optimizer.build(model.student.trainable_variables)
    return model


class _Checkpointer:
    """Student, online teacher head, both optimizers and the epoch count, in
    TF checkpoints (written to a temporary name, then renamed by TF). The
    frozen teacher is not saved: it is its own file."""

    def __init__(self, model, directory, every=1):
        import tensorflow as tf
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        parts = {"student": model.student, "optimizer": model.optimizer,
                 "epoch": self.epoch}
        if model.teacher is not None:
            parts.update(teacher_embed=model.teacher_embed,
                         teacher_classifier=model.teacher_classifier,
                         teacher_head_optimizer=model.teacher_head_optimizer)
        self.ckpt = tf.train.Checkpoint(**parts)
        self.manager = tf.train.CheckpointManager(self.ckpt, directory, 2)
        self.every = max(1, int(every))

    def restore(self):
        """Restores the latest checkpoint; returns the epochs completed."""
        if self.manager.latest_checkpoint:
            self.ckpt.restore(self.manager.latest_checkpoint).assert_consumed()
            logging.info("Resumed from %s (epoch %d).",
                         self.manager.latest_checkpoint, int(self.epoch))
        return int(self.epoch)

    def callback(self, total_epochs):
        import keras
        outer = self

        class Save(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if (epoch + 1) % outer.every == 0 or epoch + 1 == total_epochs:
                    outer.epoch.assign(epoch + 1)
                    outer.manager.save(checkpoint_number=epoch + 1)

        return Save()


def _read_history(path):
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def run(config, workdir, verbose=2):
    """Trains per ``config`` into ``workdir``; returns the results dict."""
    import keras
    from ega_tf import data, export
    from ega_tf.data import pipeline

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2, sort_keys=True))
    cli.set_seed(config.seed)
    cli.set_precision(config.precision)
    dataset = data.load(config.dataset, config.data_dir, config.download,
                        config.data.image_size, config.unlabeled_split)
    dataset.train = dataset.train.with_labels(data.mask_labels(
        dataset.train.labels, config.labeled_fraction, config.seed))
    logging.info("%s", dataset.describe())
    train_ds = pipeline.train_dataset(
        dataset.train, config.batch_size, config.seed, config.padding,
        config.teacher_view, config.data.deterministic, config.data.cache,
        config.data.cache_limit_gb, config.data.shuffle_buffer)
    test_ds = pipeline.eval_dataset(dataset.test, config.eval_batch_size,
                                    config.data.cache,
                                    config.data.cache_limit_gb)

    model = build_model(config, dataset)
    ckpt = _Checkpointer(model, os.path.join(workdir, "checkpoints"),
                         config.checkpoint_every)
    start_epoch = ckpt.restore()
    history_csv = os.path.join(workdir, "history.csv")
    if start_epoch == 0 and os.path.exists(history_csv):
        os.remove(history_csv)  # a fresh run: no stale epochs in the log
    start = time.time()
    if start_epoch < config.epochs:
        model.fit(train_ds, validation_data=test_ds, epochs=config.epochs,
                  initial_epoch=start_epoch, verbose=verbose, shuffle=False,
                  callbacks=[
                      keras.callbacks.CSVLogger(history_csv, append=True),
                      keras.callbacks.TensorBoard(
                          os.path.join(workdir, "logs")),
                      ckpt.callback(config.epochs)])
    wall = time.time() - start
    history = _read_history(history_csv)
    last = history[-1]
    results = {
        "dataset": config.dataset, "student": config.student,
        "distill": config.distill, "teacher": config.teacher or None,
        "seed": config.seed, "labeled_fraction": config.labeled_fraction,
        "epochs": len(history),
        "test_top1_best": 100 * max(r["val_top1"] for r in history),
        "test_top1_last": 100 * last["val_top1"],
        "test_top5_last": (100 * last["val_top5"] if "val_top5" in last
                           else None),
        "teacher_head_top1_last": (100 * last["val_teacher_top1"]
                                   if "val_teacher_top1" in last else None),
        "wall_time_s": round(wall, 1),
        "student_params": int(model.student.count_params()),
    }
    if config.export:
        path = os.path.join(workdir, "saved_model")
        export.export_student(model.student, path, dataset.class_names)
        results["saved_model"] = path
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


@cli.friendly_errors
def main(argv):
    del argv
    config = resolve_config(FLAGS.config,
                            {k: getattr(FLAGS, k) for k in _SHORTCUTS})
    workdir = FLAGS.workdir or os.path.join(
        "runs", f"{config.dataset}_{config.student}_{config.distill}"
        f"_s{config.seed}")
    verbose = FLAGS.verbose or (1 if sys.stdout.isatty() else 2)
    results = run(config, workdir, verbose)
    print(json.dumps(results, indent=2))
    print(f"test top-1: best {results['test_top1_best']:.2f}, last "
          f"{results['test_top1_last']:.2f}; student at "
          f"{results.get('saved_model', '(not exported)')}")


if __name__ == "__main__":
    cli.quiet_tensorflow()
    app.run(main)
