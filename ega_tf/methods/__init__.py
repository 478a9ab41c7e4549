"""Distillation methods, by name (``--distill=NAME``), on one footing.

A method is one file here holding its loss functions and its class (an
``ega_tf.methods.base.Method`` subclass that declares its name, logged
terms, published weights and their source, its integer fields and valid
ranges, what it reads and its state); ``@register`` puts the class in
``METHODS`` when the file is imported below. A user's own method is a class
in a Python file, named on the command line as
``--distill=path/to/my_method.py:MyMethod`` (``user_file``; docs/methods.md,
"Write your own method"). The student's loss is

    L = gamma * CE + alpha * KD_T(z_t, z_s) + beta * L_method

with each method's published weights as its defaults; ``--config.loss.FIELD``
overrides any. Nothing here imports TensorFlow: ``--help`` prints the table.
"""

from __future__ import annotations

# Each file registers its methods when imported; the table lists them in
# this order.
from ega_tf.methods import (cross_entropy, ega, rkd, pkt, sp, nce,  # noqa
                            kd, hint, dkd, dist, mlkd, seed, crd)
from ega_tf.methods.base import (GENERAL_DEFAULTS, GENERAL_FIELDS, METHODS,
                                 STANDARDIZE, Batch, Method, Range, Result,
                                 register)
from ega_tf.methods import user_file
from ega_tf.methods.user_file import is_file_spec, load_from_argv

__all__ = ["Batch", "GENERAL_FIELDS", "METHODS", "Method", "Range",
           "Result", "check_weights", "create", "describe", "get",
           "is_file_spec", "load_from_argv", "loss_fields", "register",
           "resolve_weights"]


def get(distill):
    """The Method class ``distill`` names: a registered name, or a
    ``path.py:Class`` spec (the file is loaded and the class registered);
    a Method class is returned as it is. An unknown name is a UserError
    listing the valid ones. Config resolution calls this once per run
    (``config.method``); code after it asks that class."""
    if isinstance(distill, type) and issubclass(distill, Method):
        return distill
    if is_file_spec(distill):
        return user_file.load(distill)
    return METHODS.get(distill)


def loss_fields():
    """{field: int or float} of every field a registered method reads; the
    config holds them all (None: the method's default, or not read)."""
    fields = {f: float for f in GENERAL_FIELDS}
    for name in METHODS.names():
        cls = METHODS.get(name)
        for field in cls.fields():
            fields[field] = cls.kind(field)
    return dict(sorted(fields.items()))


def resolve_weights(distill, overrides, balanced=False):
    """The method's defaults (and kd_temperature; with ``balanced``, its
    ``balanced_defaults`` over them; with its ``logit_standardization``
    on, its ``standardized_defaults``) with ``overrides`` (config.loss;
    None keeps a default) applied to the fields it reads. ``distill``: the
    method's class, or what names it."""
    cls = get(distill)
    weights = {**GENERAL_DEFAULTS, **cls.defaults,
               **(cls.balanced_defaults if balanced else {})}
    standardize = overrides.get(STANDARDIZE)
    if standardize is None:
        standardize = weights.get(STANDARDIZE, False)
    if standardize and STANDARDIZE in weights:
        weights.update(cls.standardized_defaults)
    for k, v in overrides.items():
        if v is not None and k in weights:
            weights[k] = v
    return weights


def check_weights(distill, loss):
    """The problems of ``loss`` (config.loss) for the method ``distill``
    (its class, or what names it), as messages: fields it does not read,
    values out of their range."""
    cls = get(distill)
    distill = cls.spec
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
        elif field in cls.boolean_fields and not isinstance(value, bool):
            problems.append(f"loss.{field} is a switch: true or false; got "
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
        weights = ", ".join(
            f"{k}={str(v).lower() if isinstance(v, bool) else format(v, 'g')}"
            for k, v in cls.defaults.items())
        lines.append(f"  {name}: {weights} ({cls.source})")
    return "\n".join(lines)


def create(distill, weights=None, num_examples=0, embed_dim=256, seed=0,
           steps_per_epoch=1, labels=None, epochs=None):
    """The method ``distill`` (its class, a name or a ``path.py:Class``
    spec) with its state built (in the current strategy's scope).

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
    method = cls(resolve_weights(cls, weights or {}),
                 num_examples=num_examples, embed_dim=embed_dim, seed=seed,
                 steps_per_epoch=steps_per_epoch, labels=labels,
                 **({} if epochs is None else {"epochs": epochs}))
    return method.build()
