"""Training, as a library: config -> strategy -> data -> model -> loop ->
export.

``run(config, workdir)`` is what ``python -m ega_tf.train`` calls once its
flags are resolved. The workdir receives ``config.json`` (everything
resolved), ``history.csv`` and TensorBoard logs (``logs/``), checkpoints
(``checkpoints/``), ``results.json`` and the exported student
(``saved_model/``).

The loop is written here rather than left to ``keras.Model.fit`` because a
run must survive a ``kill -9`` and end exactly where an uninterrupted one
would: a checkpoint records the epoch, the step within it and the running
metrics, and the resumed epoch replays its deterministic stream from that
step (``fit`` restarts an epoch's metrics and cannot start mid-epoch). It
also stops at the first non-finite loss term, naming it, and reads the
metrics over all replicas (Keras keeps them per replica until read outside
the replica step). The model itself is a plain ``Distiller``, which
``fit`` trains as well.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time

from absl import logging

from ega_tf import config as config_lib
from ega_tf import distribute, runtime
from ega_tf import workdir as wd
from ega_tf.constants import COLLAPSED_SHARE, DIAGNOSTICS
from ega_tf.errors import RunStopped, UserError, first_line

# Reported first when several terms stop being finite at once.
FIRST_TERMS = ("ce", "teacher_ce")


class DivergedError(RunStopped):
    """A loss term became NaN or infinite; the message says which, where,
    what drove it and what to try.

    ``term`` is the first logged term that stopped being finite (often the
    cross-entropy, which follows whatever blew up); ``cause``, when the
    step's gradient measurements name one (``cause_of``), is the
    distillation term whose gradient on the student's outputs outgrew the
    cross-entropy's in the steps before: {"term", "field", "weight",
    "ratio", "ratios"}."""

    def __init__(self, term, value, epoch, step, lr, cause=None):
        self.term, self.value, self.epoch, self.step = term, value, epoch, step
        self.lr, self.cause = lr, cause
        where = (f"at epoch {epoch + 1}, step {step + 1} (learning rate "
                 f"{lr:g})")
        kept = ("Nothing was exported; the last finite checkpoint is "
                "kept.")
        if cause:
            others = ", ".join(f"{k} {v:.2g}x" for k, v in
                               cause["ratios"].items() if k != cause["term"])
            weight = (f", now {cause['weight']:g}"
                      if cause.get("weight") is not None else "")
            message = (
                f"training diverged {where}, driven by the {cause['term']} "
                f"term: its gradient on the student's outputs was "
                f"{cause['ratio']:.2g}x the cross-entropy's in the steps "
                f"before" + (f" ({others})" if others else "")
                + f", then {term} became {value}. {kept} Use "
                "--weights=balanced, which holds each term's gradient at "
                "the cross-entropy's, or a smaller weight for the term "
                f"(--config.loss.{cause['field']}{weight}).")
        else:
            message = (
                f"training diverged: {term} became {value} {where}. {kept} "
                "Lower --config.optim.lr (or --config.optim.teacher_head_lr "
                "for teacher_ce), or standardise a teacher whose features "
                "are large (docs/notes.md).")
        super().__init__(message)

    def record(self):
        """The ``diverged`` entry of results.json."""
        return {"term": self.cause["term"] if self.cause else self.term,
                "non_finite": self.term, "value": str(self.value),
                "epoch": self.epoch + 1, "step": self.step + 1,
                "lr": self.lr, "cause": self.cause, "message": str(self)}

    @classmethod
    def from_record(cls, d):
        return cls(d.get("non_finite", d["term"]), d["value"], d["epoch"] - 1,
                   d["step"] - 1, d.get("lr", float("nan")), d.get("cause"))


def cause_of(config, model):
    """The distillation term that drove a divergence, or None: the one
    whose fast-averaged gradient on the student's outputs was at least
    ``balance.DOMINANT`` times the cross-entropy's (a method's own terms
    before its total). None with balanced weights, which hold every term
    at the set ratio."""
    from ega_tf import balance
    ratios = model.gradient_ratios()
    if not ratios or model.balanced:
        return None
    prefix = "grad_ratio_"
    total = f"{prefix}{model.method.name}"
    split = {k: v for k, v in ratios.items() if k != total
             and v[1] is not None}
    pick = split if any(k != f"{prefix}kd" for k in split) else ratios
    found = balance.dominant({k[len(prefix):]: v[1]
                              for k, v in pick.items()})
    if found is None:
        return None
    name, ratio = found
    field = pick[prefix + name][0]
    return {"term": name, "field": field,
            "weight": (float(config.loss[field])
                       if config.loss.get(field) is not None else None),
            "ratio": ratio,
            "ratios": {k[len(prefix):]: v[1] for k, v in pick.items()
                       if v[1] is not None}}


def default_workdir(config):
    """``runs/<dataset>_<student>_<method>_s<seed>``; a ``folder:PATH``
    dataset is named by the folder's base name, a method from a file by
    its class's name."""
    from ega_tf import students
    from ega_tf.data.sources import FOLDER_PREFIX
    name = config.dataset
    if name.startswith(FOLDER_PREFIX):
        name = os.path.basename(os.path.normpath(
            name[len(FOLDER_PREFIX):])) or "folder"
    method = config.method.name
    student = students.parse(config.student).label
    return os.path.join("runs", f"{name}_{student}_{method}"
                        f"_s{config.seed}")


