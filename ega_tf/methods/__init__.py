"""Distillation methods, by name (``--distill=NAME``), on one footing.

Each method is one class (``ega_tf.methods.base.Method``) that declares its
name, logged terms, published weights and their source, its integer fields
and valid ranges, what it reads and its state; ``@register`` puts it in
``METHODS``. The built-in ones are in ``builtin.py``; a user's own method is
a class in a Python file, named on the command line as
``--distill=path/to/my_method.py:MyMethod`` (docs/methods.md, "Write your
own method"). The student's loss is

    L = gamma * CE + alpha * KD_T(z_t, z_s) + beta * L_method

with each method's published weights as its defaults; ``--config.loss.FIELD``
overrides any. Nothing here imports TensorFlow: ``--help`` prints the table.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback

from ega_tf.errors import UserError
from ega_tf.methods.base import (GENERAL_DEFAULTS, GENERAL_FIELDS, Batch,
                                 Method, Range, Result)
from ega_tf.registry import Registry

__all__ = ["Batch", "GENERAL_FIELDS", "METHODS", "Method", "Range",
           "Result", "check_weights", "create", "describe", "get",
           "loss_fields", "register", "resolve_weights"]

METHODS: Registry = Registry("distillation method")
# A user's file, by its --distill spec ("path.py:Class"), once loaded.
_FROM_FILES = {}


def register(cls):
    """Class decorator: adds a ``Method`` subclass to ``METHODS`` under its
    ``name`` (its declarations are checked first)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"@register takes a Method subclass; got {cls!r}.")
    cls.check_declarations()
    METHODS.register(cls.name, cls)
    return cls


def is_file_spec(distill):
    """Whether ``distill`` names a class in a Python file
    (``path/to/file.py:ClassName``)."""
    path, _, cls = str(distill).rpartition(":")
    return path.endswith(".py") and bool(cls)


