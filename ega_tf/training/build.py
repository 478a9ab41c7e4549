"""What a run is built from: its dataset, its frozen teacher (and the
teacher's cached features of the clean views), and its compiled
``Distiller`` with the optimizers and the step's XLA setting.

``restore_model`` rebuilds a finished run from its workdir, to look inside
it (its embeddings, its teacher head).
"""

from __future__ import annotations

import os

from absl import logging

from ega_tf.core import runtime
from ega_tf.core.errors import UserError, first_line
from ega_tf.training import workdir as wd
from ega_tf.training.checkpointing import Checkpointer


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


def _asked(field, setting, replicas, what):
    """(whether there is a GPU, (on, why) when ``setting`` of ``field`` is
    true or false, None for auto); true with several replicas on CPU is
    refused: XLA cannot compile ``what``."""
    import tensorflow as tf
    setting = str(setting).lower()
    on_gpu = bool(tf.config.list_physical_devices("GPU"))
    if setting == "true" and replicas > 1 and not on_gpu:
        raise UserError(f"{field}=true: XLA cannot compile {what}; use "
                        f"--config.{field}=auto or false.")
    if setting == "auto":
        return on_gpu, None
    return on_gpu, (setting == "true", f"{field}={setting} (config)")


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
    on_gpu, chosen = _asked("jit_compile", setting, replicas,
                            "a multi-replica step on CPU (its cross-replica "
                            "collectives)")
    if chosen is not None:
        return chosen
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


def choose_terms_jit(setting, step_jit=False, replicas=1, deterministic=False,
                     method=None):
    """(terms_jit_compile, why) for ``setting`` = auto | true | false: run
    the method's terms (``Method.compute`` and the KD term) as their own
    XLA-compiled function inside the step (``Distiller``).

    ``auto`` compiles them on GPUs when the whole step is not compiled
    (``step_jit``), under op determinism too: TensorFlow then compiles
    with ``xla_gpu_deterministic_ops``, whose GPU kernels are
    deterministic (or fail to compile), unless ``method`` declares
    ``xla_deterministic = False``; not on CPUs, where XLA was not measured
    faster. ``true`` is obeyed on any device, but not on CPU with several
    replicas: XLA on CPU cannot compile the cross-replica all-gather
    inside the terms."""
    on_gpu, chosen = _asked("terms_jit_compile", setting, replicas,
                            "the terms' cross-replica all-gather on CPU")
    if chosen is not None:
        return chosen
    if not on_gpu:
        return False, "terms_jit_compile=auto: off on CPU"
    if step_jit:
        return False, ("terms_jit_compile=auto: off, the whole step is "
                       "compiled with XLA")
    if deterministic and not getattr(method, "xla_deterministic", True):
        return False, (f"terms_jit_compile=auto: off under op determinism "
                       f"({method.name} declares xla_deterministic=False)")
    return True, ("terms_jit_compile=auto: on (GPU" + (
        ", XLA's deterministic GPU ops)" if deterministic else ")"))


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
        dataset.full_train = dataset.train
        dataset.train_positions = train
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


def _teacher_sha(config):
    """The teacher file's SHA-256 with what changes its features here."""
    from ega_tf.teachers import checkpoint_io
    return (checkpoint_io.sha256(config.teacher) + config.teacher_precision
            + ("+folded" if config.teacher_fold_bn else ""))


def teacher_features(config, teacher, dataset, workdirs, chief, verbose):
    """{"train" | "val" | "test": the clean view's teacher features of that
    split}, computed once (``teacher_cache``) into the first of
    ``workdirs`` and linked into the others (the runs of a lockstep group
    read one copy); empty when the teacher runs each step. With stored
    teacher views (``teacher_views``) the training split's come from the
    store and only the evaluated splits' clean views are here."""
    from ega_tf.training import teacher_store
    stored = bool(teacher_store.parse_views(config.teacher_views))
    if (teacher is None or config.teacher_cache == "none"
            or not (config.teacher_view == "clean" or stored)):
        return {}
    from ega_tf.teachers import feature_cache
    sha = _teacher_sha(config)
    out = {}
    for name, split in (("train", dataset.train), ("val", dataset.val),
                        ("test", dataset.test)):
        if split is None or (stored and name == "train"):
            continue
        paths = ([os.path.join(w, wd.features_file(name)) for w in workdirs]
                 if chief else [None])
        out[name] = feature_cache.load_or_compute(
            paths[0], teacher, sha, split, f"{name} images", verbose)
        for path in paths[1:]:
            wd.link_or_copy(paths[0], path)
    return out


def open_teacher_store(config, teacher, dataset, verbose):
    """The teacher store of ``config``'s training images (all of them,
    before a validation split is held out, so that the runs of every seed
    share it), built first if no run built it before; or None when the
    teacher sees fresh views."""
    from ega_tf.data import augment
    from ega_tf.training import teacher_store
    padding = augment.padding_for(dataset.image_size, config.padding)
    views = teacher_store.parse_views(config.teacher_views, padding)
    if teacher is None or not views:
        return None
    split = (dataset.train if dataset.full_train is None
             else dataset.full_train)
    meta = teacher_store.describe(
        _teacher_sha(config), teacher_store.images_sha256(split),
        dataset.image_size, padding, views, config.teacher_store_dtype)
    return teacher_store.open_or_build(config.teacher_store_dir, meta,
                                       teacher, split, verbose,
                                       batch_size=config.eval_batch_size)


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
    from ega_tf import methods, students
    from ega_tf.nn import layers
    from ega_tf.nn.optimizers import TorchSGD, step_schedule
    from ega_tf.students.head import build_student
    from ega_tf.training.distiller import Distiller

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
    # The loop compiles its own step (``cell.cell_step_function``) with
    # this; Keras's own jit_compile is refused (with a warning) under op
    # determinism.
    model.step_jit_compile = jit
    model.terms_jit_compile, why = choose_terms_jit(
        config.terms_jit_compile, jit, replicas, config.deterministic, method)
    logging.info("%s", why)
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