def _xla_works(fn, example):
    """Whether ``fn`` compiles with XLA on this device."""
    import tensorflow as tf
    try:
        tf.function(fn, jit_compile=True)(example)
        return True
    except Exception as e:  # the XLA bridge raises several error types
        logging.warning("XLA cannot compile the teacher (%s).",
                        first_line(e, 200))
        return False


def choose_jit(setting, teacher=None, image_size=(32, 32), replicas=1,
               deterministic=False):
    """(jit_compile, why) for ``setting`` = auto | true | false.

    ``auto`` compiles with XLA on GPUs, when the teacher compiles and op
    determinism is off (``deterministic``: not every XLA op has a
    deterministic GPU kernel, and Keras refuses XLA under it), and not on
    CPUs: there XLA made the training step slower and added its compile
    time (measured with benchmarks/train_step.py, docs/speed.md); nor
    can XLA compile a CPU step holding cross-replica collectives. ``true``
    is obeyed as asked."""
    import numpy as np
    import tensorflow as tf
    setting = str(setting).lower()
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if setting == "true" and replicas > 1 and not on_gpu:
        raise UserError("jit_compile=true: XLA cannot compile a multi-"
                        "replica step on CPU (its cross-replica collectives)"
                        "; use --config.jit_compile=auto or false.")
    if setting != "auto":
        return setting == "true", f"jit_compile={setting} (config)"
    if not on_gpu:
        return False, ("jit_compile=auto: off on CPU (XLA measured slower "
                       "there)")
    if deterministic:
        return False, ("jit_compile=auto: off under op determinism "
                       "(--config.deterministic=false, or "
                       "--config.jit_compile=true, to compile with XLA)")
    if teacher is not None and not _xla_works(
            lambda x: teacher(x, training=False),
            np.zeros((2, *image_size, 3), np.uint8)):
        return False, "jit_compile=auto: off, the teacher does not compile"
    return True, "jit_compile=auto: on (GPU)"


def load_dataset(config):
    """The dataset of ``config``: its validation split held out of the
    training split (``data.val_fraction``), then the rest's labels
    masked."""
    from ega_tf import data
    options = dict(config.data)
    val_fraction = options.pop("val_fraction", 0.0)
    dataset = data.load(config.dataset, data_dir=config.data_dir,
                        download=config.download,
                        unlabeled_split=config.unlabeled_split, **options)
    if val_fraction:
        train, val = data.hold_out(dataset.train.labels, val_fraction,
                                   config.seed)
        dataset.val = dataset.train.subset(val)
        dataset.train = dataset.train.subset(train)
    dataset.train = dataset.train.with_labels(data.mask_labels(
        dataset.train.labels, config.labeled_fraction, config.seed))
    logging.info("%s", dataset.describe())
    return dataset


def load_teacher(config, image_size=None):
    """The frozen teacher of ``config``; with ``image_size``, checked to
    run on images of that size (one line saying which size it takes if
    not)."""
    from ega_tf import teachers
    from ega_tf.teachers import fold, teacher_file
    teacher = teachers.load_or_convert(
        config.teacher, allow_pickle=config.allow_pickle,
        trust_saved_model=config.trust_saved_model)
    if image_size is not None:
        teacher_file.check_runs_on(teacher, image_size,
                                   f"Teacher {config.teacher!r}")
    if config.teacher_fold_bn:
        teacher, folded = fold.fold_batchnorm(teacher)
        logging.info("Folded %d BatchNorm layers of the teacher into its "
                     "convolutions.", folded)
    teacher = teacher_file.with_precision(teacher, config.teacher_precision)
    logging.info("%s (%s)", teachers.describe(teacher),
                 config.teacher_precision)
    return teacher


def teacher_features(config, teacher, dataset, workdirs, chief, verbose):
    """{"train" | "val" | "test": the clean view's teacher features of that
    split}, computed once (``teacher_cache``) into the first of
    ``workdirs`` and linked into the others (the runs of a lockstep group
    read one copy); empty when the teacher runs each step."""
    if (teacher is None or config.teacher_view != "clean"
            or config.teacher_cache == "none"):
        return {}
    from ega_tf.teachers import checkpoint_io, feature_cache
    sha = (checkpoint_io.sha256(config.teacher) + config.teacher_precision
           + ("+folded" if config.teacher_fold_bn else ""))
    out = {}
    for name, split in (("train", dataset.train), ("val", dataset.val),
                        ("test", dataset.test)):
        if split is None:
            continue
        paths = ([os.path.join(w, wd.features_file(name)) for w in workdirs]
                 if chief else [None])
        out[name] = feature_cache.load_or_compute(
            paths[0], teacher, sha, split, f"{name} images", verbose)
        for path in paths[1:]:
            wd.link_or_copy(paths[0], path)
    return out


