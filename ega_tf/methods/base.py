"""The base class of a distillation method, and what a method sees and
returns. Nothing here imports TensorFlow: ``--help`` lists the methods'
declarations without starting it.

A method is one class that declares everything about itself::

    @register
    class MyMethod(Method):
        name = "my_method"                    # --distill=my_method
        terms = {"mine": "mine_weight"}       # logged term -> its weight field
        defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0,
                    "mine_weight": 2.0}       # published values
        source = "where the defaults come from"

        def compute(self, b):                 # b: a Batch, on one replica
            value, share = self.per_example(my_loss(b.x_t, b.x_s), b.valid)
            return self.weighted({"mine": (value, share)})

and, where it has them, its integer fields and the valid range of each field
(``integer_fields``, ``limits``), whether it reads the example index, the
teacher or labels, its state (queues, banks: ``build_state``, ``update``)
and its memory. docs/methods.md, "Write your own method", walks through a
complete one.

The student's loss is ``gamma * CE + alpha * KD + beta * value``. Each
method returns its terms for logging (global values, the same on every
replica), its value and this replica's share of it, whose gradients summed
over the replicas are the value's: ``per_example`` and ``graph`` (through
``ega_tf.nn.replicas``) give both.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

from ega_tf.core.constants import PUBLISHED_EPOCHS
from ega_tf.core.registry import Registry

METHODS: Registry = Registry("distillation method")


def register(cls):
    """Class decorator: adds a ``Method`` subclass to ``METHODS`` under its
    ``name`` (its declarations are checked first)."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise TypeError(f"@register takes a Method subclass; got {cls!r}.")
    cls.check_declarations()
    METHODS.register(cls.name, cls)
    cls.spec = cls.name  # a user's file: its path.py:Class (user_file)
    return cls


# Fields every method reads: the weights of the student's loss, and the
# temperature of its KD term (used when alpha > 0).
GENERAL_FIELDS = ("gamma", "alpha", "beta", "kd_temperature")
GENERAL_DEFAULTS = {"kd_temperature": 4.0}
# The switch of the logit methods (kd, dkd, dist, mlkd): standardize both
# logits before their softmax (ega_tf.methods.maths.standardize_logits).
STANDARDIZE = "logit_standardization"
# gamma * CE + beta * method, no KD: the published footing of every
# baseline but KD itself.
CE_PLUS_METHOD = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
# ``compare --tune``: each tuned weight is searched over [default * low,
# default * high] on a log scale. Lower by two decades, higher by one: the
# published weights were set for CIFAR-100 and 240 epochs, and where they
# fail on other data they are too large (docs/methods.md), while a far
# smaller weight leaves cross-entropy alone.
TUNE_RANGE = (0.01, 10.0)


@dataclasses.dataclass
class Batch:
    """What a method sees of one step, on one replica (tensors of this
    replica's rows; ``ega_tf.nn.replicas`` reaches the others)."""
    x_t: object        # [b, D] teacher projections (no gradient)
    x_s: object        # [b, D] student projections
    t_logits: object   # [b, K] teacher logits (no gradient): the online
    #                    head's, or a supervised teacher's own classifier's
    #                    (config.teacher_logits)
    s_logits: object   # [b, K]
    labels: object     # [b] labels with -1 replaced by 0
    labeled: object    # [b] 1 for labeled examples (and not padding)
    valid: object      # [b] 1 for real examples, 0 for padding
    raw_labels: object  # [b] labels, -1 kept (-1 also for padding)
    index: object      # [b] training-set indices (uses_index) or None
    training: bool


