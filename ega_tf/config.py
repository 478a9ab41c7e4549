"""The training configuration: the published EGA recipe, and its checks.

``python -m ega_tf.train`` starts from this file's ``get_config()``; the
files in ``configs/`` derive from ``default_config()``. Every field can be
overridden on the command line (``--config.optim.lr=0.1``), ``resolve``
fills the derived defaults and checks every field at once, and the resolved
config is written to the run's workdir. docs/architecture.md explains why
each published default is what it is.
"""

from __future__ import annotations

import os

import ml_collections
from ml_collections import config_dict

from ega_tf.core.errors import ConfigError, UserError

VARIANTS = ("smoke",)


def default_config(arg=None):
    """The published recipe; ``arg="smoke"`` shrinks it to a seconds-long
    run on digits."""
    check_variant(arg)
    c = ml_collections.ConfigDict()
    # What to train on.
    c.dataset = "cifar100"      # digits | cifar100 | stl10 | tiny_imagenet | folder:PATH
    c.data_dir = config_dict.placeholder(str)  # TFDS directory
    c.download = False          # let TFDS download when not prepared
    c.unlabeled_split = False   # stl10: add the 100k unlabelled images (-1)
    c.labeled_fraction = 1.0    # stratified; the rest of the labels become -1
    c.data = ml_collections.ConfigDict()
    # Side of the square training images; None: the dataset's own (folder:
    # chosen from the images' sizes).
    c.data.image_size = config_dict.placeholder(int)
    # folder: files that cannot be decoded: skip (one warning) | error.
    c.data.on_bad_image = "skip"
    # Validation: this stratified fraction of the training split's labeled
    # images (drawn with the run's seed, labels kept) is held out and
    # evaluated every epoch beside the test set, for choosing an epoch or
    # tuning without the test set. 0: none, the published recipe (compare
    # defaults to 0.1: ega_tf/compare.py).
    c.data.val_fraction = 0.0

    # The two networks.
    # A zoo name (resnet8x4, ...), keras.applications.NAME,
    # path/to/model.keras or package.module:function (docs/students.md).
    c.student = "resnet8x4"
    c.student_weights = config_dict.placeholder(str)  # a weights file
    # A user's model that outputs logits: the layer giving its features.
    c.student_feature_layer = config_dict.placeholder(str)
    # How the student's input is normalised, (pixel / 255 - mean) / std per
    # channel (bgr: in BGR order); None: what its kind implies (the zoo:
    # CLIP's; keras.applications: measured from its preprocess_input; a
    # model of yours: raw pixels if it starts with a Rescaling layer).
    c.student_input = ml_collections.ConfigDict()
    c.student_input.mean = config_dict.placeholder(tuple)
    c.student_input.std = config_dict.placeholder(tuple)
    c.student_input.bgr = config_dict.placeholder(bool)
    # BatchNorm momentum of the student's moving statistics; None: the
    # recipe's 0.9 (PyTorch's 0.1) for the zoo and keras.applications, a
    # model of yours keeps its own.
    c.student_bn_momentum = config_dict.placeholder(float)
    c.teacher = ""              # .keras teacher or a published checkpoint
    c.trust_saved_model = False  # allow teachers that call a SavedModel
    c.allow_pickle = False      # unpickle checkpoint files (runs their code)
    # ega | none (cross-entropy baseline) | a baseline or ablation: the
    # registry of ega_tf/methods, listed by --help and docs/methods.md; or
    # path/to/my_method.py:MyMethod, a method of your own.
    c.distill = "ega"
    # The frozen teacher's arithmetic: float32 | bfloat16 (faster, ~6e-3).
    c.teacher_precision = "float32"
    # Fold the frozen teacher's BatchNorm into its convolutions when it is
    # loaded (ega_tf/teachers/fold.py: the same features to float32
    # rounding, a faster forward); the teacher's file is left as it is.
    c.teacher_fold_bn = True
    # auto: with teacher_view=clean, compute the teacher's features once
    # and train from them (the same numbers, no teacher in the step); none.
    c.teacher_cache = "auto"
    # Stored teacher views: 0 (the teacher sees a fresh view every step, as
    # published) | M: its features of M views of each training image,
    # computed once into a store shared by every run with the same teacher,
    # images and views, each step reading one of them | all: every view
    # (ega_tf/training/teacher_store.py). A number or a word, hence object.
    c.teacher_views = config_dict.FieldReference(0, field_type=object)
    c.teacher_store_dir = ""        # "": ~/.cache/ega_tf/teacher_store
    c.teacher_store_dtype = "float32"  # float32 | float16 (half the bytes)
    c.embed_dim = 256           # D, the shared node-embedding width

    # The loss weights: None takes the --distill method's published
    # default (ega_tf/methods); resolve() fills them in, and the run's
    # config.json shows the values used. Every registered method's fields
    # are here, a user's method's too once its file is loaded.
    from ega_tf import methods
    c.loss = ml_collections.ConfigDict()
    for name, kind in methods.loss_fields().items():
        c.loss[name] = config_dict.placeholder(kind)

    # published: each method's own weights (config.loss), as its authors
    # set them. balanced: the method's beta and the KD term's alpha follow
    # the gradients, each term pushing the student's outputs balance.ratio
    # times as hard as the cross-entropy (ega_tf/training/balance.py; the method's
    # own terms keep their published proportions).
    c.weights = "published"
    c.balance = ml_collections.ConfigDict()
    c.balance.ratio = 1.0
    # Moving average of the gradient norms the balance reads (per step).
    c.balance.decay = 0.99

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = config_dict.placeholder(float)  # None: the student's own
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4  # coupled, as torch.optim.SGD
    c.optim.decay_fractions = (150 / 240, 180 / 240, 210 / 240)
    c.optim.decay_factor = 0.1
    c.optim.teacher_head_lr = 0.01
    # The linear rule: lr * batch_size / 64 (the published rate is for 64).
    c.optim.scale_lr_with_batch = False

    c.epochs = 240
    c.batch_size = 64
    c.eval_batch_size = 256
    # RandomCrop padding of both views; None: 4 px at 32 px, scaled with the
    # resolution (8 at 64 px, 12 at 96 px).
    c.padding = config_dict.placeholder(int)
    c.teacher_view = "independent"  # independent | same | clean
    # The teacher logits the logit methods (kd, dkd, dist, mlkd, ccl) read:
    # auto takes a supervised teacher's own classifier when it has one for
    # the data set's classes (as RepDistiller and mdistiller distil), else
    # the online teacher head's; head | classifier choose one.
    c.teacher_logits = "auto"

    # The input pipeline (decoded-image cache, shuffling, map order).
    c.input = ml_collections.ConfigDict()
    c.input.cache = "auto"       # auto | memory | none
    c.input.cache_limit_gb = 8.0  # auto caches splits up to this size
    c.input.shuffle_buffer = config_dict.placeholder(int)  # None: whole split

    # Devices: the strategy and the batch statistics across replicas.
    c.distribute = ml_collections.ConfigDict()
    c.distribute.strategy = "auto"   # auto | none | mirrored | multi_worker
    c.distribute.cpu_replicas = 1    # >1: that many logical CPU devices
    c.distribute.sync_batchnorm = True  # BatchNorm over the global batch

    c.seed = 0
    # Deterministic TF ops and input order: the same seed gives the same
    # numbers, and a resumed run ends where an uninterrupted one would.
    c.deterministic = True
    c.precision = "float32"     # float32 | mixed_float16 | mixed_bfloat16
    # auto: XLA on GPUs without op determinism, off on CPUs | true | false
    c.jit_compile = "auto"
    # auto: the method's terms as their own XLA-compiled function on GPUs
    # (under op determinism too), off on CPUs | true | false
    c.terms_jit_compile = "auto"
    c.checkpoint_every = 1      # epochs between checkpoints
    # Also checkpoint every N steps within long epochs (None: at epoch ends).
    c.checkpoint_every_steps = config_dict.placeholder(int)
    c.resume = True             # false: start the workdir over
    c.export = True             # write <workdir>/saved_model at the end

    if arg == "smoke":
        c.dataset = "digits"
        c.student = "resnet8"
        c.epochs = 1
        c.batch_size = 32
    return c


