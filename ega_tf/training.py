"""Training, as a library: config -> data -> model -> fit -> export.

``run(config, workdir)`` is what ``python -m ega_tf.train`` calls once its
flags are resolved. The workdir receives ``config.json`` (everything
resolved), ``history.csv`` and TensorBoard logs (``logs/``), checkpoints
(``checkpoints/``; a rerun with the same workdir resumes from the last one),
``results.json`` and the exported student (``saved_model/``).
"""

from __future__ import annotations

import csv
import json
import os
import time

from absl import logging

from ega_tf import runtime


def _xla_works(fn, example):
    """Whether ``fn`` compiles with XLA on this device."""
    import tensorflow as tf
    try:
        tf.function(fn, jit_compile=True)(example)
        return True
    except Exception as e:  # the XLA bridge raises several error types
        logging.warning("XLA cannot compile the teacher (%s).",
                        str(e).splitlines()[0][:200])
        return False


def choose_jit(setting, teacher=None, image_size=(32, 32)):
    """(jit_compile, why) for ``setting`` = auto | true | false.

    ``auto`` compiles with XLA on GPUs, when the teacher compiles, and not
    on CPUs: there XLA made the training step 35-50 % slower and added its
    compile time (measured with benchmarks/train_step.py, see README)."""
    import numpy as np
    import tensorflow as tf
    setting = str(setting).lower()
    if setting != "auto":
        return setting == "true", f"jit_compile={setting} (config)"
    if not tf.config.list_physical_devices("GPU"):
        return False, ("jit_compile=auto: off on CPU (XLA measured slower "
                       "there)")
    if teacher is not None and not _xla_works(
            lambda x: teacher(x, training=False),
            np.zeros((2, *image_size, 3), np.uint8)):
        return False, "jit_compile=auto: off, the teacher does not compile"
    return True, "jit_compile=auto: on (GPU)"


def default_workdir(config):
    """``runs/<dataset>_<student>_<distill>_s<seed>``; a ``folder:PATH``
    dataset is named by the folder's base name."""
    from ega_tf.data.sources import FOLDER_PREFIX
    name = config.dataset
    if name.startswith(FOLDER_PREFIX):
        name = os.path.basename(os.path.normpath(
            name[len(FOLDER_PREFIX):])) or "folder"
    return os.path.join("runs", f"{name}_{config.student}_{config.distill}"
                        f"_s{config.seed}")


def load_dataset(config):
    """The dataset of ``config``, with its training labels masked."""
    from ega_tf import data
    dataset = data.load(config.dataset, data_dir=config.data_dir,
                        download=config.download,
                        image_size=config.data.image_size,
                        unlabeled_split=config.unlabeled_split)
    dataset.train = dataset.train.with_labels(data.mask_labels(
        dataset.train.labels, config.labeled_fraction, config.seed))
    logging.info("%s", dataset.describe())
    return dataset


def load_teacher(config):
    from ega_tf import teachers
    teacher = teachers.load_or_convert(
        config.teacher, allow_pickle=config.allow_pickle,
        trust_saved_model=config.trust_saved_model)
    logging.info("%s", teachers.describe(teacher))
    return teacher


def build_model(config, dataset, teacher=None):
    """The EGADistiller for ``config`` on ``dataset``, compiled."""
    from ega_tf import students
    from ega_tf.distiller import EGADistiller, build_student
    from ega_tf.optimizers import TorchSGD, step_schedule

    size = dataset.image_size
    # Seeded here, not only at the start of the run: loading or converting
    # the teacher creates layers too, and the student's initial weights
    # must not depend on how many.
    runtime.set_seed(config.seed)
    student = build_student(
        students.create(config.student, input_shape=(*size, 3)),
        dataset.num_classes, config.embed_dim)
    model = EGADistiller(
        student, teacher, dataset.num_classes, config.embed_dim,
        gamma=config.loss.gamma, beta=config.loss.beta,
        alpha=config.loss.alpha, node_weight=config.loss.node_weight,
        edge_weight=config.loss.edge_weight,
        kd_temperature=config.loss.kd_temperature)
    steps = len(dataset.train) // config.batch_size
    lr = step_schedule(config.optim.lr, steps, config.epochs,
                       config.optim.decay_fractions, config.optim.decay_factor)
    jit, why = choose_jit(config.jit_compile, teacher, size)
    logging.info("%s", why)
    sgd = dict(momentum=config.optim.momentum,
               weight_decay=config.optim.weight_decay)
    model.compile(
        optimizer=TorchSGD(lr, **sgd),
        teacher_head_optimizer=(TorchSGD(config.optim.teacher_head_lr, **sgd)
                                if teacher is not None else None),
        jit_compile=jit)
    return model


class Checkpointer:
    """The distiller's ``checkpoint_items()`` and the epoch count, in TF
    checkpoints (written to a temporary name, then renamed by TF)."""

    def __init__(self, model, directory, every=1):
        import tensorflow as tf
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.ckpt = tf.train.Checkpoint(epoch=self.epoch,
                                        **model.checkpoint_items())
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
    """Trains per ``config`` (resolved) into ``workdir``; returns the
    results dict."""
    import keras

    from ega_tf import serving
    from ega_tf.data import pipeline

    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config.to_json(indent=2, sort_keys=True))
    runtime.set_seed(config.seed)
    runtime.set_precision(config.precision)
    dataset = load_dataset(config)
    teacher = load_teacher(config) if config.distill != "none" else None
    train_ds = pipeline.train_dataset(
        dataset.train, config.batch_size, seed=config.seed,
        padding=config.padding, teacher_view=config.teacher_view,
        **config.input)
    test_ds = pipeline.eval_dataset(dataset.test, config.eval_batch_size,
                                    **config.input)

    model = build_model(config, dataset, teacher)
    ckpt = Checkpointer(model, os.path.join(workdir, "checkpoints"),
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
        serving.export_student(model.student, path, dataset.class_names)
        results["saved_model"] = path
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results