def uses_teacher(config):
    """Whether ``config``'s method reads a teacher."""
    return config.method.uses_teacher


def learning_rate(config):
    """The student's base rate; the linear rule scales it from the
    published batch of 64 when asked to."""
    lr = config.optim.lr
    if config.optim.scale_lr_with_batch:
        lr *= config.batch_size / 64
    return lr


def build_model(config, dataset, teacher=None, replicas=1):
    """The Distiller for ``config`` on ``dataset``, compiled (in the
    current strategy's scope)."""
    from ega_tf import layers, methods, students
    from ega_tf.distiller import Distiller, build_student
    from ega_tf.optimizers import TorchSGD, step_schedule

    size = dataset.image_size
    # Seeded here, not only at the start of the run: loading or converting
    # the teacher creates layers too, and the student's initial weights
    # must not depend on how many.
    runtime.set_seed(config.seed)
    backbone, student_input = students.build(
        config.student, (*size, 3), weights=config.student_weights,
        feature_layer=config.student_feature_layer,
        mean=config.student_input.mean, std=config.student_input.std,
        bgr=config.student_input.bgr, bn_momentum=config.student_bn_momentum)
    student = build_student(backbone, dataset.num_classes, config.embed_dim,
                            mean=student_input.mean, std=student_input.std,
                            bgr=student_input.bgr)
    layers.synchronize_batchnorm(student, config.distribute.sync_batchnorm)
    steps = len(dataset.train) // config.batch_size
    method = methods.create(
        config.method, dict(config.loss), num_examples=len(dataset.train),
        embed_dim=config.embed_dim, seed=config.seed, steps_per_epoch=steps,
        epochs=config.epochs,
        labels=dataset.train.labels)
    if method.describe_state():
        logging.info("%s", method.describe_state())
    model = Distiller(student, teacher, dataset.num_classes,
                      config.embed_dim, method=method,
                      balance_weights=config.weights == "balanced",
                      balance_ratio=config.balance.ratio,
                      balance_decay=config.balance.decay,
                      teacher_logits=config.teacher_logits)
    if model.logits_source:
        logging.info("%s", model.logits_source)
    lr = step_schedule(learning_rate(config), steps, config.epochs,
                       config.optim.decay_fractions, config.optim.decay_factor)
    jit, why = choose_jit(config.jit_compile, teacher, size, replicas,
                          config.deterministic)
    logging.info("%s", why)
    sgd = dict(momentum=config.optim.momentum,
               weight_decay=config.optim.weight_decay)
    model.compile(
        optimizer=TorchSGD(lr, **sgd),
        teacher_head_optimizer=(TorchSGD(config.optim.teacher_head_lr, **sgd)
                                if teacher is not None else None),
        jit_compile=False)
    # The loop compiles its own step (``_step_function``) with this; Keras's
    # own jit_compile is refused (with a warning) under op determinism.
    model.step_jit_compile = jit
    return model


def restore_model(config, workdir, dataset=None, teacher=None):
    """The distiller of the run in ``workdir`` (made with ``config``,
    resolved), its newest checkpoint restored; for looking inside a
    finished run (its embeddings, its teacher head). ``dataset`` and
    ``teacher`` are loaded when not given."""
    dataset = dataset or load_dataset(config)
    if teacher is None and uses_teacher(config):
        teacher = load_teacher(config, dataset.image_size)
    model = build_model(config, dataset, teacher)
    ckpt = Checkpointer(model, os.path.join(workdir, wd.CHECKPOINTS))
    epoch, _ = ckpt.restore()
    if epoch == 0:
        raise UserError(f"{workdir} has no checkpoint to restore.")
    return model


class Checkpointer:
    """The distiller's ``checkpoint_items()``, the progress (completed
    epochs, steps into the next) and the running metrics, in TF checkpoints.
    TF writes each checkpoint under a temporary name and then records it, so
    a crash mid-save leaves the previous one current; ``restore`` falls back
    to an older checkpoint if the newest cannot be read."""

    def __init__(self, model, directory, read_from=None, keep=3):
        import tensorflow as tf
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        metrics = {f"{m.name}_{i}": v.value for m in model.metrics
                   for i, v in enumerate(m.variables)}
        self.ckpt = tf.train.Checkpoint(epoch=self.epoch, step=self.step,
                                        metrics=metrics,
                                        **model.checkpoint_items())
        self.state = [(f"{item}/{v.path}", v) for item, obj in
                      model.checkpoint_items().items() for v in obj.variables]
        self.manager = tf.train.CheckpointManager(self.ckpt, directory, keep)
        # Other workers restore the chief's checkpoints.
        self.read_from = read_from or directory

    def restore(self):
        """Restores the newest readable checkpoint; returns (epoch, step)."""
        import tensorflow as tf
        state = tf.train.get_checkpoint_state(self.read_from)
        paths = list(state.all_model_checkpoint_paths) if state else []
        for i, path in enumerate(reversed(paths)):
            try:
                self.ckpt.restore(path).assert_existing_objects_matched()
            except Exception as e:  # truncated, corrupt or missing files
                logging.warning("Checkpoint %s cannot be read (%s); %s", path,
                                first_line(e, 200),
                                "trying the one before it."
                                if i + 1 < len(paths) else
                                "no other checkpoint; starting over.")
                continue
            # .numpy(): under a multi-worker strategy these are mirrored.
            epoch, step = int(self.epoch.numpy()), int(self.step.numpy())
            logging.info("Resumed from %s (epoch %d, step %d).", path, epoch,
                         step)
            return epoch, step
        return 0, 0

    def non_finite(self):
        """The name of the first checkpointed float variable holding a NaN
        or an infinity, or None."""
        import numpy as np
        for name, variable in self.state:
            value = np.asarray(variable.numpy())
            if np.issubdtype(value.dtype, np.floating) and not np.all(
                    np.isfinite(value)):
                return name
        return None

    def save(self, epoch, step, number):
        self.epoch.assign(epoch)
        self.step.assign(step)
        self.manager.save(checkpoint_number=number)