def get_config(arg=None):
    """Lets this file serve as ``--config`` itself (the CLI's default)."""
    return default_config(arg)


def check_variant(arg, variants=VARIANTS):
    """``--config=file.py:ARG`` must name a variant the file knows."""
    if arg not in (None, "", *variants):
        raise UserError(f"Unknown config variant {arg!r} (--config=FILE:"
                        f"{arg}). Valid variants: {', '.join(variants)}.")


def resolve(config):
    """A copy with derived defaults filled in, every field checked, and
    ``config.method``: the class of the method ``config.distill`` names,
    which every later step asks (its declarations, its weights). That field
    is derived, not set: a workdir's config.json
    (``training.workdir.config_record``) leaves it out."""
    from ega_tf import methods, students
    config = config.copy_and_resolve_references()
    if "method" in config:  # resolved again, from config.distill
        with config.unlocked():
            del config["method"]
    validate(config)
    method = methods.get(config.distill)
    with config.loss.unlocked():
        for name, value in methods.resolve_weights(
                method, config.loss,
                balanced=config.weights == "balanced").items():
            config.loss[name] = value
    if config.optim.lr is None:
        config.optim.lr = students.parse(config.student).default_lr
    with config.unlocked():
        config.method = method
    return config


def _problems(config):
    """Every problem of ``config``, as messages, in the order of the
    fields (the dataset first, the teacher last)."""
    from ega_tf import data, methods, students
    from ega_tf.core.registry import check_choice
    from ega_tf.core.runtime import check_precision
    from ega_tf.data import augment, folder, pipeline
    from ega_tf.teachers import feature_cache, teacher_file
    from ega_tf.training import balance, distribute, teacher_store

    problems = []

    def check(fn, *args):
        try:
            fn(*args)
        except UserError as e:
            problems.append(str(e))

    def need(ok, message):
        if not ok:
            problems.append(message)

    check(data.check_name, config.dataset)
    need(0.0 < config.labeled_fraction <= 1.0,
         f"labeled_fraction must be in (0, 1]; got {config.labeled_fraction}.")
    need(config.data.image_size is None or config.data.image_size >= 8,
         f"data.image_size must be at least 8; got {config.data.image_size}.")
    check(folder.check_on_bad_image, config.data.on_bad_image)
    need(0.0 <= config.data.val_fraction < 1.0,
         f"data.val_fraction must be in [0, 1); got "
         f"{config.data.val_fraction}.")
    check(students.parse, config.student)
    for field in ("mean", "std"):
        value = config.student_input[field]
        need(value is None or (len(value) == 3 and (
            field == "mean" or all(v > 0 for v in value))),
             f"student_input.{field} must be three numbers"
             + (", each > 0" if field == "std" else "") + f"; got {value}.")
    need(config.student_bn_momentum is None
         or 0 <= config.student_bn_momentum < 1,
         "student_bn_momentum must be in [0, 1); got "
         f"{config.student_bn_momentum}.")
    need(config.student_weights is None
         or os.path.isfile(config.student_weights),
         f"student_weights {config.student_weights!r} does not exist.")
    method = _method_or_none(config.distill)
    if method is None:
        check(methods.get, config.distill)  # the message of the unknown name
    need(config.embed_dim >= 1,
         f"embed_dim must be positive; got {config.embed_dim}.")
    if method is not None:
        problems.extend(methods.check_weights(method, config.loss))
    check(balance.check_weights, config.weights)
    need(config.balance.ratio > 0,
         f"balance.ratio must be > 0; got {config.balance.ratio}.")
    need(0 <= config.balance.decay < 1,
         f"balance.decay must be in [0, 1); got {config.balance.decay}.")
    o = config.optim
    need(o.lr is None or o.lr > 0, f"optim.lr must be > 0; got {o.lr}.")
    need(o.momentum >= 0, f"optim.momentum must be >= 0; got {o.momentum}.")
    need(o.weight_decay >= 0,
         f"optim.weight_decay must be >= 0; got {o.weight_decay}.")
    need(all(0 < f < 1 for f in o.decay_fractions),
         "optim.decay_fractions must lie in (0, 1); got "
         f"{tuple(o.decay_fractions)}.")
    need(o.decay_factor > 0, "optim.decay_factor must be > 0.")
    need(o.teacher_head_lr > 0, "optim.teacher_head_lr must be > 0.")
    need(config.epochs >= 1, f"epochs must be at least 1; got "
         f"{config.epochs}.")
    min_batch = method.min_batch if method else 1
    need(config.batch_size >= min_batch,
         f"batch_size must be at least {min_batch}"
         + (f" ({method.name} relates the images of a batch)"
            if min_batch >= 2 else "") + f"; got {config.batch_size}.")
    need(config.eval_batch_size >= 1,
         f"eval_batch_size must be positive; got {config.eval_batch_size}.")
    need(config.padding is None or config.padding >= 0,
         f"padding must be >= 0; got {config.padding}.")
    check(augment.check_teacher_view, config.teacher_view)
    check(check_choice, "teacher_logits", config.teacher_logits,
          teacher_file.TEACHER_LOGITS)
    check(feature_cache.check_policy, config.teacher_cache)
    try:
        stored = teacher_store.parse_views(config.teacher_views)
    except UserError as e:
        problems.append(str(e))
        stored = 0
    check(check_choice, "teacher_store_dtype", config.teacher_store_dtype,
          teacher_store.DTYPES)
    need(config.teacher_view != "clean" or not stored,
         "teacher_views stores augmented views; with teacher_view=clean "
         "the teacher's features are cached without it (teacher_cache).")
    check(check_choice, "teacher_precision", config.teacher_precision,
          teacher_file.PRECISIONS)
    check(pipeline.check_cache_policy, config.input.cache)
    need(config.input.cache_limit_gb >= 0, "input.cache_limit_gb must be "
         ">= 0.")
    need(config.input.shuffle_buffer is None
         or config.input.shuffle_buffer >= 1,
         "input.shuffle_buffer must be positive.")
    check(check_precision, config.precision)
    check(check_choice, "jit_compile", str(config.jit_compile).lower(),
          ("auto", "true", "false"))
    check(check_choice, "terms_jit_compile",
          str(config.terms_jit_compile).lower(), ("auto", "true", "false"))
    need(config.checkpoint_every >= 1,
         f"checkpoint_every must be at least 1; got "
         f"{config.checkpoint_every}.")
    need(config.checkpoint_every_steps is None
         or config.checkpoint_every_steps >= 1,
         "checkpoint_every_steps must be at least 1 (or None).")
    check(distribute.check_strategy, config.distribute.strategy)
    need(config.distribute.cpu_replicas >= 1,
         "distribute.cpu_replicas must be at least 1.")
    if method and method.uses_teacher and not config.teacher:
        problems.append(
            f"--distill={config.distill} needs a teacher: pass "
            "--teacher=FILE.keras. Make one offline with `python -m "
            f"ega_tf.pretrain --dataset={config.dataset} "
            "--out=teacher.keras`, or use --distill=none for the "
            "cross-entropy baseline.")
    return problems


def _method_or_none(distill):
    """The method class of ``distill``, or None if it names none (that
    problem is reported on its own)."""
    from ega_tf import methods
    try:
        return methods.get(distill)
    except UserError:
        return None


def validate(config):
    """Raises ConfigError listing every problem of ``config`` at once."""
    problems = _problems(config)
    if len(problems) == 1:
        raise ConfigError(problems[0])
    if problems:
        raise ConfigError(f"{len(problems)} problems: " + " | ".join(
            f"({i}) {p}" for i, p in enumerate(problems, 1)))