@dataclasses.dataclass
class Result:
    """What ``Method.compute`` returns: the logged global terms, the
    method's global value (unweighted by beta), this replica's share of it
    (whose gradient, summed over replicas, is the value's), and whatever
    ``update`` needs from the step. ``shares``: {term: its share of the
    value, weight included} when the method has several terms
    (``weighted`` fills it): the training step then measures each term's
    gradient on its own, and a divergence names the term that drove it."""
    terms: Dict[str, object]
    value: object = 0.0
    share: object = 0.0
    state: object = None
    shares: Optional[Dict[str, object]] = None


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a weight field may take: ``low``/``high`` bounds (None:
    unbounded), each inclusive unless ``*_open``."""
    low: Optional[float] = 0.0
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value):
        low_ok = self.low is None or (value > self.low if self.low_open
                                      else value >= self.low)
        high_ok = self.high is None or (value < self.high if self.high_open
                                        else value <= self.high)
        return low_ok and high_ok

    def describe(self):
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return (f"in {'(' if self.low_open else '['}{self.low:g}, "
                f"{self.high:g}{')' if self.high_open else ']'}")


NON_NEGATIVE = Range(0.0)
POSITIVE = Range(0.0, low_open=True)
AT_LEAST_ONE = Range(1.0)
GENERAL_LIMITS = {"kd_temperature": POSITIVE}


class Method:
    """A distillation method: its declarations (class attributes, read
    without TensorFlow), its computation and its state.

    Class attributes a method declares:
        name: its ``--distill`` name.
        terms: {logged term: the weight field that multiplies it in the
            method's value, or None for 1}, in logging order.
        defaults: the published values of gamma, alpha, beta and of the
            method's own fields; ``--config.loss.FIELD`` overrides any.
        source: where the defaults come from.
        integer_fields: fields that count things (queue lengths, epochs).
        boolean_fields: fields that switch something on or off
            (``logit_standardization``).
        limits: {field: Range}; a field not named must be >= 0.
        uses_teacher: False for cross-entropy alone.
        uses_index: reads each example's index in the training set
            (``Batch.index``); the input pipeline then provides it.
        evaluates: False when its terms mean nothing on held-out images.
        min_batch: examples a replica needs (2 for a method that relates
            the examples of a batch).
        tuned: the weight fields ``compare --tune`` searches, each over a
            log range around its default (``TUNE_RANGE``); None: the
            weights of its terms, else beta if it has a term.
        balanced_defaults: fields whose default differs with balanced
            weights (``--weights=balanced``), where the published one
            fails on small data for a reason no weight fixes (CRD's fixed
            normalisation constant); a value the user sets wins.
        standardized_defaults: fields whose default differs when the
            method's ``logit_standardization`` is on (its publisher's
            weights and temperature for standardized logits); a value the
            user sets wins.
        xla_deterministic: False when ``compute`` uses an op that XLA on
            GPU cannot run deterministically (select-and-scatter, a max
            pool's gradient, fails to compile there under op
            determinism): ``terms_jit_compile=auto`` then leaves its terms
            uncompiled under op determinism.

    An instance is made by ``ega_tf.methods.create`` with the resolved
    weights (``self.w``) and the run's context, then its state is built in
    the current strategy's scope.
    """

    name: str = ""
    terms: Mapping[str, Optional[str]] = {}
    defaults: Mapping[str, float] = {}
    source: str = ""
    integer_fields: Tuple[str, ...] = ()
    boolean_fields: Tuple[str, ...] = ()
    limits: Mapping[str, Range] = {}
    uses_teacher: bool = True
    uses_index: bool = False
    evaluates: bool = True
    min_batch: int = 2
    tuned: Optional[Tuple[str, ...]] = None
    balanced_defaults: Mapping[str, float] = {}
    standardized_defaults: Mapping[str, float] = {}
    xla_deterministic: bool = True
    # What --distill names it by (set when it is registered): its name, or
    # for a class in a user's file, "path.py:Class".
    spec: str = ""

    def __init__(self, weights, num_examples=0, embed_dim=256, seed=0,
                 steps_per_epoch=1, labels=None, epochs=PUBLISHED_EPOCHS):
        self.w = dict(weights)
        self.epochs = int(epochs)
        self.num_examples = int(num_examples)
        self.embed_dim = int(embed_dim)
        self.seed = int(seed)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.labels = labels
        self.layer = None  # the Keras layer holding the state

    # ------------------------------------------------------- declarations
    @classmethod
    def fields(cls):
        """Every weight field the method reads."""
        return tuple(dict.fromkeys((*cls.defaults, *GENERAL_FIELDS)))

    @classmethod
    def tuned_fields(cls):
        """The fields ``compare --tune`` searches."""
        if cls.tuned is not None:
            return tuple(cls.tuned)
        weights = tuple(dict.fromkeys(f for f in cls.terms.values() if f))
        if weights:
            return weights
        return ("beta",) if cls.terms and cls.defaults.get("beta") else ()

    @classmethod
    def kind(cls, field):
        """The Python type of ``field``'s values: bool, int or float."""
        if field in cls.boolean_fields:
            return bool
        return int if field in cls.integer_fields else float

    @classmethod
    def limit(cls, field):
        return {**GENERAL_LIMITS, **cls.limits}.get(field, NON_NEGATIVE)

    @classmethod
    def check_declarations(cls):
        """Raises ValueError naming what is wrong with the class's
        declarations (called when it is registered)."""
        where = f"Method class {cls.__name__}"
        if not cls.name or not isinstance(cls.name, str):
            raise ValueError(f"{where} needs a name (the --distill name).")
        if not cls.name.replace("_", "").isalnum():
            raise ValueError(f"{where}: name {cls.name!r} must be letters, "
                             "digits and underscores.")
        missing = [k for k in ("gamma", "alpha", "beta")
                   if k not in cls.defaults]
        if missing:
            raise ValueError(f"{where} must give defaults for "
                             f"{', '.join(missing)}.")
        for field in (*cls.integer_fields, *cls.boolean_fields, *cls.limits,
                      *(f for f in cls.terms.values() if f),
                      *(cls.tuned or ()), *cls.balanced_defaults,
                      *cls.standardized_defaults):
            if field not in cls.fields():
                raise ValueError(f"{where} declares field {field!r}, which "
                                 "is not among its defaults.")
        for field in cls.tuned_fields():
            default = {**GENERAL_DEFAULTS, **cls.defaults}.get(field)
            if (field in cls.integer_fields or field in cls.boolean_fields
                    or default is None
                    or not default > 0):
                raise ValueError(
                    f"{where}: tuned field {field!r} needs a positive, "
                    "non-integer default (--tune searches a log range "
                    "around it).")

    # --------------------------------------------------------------- state
    def build(self):
        """Creates the method's state (in the current strategy's scope)."""
        from ega_tf.methods.state import MethodState
        self.layer = MethodState(name=f"method_{self.name}")
        self.build_state()
        self.layer.built = True
        return self

    def build_state(self):
        """Override to create variables (``add_variable``) and layers
        (``add_layer``)."""

    def add_variable(self, name, shape, initializer="zeros",
                     dtype="float32", trainable=False):
        """A variable of the method's state, checkpointed with the model
        under ``method/<name>``, the same on every replica (updated from
        the global batch)."""
        variable = self.layer.add_weight(
            shape=shape, initializer=initializer, dtype=dtype,
            trainable=trainable, name=name,
            aggregation="only_first_replica")
        setattr(self.layer, name, variable)
        return variable

    def add_layer(self, name, layer, input_shape):
        """A Keras layer of the method (trained with the student when it
        has trainable weights), built for ``input_shape``."""
        layer.build(input_shape)
        setattr(self.layer, name, layer)
        return layer

    @property
    def variables(self):
        return list(self.layer.variables) if self.layer else []

    @property
    def trainable_variables(self):
        return list(self.layer.trainable_variables) if self.layer else []

    # --------------------------------------------------------- computation
    def compute(self, b: Batch) -> Result:
        """The method's terms on one step's batch."""
        return Result({})

    def update(self, b: Batch, state):
        """After a training step: refresh queues and banks from the global
        batch (``state`` is ``Result.state``)."""

    def memory_mb(self):
        """The size of the method's state, for the log."""
        return sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
                   for v in self.variables) / 2**20

    def describe_state(self):
        """A line for the log about the state, or None."""
        return None

    # ------------------------------------------------ helpers for compute
    @staticmethod
    def per_example(values, weights):
        """(global weighted mean, this replica's share) of per-example
        ``values``."""
        from ega_tf.nn import replicas
        return replicas.mean(values, weights)

    @staticmethod
    def graph(value):
        """(value, this replica's share) of a loss every replica computes
        alike from the gathered batch."""
        from ega_tf.nn import replicas
        return value, replicas.graph_share(value)

    @staticmethod
    def gathered(b, *tensors):
        """The global batch's valid rows of each tensor (in training every
        row is valid)."""
        import tensorflow as tf

        from ega_tf.nn import replicas
        out = [replicas.gather(t) for t in tensors]
        if b.training:
            return out
        valid = replicas.gather(b.valid) > 0
        return [tf.boolean_mask(t, valid) for t in out]

    def weighted(self, parts, state=None):
        """A Result from {term: (global value, share)}: the terms logged,
        the value and share summed with the weights ``terms`` names."""
        value = share = 0.0
        shares = {}
        for term, (v, s) in parts.items():
            field = self.terms.get(term)
            weight = float(self.w[field]) if field else 1.0
            value, share = value + weight * v, share + weight * s
            shares[term] = weight * s
        return Result({t: v for t, (v, _) in parts.items()}, value, share,
                      state, shares)