def _fetch_function(strategy, teacher, jit):
    """``fetch(iterator)``: the iterator's next batch, the frozen teacher's
    features of its teacher view put in place of the view
    (``teacher_features``). The teacher runs here, in a function of its own,
    and not inside a run's step: every run of a lockstep group then reads
    the one forward (``run_lockstep``), and a run alone computes exactly
    what it computes in a group."""
    import tensorflow as tf

    def add_features(batch):
        x, *rest = batch
        if teacher is None or "teacher" not in x:
            return batch
        x = dict(x)
        x["teacher_features"] = teacher(x.pop("teacher"), training=False)
        return (x, *rest)
    replica = (tf.function(add_features, jit_compile=True, autograph=False)
               if jit else add_features)

    @tf.function(autograph=False)
    def fetch(iterator):
        return strategy.run(replica, args=(next(iterator),))
    return fetch


def _cell_step_function(model, strategy, step_fn, jit):
    """``step(batch)``: ``step_fn`` (a train or test step) on a fetched
    batch on every replica; returns the metrics over all replicas (read in
    cross-replica context).

    Traced without autograph: the steps hold no Python control flow on
    tensors, and converting every function they call adds seconds to the
    start of every run (measured in docs/speed.md, "Start-up")."""
    import tensorflow as tf
    replica_step = (tf.function(step_fn, jit_compile=True, autograph=False)
                    if jit else step_fn)

    @tf.function(autograph=False)
    def step(batch):
        strategy.run(replica_step, args=(batch,))
        return {m.name: m.result() for m in model.metrics}
    return step


def _step_function(model, strategy, step_fn, jit):
    """One step of one run on the next batch of a distributed iterator, as
    the loop takes it: the teacher's forward (``_fetch_function``), then the
    run's step (``_cell_step_function``); returns the metrics."""
    fetch = _fetch_function(strategy, model.teacher, jit)
    step = _cell_step_function(model, strategy, step_fn, jit)
    return lambda iterator: step(fetch(iterator))


def _first_non_finite(logs, ignore=()):
    """The first term of ``logs`` that is not finite: the cross-entropies,
    then the method's terms, the total last; None if all are. The
    diagnostics (zero_features, xs_norm) and the gradient measurements
    (``ignore``) are not terms: they follow."""
    logs = {k: v for k, v in logs.items()
            if k not in DIAGNOSTICS and k not in ignore}
    order = sorted(logs, key=lambda k: (k == "loss", k not in FIRST_TERMS))
    return next((k for k in order if not math.isfinite(logs[k])), None)


class _Progress:
    """Keras's progress bar (verbose 1) or one line per epoch (2); a run of
    a lockstep group (``label``) prints its lines, prefixed by its label, at
    verbose 1 and 2."""

    def __init__(self, verbose, epochs, steps, label=None):
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.label = label
        if label is not None and verbose:
            self.verbose = 2

    def start(self, epoch, step):
        import keras
        if self.verbose == 1:
            print(f"Epoch {epoch + 1}/{self.epochs}")
            self.bar = keras.utils.Progbar(self.steps, verbose=1)
            self.bar.update(step)

    def update(self, step, logs):
        if self.verbose == 1:
            self.bar.update(step + 1, list(logs.items()))

    def end(self, epoch, logs, seconds):
        if self.verbose == 2:
            text = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            label = f"{self.label}: " if self.label else ""
            print(f"{label}Epoch {epoch + 1}/{self.epochs} - "
                  f"{seconds:.0f}s - {text}", flush=True)
        elif self.verbose == 1:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()
                             if k.startswith(("val_", "test_"))), flush=True)