def _load_file(spec):
    """The Method subclass ``spec`` (``path.py:Class``) names, its file
    executed once per process."""
    if spec in _FROM_FILES:
        return _FROM_FILES[spec]
    path, _, name = spec.rpartition(":")
    if not os.path.isfile(path):
        raise UserError(f"--distill={spec}: {path!r} does not exist. Name "
                        "a Python file and a class in it: "
                        "--distill=path/to/my_method.py:MyMethod.")
    # One module per file, however the path is written.
    module_name = "ega_tf_user_method_" + hashlib.sha1(
        os.path.realpath(path).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        module_spec = importlib.util.spec_from_file_location(module_name,
                                                             path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except UserError:
            raise
        except Exception as e:  # the user's file: say where and why
            del sys.modules[module_name]
            lines = [f.lineno for f in traceback.extract_tb(e.__traceback__)
                     if os.path.realpath(f.filename) == os.path.realpath(
                         path)]
            where = f"{path}:{lines[-1]}" if lines else path
            raise UserError(f"--distill={spec}: running the file failed at "
                            f"{where}: {type(e).__name__}: {e}") from e
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        found = sorted(k for k, v in vars(module).items()
                       if isinstance(v, type) and issubclass(v, Method)
                       and v is not Method and v.__module__ == module_name)
        raise UserError(
            f"--distill={spec}: {path!r} has no Method subclass named "
            f"{name!r}" + (f" (it defines {', '.join(found)})" if found
                           else "; subclass ega_tf.methods.Method") + ".")
    if cls.name not in METHODS:
        try:
            register(cls)
        except ValueError as e:
            raise UserError(f"--distill={spec}: {e}") from None
    elif METHODS.get(cls.name) is not cls:
        raise UserError(f"--distill={spec}: its name {cls.name!r} is taken "
                        "by another method; give the class another name.")
    _FROM_FILES[spec] = cls
    return cls


def get(distill):
    """The Method class of ``distill``: a registered name, or a
    ``path.py:Class`` spec (the file is loaded and the class registered).
    An unknown name is a UserError listing the valid ones."""
    if is_file_spec(distill):
        return _load_file(distill)
    return METHODS.get(distill)


def name_of(distill):
    """The method's name (for workdir names): its class's ``name``."""
    return get(distill).name


def load_from_argv(argv, flags=("distill", "methods")):
    """Loads the user methods ``argv`` names in ``--distill`` (or a
    comma-separated ``--methods``) before the config is built, so that
    their fields exist for ``--config.loss.FIELD`` overrides."""
    for i, arg in enumerate(argv):
        for flag in flags:
            value = None
            if arg.startswith(f"--{flag}="):
                value = arg.split("=", 1)[1]
            elif arg == f"--{flag}" and i + 1 < len(argv):
                value = argv[i + 1]
            for item in (value or "").split(","):
                if is_file_spec(item):
                    get(item)


def loss_fields():
    """{field: int or float} of every field a registered method reads; the
    config holds them all (None: the method's default, or not read)."""
    fields = {f: float for f in GENERAL_FIELDS}
    for name in METHODS.names():
        cls = METHODS.get(name)
        for field in cls.fields():
            fields[field] = int if field in cls.integer_fields else float
    return dict(sorted(fields.items()))


def resolve_weights(distill, overrides, balanced=False):
    """The method's defaults (and kd_temperature; with ``balanced``, its
    ``balanced_defaults`` over them) with ``overrides`` (config.loss; None
    keeps a default) applied to the fields it reads."""
    cls = get(distill)
    weights = {**GENERAL_DEFAULTS, **cls.defaults,
               **(cls.balanced_defaults if balanced else {})}
    for k, v in overrides.items():
        if v is not None and k in weights:
            weights[k] = v
    return weights


def check_weights(distill, loss):
    """The problems of ``loss`` (config.loss) for method ``distill``, as
    messages: fields it does not read, values out of their range."""
    try:
        cls = get(distill)
    except UserError:
        return []  # the unknown name is reported on its own
    used = cls.fields()
    problems = []
    for field, value in loss.items():
        if value is None:
            continue
        if field not in used:
            problems.append(
                f"loss.{field} is not read by --distill={distill} (it reads "
                f"{', '.join(sorted(used))}); drop it or pick the method "
                "that uses it.")
            continue
        limit = cls.limit(field)
        if value not in limit:
            problems.append(f"loss.{field} must be {limit.describe()}; got "
                            f"{value}.")
        elif field in cls.integer_fields and value != int(value):
            problems.append(f"loss.{field} counts things: it must be a "
                            f"whole number; got {value}.")
    if not cls.uses_teacher and (loss.get("alpha") or 0) > 0:
        problems.append(f"loss.alpha > 0 distils the teacher's logits, "
                        f"which --distill={distill} has no teacher for; use "
                        "--distill=kd.")
    return problems


def describe():
    """The table of methods and their default weights, one per line."""
    lines = []
    for name in METHODS.names():
        cls = METHODS.get(name)
        weights = ", ".join(f"{k}={v:g}" for k, v in cls.defaults.items())
        lines.append(f"  {name}: {weights} ({cls.source})")
    return "\n".join(lines)


def create(distill, weights=None, num_examples=0, embed_dim=256, seed=0,
           steps_per_epoch=1, labels=None, epochs=None):
    """The method ``distill`` (a name or a ``path.py:Class`` spec) with its
    state built (in the current strategy's scope).

    Args:
        weights: overrides of the method's published defaults (None values
            keep them).
        num_examples: the training set's size (queues are no larger; CRD's
            banks have one row per example).
        embed_dim: D of x_t and x_s.
        seed: initialises queues, banks and CRD's embeddings, and draws
            CRD's negatives.
        steps_per_epoch: DKD's warm-up is counted in epochs.
        labels: the training labels (-1: unlabeled); CRD samples its
            negatives from them.
        epochs: the run's length; schedules published in epochs of the
            240-epoch recipe (DKD's warm-up) scale to it. None: 240.
    """
    cls = get(distill)
    method = cls(resolve_weights(distill, weights or {}),
                 num_examples=num_examples, embed_dim=embed_dim, seed=seed,
                 steps_per_epoch=steps_per_epoch, labels=labels,
                 **({} if epochs is None else {"epochs": epochs}))
    return method.build()


# The built-in methods register themselves when their module runs.
importlib.import_module("ega_tf.methods.builtin")