def run(config, workdir, verbose=2, strategy=None, on_step=None,
        on_epoch=None):
    """Trains per ``config`` (resolved) into ``workdir``; returns the
    results dict. Raises ``DivergedError`` if a loss term stops being
    finite, and ``UserError`` (before writing anything) for bad input or a
    workdir that belongs to another run. ``on_step(epoch, step, logs)`` is
    called after every training step (0-based; logs are the epoch's running
    means). ``on_epoch(epoch, row)`` is called with each epoch's history
    row; when it returns True the run stops there, its results recorded
    with status "pruned" (a rerun reports them as they stand). With
    ``config.deterministic``, TensorFlow's op determinism is
    on for the run and the process's setting is restored after it.

    A run alone is a lockstep group of one (``run_lockstep``): it computes
    what it computes in a group, bit for bit."""
    outcome, = run_lockstep(
        [(config, workdir)], verbose, strategy,
        on_step=(None if on_step is None else
                 lambda epoch, step, logs: logs[0] is None or on_step(
                     epoch, step, logs[0])),
        on_epoch=(None if on_epoch is None else
                  lambda index, epoch, row: on_epoch(epoch, row)))
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


# Fields the runs of one lockstep group may set each for itself: what is
# trained, and how. Every other field decides the batches, the views or the
# teacher's features, and is the group's.
CELL_FIELDS = ("distill", "loss", "weights", "balance", "student",
               "student_weights", "student_feature_layer", "student_input",
               "student_bn_momentum", "embed_dim", "optim", "resume",
               "export")


def lockstep_key(config):
    """Runs with equal keys see the same batches, views and teacher
    features, epoch by epoch: ``config`` without ``CELL_FIELDS``."""
    shared = config_lib.as_dict(config)
    for field in CELL_FIELDS:
        shared.pop(field, None)
    return json.dumps(shared, sort_keys=True)


def run_lockstep(runs, verbose=0, strategy=None, on_step=None,
                 on_epoch=None):
    """Trains ``runs`` ([(config, workdir)], configs with one
    ``lockstep_key``: different methods or students on the same data, seed
    and teacher) in one process, in lockstep: each step draws one batch and
    runs the frozen teacher once, then every run's own step (its student,
    teacher head, method state and optimizers) on it. Each run keeps its
    own workdir, checkpoints, history, results and export, and ends bit for
    bit where it would end alone; a run that diverges stops alone, the
    others go on. Runs resumed at different points train in turn, each
    set of equal points in lockstep.

    Returns, per run, its results dict or the ``DivergedError`` that
    stopped it. ``on_step(epoch, step, logs)``: after every step, ``logs``
    one entry per run (None for those not training in it).
    ``on_epoch(run index, epoch, row)``: after each epoch of a run, with
    its history row; True stops that run there (status "pruned")."""
    if not runs:
        return []
    keys = {lockstep_key(c) for c, _ in runs}
    if len(keys) > 1:
        raise ValueError("Runs of a lockstep group must share every config "
                         f"field but {', '.join(CELL_FIELDS)}.")
    workdirs = [os.path.abspath(w) for _, w in runs]
    if len(set(workdirs)) < len(workdirs):
        raise ValueError("Runs of a lockstep group need a workdir each.")
    with runtime.op_determinism(runs[0][0].deterministic), \
            _no_retracing_warning():
        group = _Group(runs, verbose, strategy, on_step, on_epoch)
        try:
            return group.run()
        finally:
            group.close()


class _RetracingFilter:
    """Drops TensorFlow's "triggered tf.function retracing" warning: each
    run of a group traces its own step functions, once, which that
    heuristic counts as retracing one function."""

    @staticmethod
    def filter(record):
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _no_retracing_warning():
    import logging as std_logging
    logger = std_logging.getLogger("tensorflow")
    logger.addFilter(_RetracingFilter)
    try:
        yield
    finally:
        logger.removeFilter(_RetracingFilter)


class _Cell:
    """One run of a group: what it was asked (config, workdir), what it
    built (model, step functions, checkpointer) and where it stands
    (history, the epoch and step it starts from)."""

    def __init__(self, index, config, workdir, chief):
        self.index, self.config, self.workdir = index, config, workdir
        self.chief = chief
        self.label = os.path.basename(os.path.normpath(workdir))
        self.history_path = os.path.join(workdir, wd.HISTORY)
        # Other workers write their checkpoints to a scratch directory
        # (MultiWorkerMirroredStrategy needs every worker to save).
        self.scratch = (None if chief else
                        tempfile.mkdtemp(prefix="ega_tf_worker_"))

    def build(self, dataset, teacher, strategy):
        """The model, its step functions, the newest checkpoint restored
        and the history trimmed to it."""
        config = self.config
        with strategy.scope():
            self.model = build_model(config, dataset, teacher,
                                     strategy.num_replicas_in_sync)
        jit = bool(self.model.step_jit_compile)
        self.train_step = _cell_step_function(self.model, strategy,
                                              self.model.train_step, jit)
        self.eval_step = _cell_step_function(self.model, strategy,
                                             self.model.test_step, jit)
        os.makedirs(self.workdir, exist_ok=True)
        own_dir = os.path.join(self.workdir, wd.CHECKPOINTS)
        with strategy.scope():
            self.ckpt = Checkpointer(self.model, self.scratch or own_dir,
                                     read_from=own_dir)
        self.start_epoch, self.start_step = self.ckpt.restore()
        self.history = [r for r in wd.read_history(self.history_path)
                        if r["epoch"] < self.start_epoch]
        if self.chief:
            wd.write_json(os.path.join(self.workdir, wd.CONFIG),
                          config_lib.as_dict(config))
            wd.write_history(self.history_path, self.history)
        schedule = self.model.optimizer.learning_rate
        self.last_lr = lambda: (  # the rate of the last step taken
            float(schedule(self.model.optimizer.iterations - 1))
            if callable(schedule) else float(schedule))

    def finish(self, dataset, pruned=False):
        """The results of a run whose epochs are done: the probe of its
        test embeddings (``analysis``) and the exported student, on the
        chief; results.json written last. ``pruned``: stopped early by
        ``on_epoch`` (no probe, no export)."""
        from ega_tf import analysis, serving
        results = _results(self.config, self.model, self.history, dataset)
        if pruned:
            results["status"] = "pruned"
        if not self.chief or pruned:
            if self.chief:
                wd.write_json(os.path.join(self.workdir, wd.RESULTS),
                              results)
            return results
        results.update(analysis.write_probe(self.model, dataset.test,
                                            self.workdir))
        if self.config.export:
            path = os.path.join(self.workdir, wd.SAVED_MODEL)
            serving.export_student(self.model.student, path,
                                   dataset.class_names)
            results["saved_model"] = path
        wd.write_json(os.path.join(self.workdir, wd.RESULTS), results)
        return results

    def record_divergence(self, e, dataset):
        if self.chief:
            wd.write_json(os.path.join(self.workdir, wd.RESULTS), {
                **_results(self.config, self.model, self.history, dataset),
                "status": "diverged", "diverged": e.record()})

    def close(self):
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


class _Group:
    """The runs of ``run_lockstep``: the shared dataset, teacher and input
    streams, and each run's ``_Cell``."""

    def __init__(self, runs, verbose, strategy, on_step, on_epoch=None):
        self.config = config = runs[0][0]
        self.verbose, self.on_step = verbose, on_step
        self.on_epoch = on_epoch
        self.strategy = strategy or distribute.create(config)
        distribute.check_batch(config, self.strategy.num_replicas_in_sync)
        self.chief = distribute.is_chief()
        self.outcomes = [None] * len(runs)
        self.cells = []
        # Every workdir is checked before any is written.
        claims = [wd.claim(w, c) for c, w in runs]
        for i, ((c, w), (state, done)) in enumerate(zip(runs, claims)):
            if state == "done":
                try:
                    self.outcomes[i] = _reported(done, w)
                except DivergedError as e:
                    self.outcomes[i] = e
            else:
                self.cells.append(_Cell(i, c, w, self.chief))

    def run(self):
        if self.cells:
            self.build()
            for start in sorted({(c.start_epoch, c.start_step)
                                 for c in self.cells}):
                self._loop([c for c in self.cells if (
                    c.start_epoch, c.start_step) == start], *start)
        return self.outcomes

    def build(self):
        """Data, teacher, every run's model, the input streams."""
        from ega_tf.data import pipeline
        config, strategy, cells = self.config, self.strategy, self.cells
        runtime.set_seed(config.seed)
        runtime.set_precision(config.precision)
        self.dataset = dataset = load_dataset(config)
        taught = [c for c in cells if uses_teacher(c.config)]
        with strategy.scope():
            teacher = (load_teacher(config, dataset.image_size)
                       if taught else None)
        for cell in cells:
            cell.build(dataset, teacher if cell in taught else None,
                       strategy)
        features = teacher_features(
            config, teacher, dataset, [c.workdir for c in cells],
            self.chief, self.verbose)
        self.train = pipeline.TrainStream(
            dataset.train, config.batch_size, seed=config.seed,
            padding=config.padding, teacher_view=config.teacher_view,
            deterministic=config.deterministic,
            features=features.get("train"),
            index=any(c.model.method.uses_index for c in cells),
            **config.input)
        # Evaluated every epoch, in this order: history's val_* and test_*.
        self.evaluated = {
            prefix: pipeline.EvalStream(split, config.eval_batch_size,
                                        features=features.get(name),
                                        **config.input)
            for prefix, name, split in (("val", "val", dataset.val),
                                        ("test", "test", dataset.test))
            if split is not None}
        jit = any(c.model.step_jit_compile for c in taught)
        self.fetch = _fetch_function(strategy, teacher, jit)

    def _stop_if_state_broke(self, cell, live, epoch, step):
        """Before a checkpoint: a run whose state holds a non-finite value
        (a BatchNorm's moving variance overflowing while the loss, which
        normalises with the batch's own, is still finite) is stopped as
        diverged, so no checkpoint kept holds one."""
        broken = cell.ckpt.non_finite()
        if broken:
            self._stop(cell, live, DivergedError(
                broken, "inf or nan", epoch, step, cell.last_lr(),
                cause_of(cell.config, cell.model)))
        return bool(broken)

    def _stop(self, cell, live, error):
        """A run whose loss stopped being finite: recorded, and dropped
        from the group."""
        cell.record_divergence(error, self.dataset)
        self.outcomes[cell.index] = error
        live.remove(cell)

    def _loop(self, cells, start_epoch, start_step):
        """The epochs of ``cells`` (built, all at ``start_epoch`` and
        ``start_step``), appending to their histories; then their
        results. A run's wall time is the time of its own steps plus its
        share of the group's (the batch, the teacher, evaluation's
        batches)."""
        import tensorflow as tf
        config, strategy, train = self.config, self.strategy, self.train
        steps = train.steps_per_epoch
        every = config.checkpoint_every_steps or 0
        label = (lambda c: c.label) if len(self.outcomes) > 1 else (
            lambda c: None)
        for cell in cells:
            cell.progress = _Progress(self.verbose, config.epochs, steps,
                                      label(cell))
            # TensorBoard runs: train, validation (held-out training images)
            # and test.
            boards = {"train": "train", "val": "validation", "test": "test"}
            cell.writers = ({prefix: tf.summary.create_file_writer(
                os.path.join(cell.workdir, wd.LOGS, boards[prefix]))
                for prefix in ("train", *self.evaluated)}
                if self.chief else {})
        live = list(cells)
        by_index = {c.index: c for c in self.cells}
        slots = [by_index.get(i) for i in range(len(self.outcomes))]
        for epoch in range(start_epoch, config.epochs):
            if not live:
                break
            skip = start_step if epoch == start_epoch else 0
            for cell in live:
                if not skip:  # a resumed epoch keeps its running metrics
                    cell.model.reset_metrics()
                cell.progress.start(epoch, skip)
                cell.seconds = 0.0
            iterator = iter(train.distributed(strategy, epoch, skip))
            shared, logs = 0.0, {}
            for step in range(skip, steps):
                begin = time.time()
                batch = self.fetch(iterator)
                shared += (time.time() - begin) / len(live)
                for cell in list(live):
                    begin = time.time()
                    logs[cell] = {k: float(v) for k, v in
                                  cell.train_step(batch).items()}
                    cell.seconds += time.time() - begin
                    bad = _first_non_finite(logs[cell],
                                            cell.model.monitor_names())
                    if bad:
                        self._stop(cell, live, DivergedError(
                            bad, logs[cell][bad], epoch, step,
                            cell.last_lr(), cause_of(cell.config,
                                                     cell.model)))
                        continue
                    cell.progress.update(step, logs[cell])
                    done = epoch * steps + step + 1
                    if every and done % every == 0 and step + 1 < steps:
                        if self._stop_if_state_broke(cell, live, epoch,
                                                     step):
                            continue
                        cell.ckpt.save(epoch, step + 1, done)
                if self.on_step is not None:
                    self.on_step(epoch, step, [
                        logs.get(c) if c in live else None for c in slots])
                if not live:
                    return
            for cell in live:
                cell.train_seconds = cell.seconds = cell.seconds + shared
            evaluated = self._evaluate(live)
            for cell in list(live):
                values = evaluated[cell]
                bad = next(((prefix, k) for prefix, v in values.items()
                            for k in [_first_non_finite(v)] if k), None)
                if bad:
                    prefix, k = bad
                    self._stop(cell, live, DivergedError(
                        f"{prefix}_{k}", values[prefix][k], epoch,
                        steps - 1, cell.last_lr(), cause_of(cell.config,
                                                            cell.model)))
                    continue
                if self._stop_if_state_broke(cell, live, epoch, steps - 1):
                    continue
                self._end_epoch(cell, epoch, logs.get(cell, {}), values,
                                steps)
                if self.on_epoch is not None and epoch + 1 < config.epochs \
                        and self.on_epoch(cell.index, epoch,
                                          cell.history[-1]):
                    live.remove(cell)
                    self.outcomes[cell.index] = cell.finish(
                        self.dataset, pruned=True)
        for cell in live:
            self.outcomes[cell.index] = cell.finish(self.dataset)

    def _evaluate(self, cells):
        """{cell: {prefix: its metrics over that stream}}, train-only terms
        left out; each batch's teacher forward computed once."""
        out = {cell: {} for cell in cells}
        for prefix, stream in self.evaluated.items():
            for cell in cells:
                cell.model.reset_metrics()
            iterator = iter(stream.distributed(self.strategy))
            values = {}
            for _ in range(stream.steps):
                begin = time.time()
                batch = self.fetch(iterator)
                shared = (time.time() - begin) / len(cells)
                for cell in cells:
                    begin = time.time()
                    values[cell] = cell.eval_step(batch)
                    cell.seconds += time.time() - begin + shared
            for cell in cells:
                out[cell][prefix] = {
                    k: float(v) for k, v in values[cell].items()
                    if k not in cell.model.train_only_names()}
        return out

    def _end_epoch(self, cell, epoch, logs, evaluated, steps):
        """The epoch's row in the cell's history, TensorBoard and
        checkpoint."""
        import tensorflow as tf
        config = cell.config
        val = {f"{prefix}_{k}": v for prefix, values in evaluated.items()
               for k, v in values.items()}
        row = {"epoch": epoch, **logs, **val,
               "epoch_seconds": cell.seconds,
               "train_seconds": cell.train_seconds}
        was_collapsed = collapse(cell.history)[0]
        cell.history.append(row)
        collapsed, _, share = collapse(cell.history)
        if collapsed and not was_collapsed:
            _collapse_warning(epoch + 1, share, cell.label
                              if len(self.outcomes) > 1 else None,
                              balanced=config.weights == "balanced")
        cell.progress.end(epoch, {**logs, **val}, row["epoch_seconds"])
        if self.chief:
            # The row goes in before the checkpoint: a crash between the
            # two resumes from the previous checkpoint, and the history is
            # trimmed to it.
            wd.write_history(cell.history_path, cell.history)
            for prefix, values in (("train", logs), *evaluated.items()):
                with cell.writers[prefix].as_default(step=epoch + 1):
                    for k, v in values.items():
                        tf.summary.scalar(k, v)
        if (epoch + 1) % config.checkpoint_every == 0 or \
                epoch + 1 == config.epochs:
            cell.ckpt.save(epoch + 1, 0, (epoch + 1) * steps)

    def close(self):
        for cell in self.cells:
            cell.close()


def collapse(history):
    """(collapsed, epoch, share): whether the last epoch's student has
    collapsed (``test_zero_features`` >= COLLAPSED_SHARE), since which epoch
    (1-based) without recovering, and the last share; share None when the
    run does not log it."""
    since, share = None, None
    for row in history:
        share = row.get("test_zero_features")
        if share is None:
            return False, None, None
        if share >= COLLAPSED_SHARE:
            since = since or row["epoch"] + 1
        else:
            since = None
    return since is not None, since, share


def _collapse_warning(epoch, share, label=None, balanced=False):
    fix = ("a smaller --config.balance.ratio" if balanced else
           "--weights=balanced, a smaller method weight "
           "(--config.loss.beta)")
    logging.warning(
        (label.replace("%", "%%") + ": " if label else "") +
        "The student has collapsed at epoch %d: %.0f%% of its pooled "
        "features are exactly zero on the test set (dead ReLUs; at least "
        "%.0f%% counts as collapsed). Its accuracy is not the method's: "
        "try %s or a smaller learning rate.",
        epoch, 100 * share, 100 * COLLAPSED_SHARE, fix)


def _reported(results, workdir):
    """A finished (or diverged) run, reported as it stands."""
    if results.get("status") == "diverged":
        raise DivergedError.from_record(results["diverged"]) from None
    logging.info("%s holds a finished run of this config; its results are "
                 "reported as they are (--config.resume=false trains it "
                 "again).", workdir)
    return results


def best_val_epoch(history):
    """The 0-based index of the epoch with the best validation top-1 (the
    first, on a tie, as Keras's ModelCheckpoint keeps it), or None without
    a validation split."""
    scores = [r.get("val_top1") for r in history]
    if not scores or any(s is None for s in scores):
        return None
    return int(max(range(len(scores)), key=lambda i: (scores[i], -i)))


def _results(config, model, history, dataset):
    last = history[-1] if history else {}
    collapsed, since, share = collapse(history)
    best = best_val_epoch(history)
    return {
        "collapsed": collapsed,
        "collapsed_since_epoch": since,
        "test_zero_features_last": share,
        "status": "finished",
        "dataset": config.dataset, "student": config.student,
        "distill": config.distill, "teacher": config.teacher or None,
        "teacher_logits": (("classifier" if model.own_classifier is not None
                            else "head") if model.teacher is not None
                           else None),
        "seed": config.seed, "labeled_fraction": config.labeled_fraction,
        "epochs": len(history),
        "test_top1_last": 100 * last["test_top1"] if history else None,
        # The best epoch's test top-1, as RepDistiller and most papers
        # report it: chosen on the test set, so for comparison with papers
        # only; the validation columns choose without it.
        "test_top1_best": (100 * max(r["test_top1"] for r in history)
                           if history else None),
        "val_examples": len(dataset.val) if dataset.val is not None else 0,
        "val_top1_last": (100 * last["val_top1"] if "val_top1" in last
                          else None),
        "val_top1_best": (100 * history[best]["val_top1"]
                          if best is not None else None),
        "val_best_epoch": best + 1 if best is not None else None,
        "test_top1_at_best_val": (100 * history[best]["test_top1"]
                                  if best is not None else None),
        "test_top5_last": (100 * last["test_top5"] if "test_top5" in last
                           else None),
        "teacher_head_top1_last": (100 * last["test_teacher_top1"]
                                   if "test_teacher_top1" in last else None),
        "student_params": int(model.student.count_params()),
        # Summed over the epochs, across resumes.
        "wall_time_s": round(sum(r.get("epoch_seconds", 0)
                                 for r in history), 1),
    }
