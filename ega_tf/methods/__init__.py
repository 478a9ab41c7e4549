"""Distillation methods, by name (``--distill=NAME``), on one footing.

Every method reads what EGA's published code wires its baselines to: the
256-d projections ``x_t`` (the online teacher head's, treated as given) and
``x_s`` (the student's), and, where it needs them, the teacher head's and
the student's logits and the labels (-1: unlabeled). The student's loss is

    L = gamma * CE + alpha * KD_T(z_t, z_s) + beta * L_method

with each method's published weights as the defaults of ``METHODS`` (one
table; ``--config.loss.FIELD`` overrides any). docs/methods.md gives each
formula, its source and how examples labeled -1 are handled.

Relational losses (EGA, RKD, PKT, SP, NCE) are computed over the global
batch (every replica's rows, gathered); per-example losses (hint, KD, DKD,
the KL of CCL, SEED, CompRess, CRD) are averaged over the global batch. Queues
(SEED, CompRess) and memory banks (CRD) are non-trainable variables, updated
with the global batch after each step, checkpointed with the model.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Tuple

from ega_tf.registry import Registry

# This module is the table (no TensorFlow: ``--help`` lists it); the
# layers that compute the methods are in ``ega_tf.methods.layers``.


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    name: str
    # The terms it logs, besides ce, teacher_ce, kd and loss.
    terms: Tuple[str, ...]
    # Published weights: gamma, alpha, beta and the method's own fields.
    defaults: Dict[str, float]
    # Where the defaults come from.
    source: str
    uses_teacher: bool = True


METHODS: Registry = Registry("distillation method")
_EGA = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0}
for _spec in [
    MethodSpec("none", (), {"gamma": 1.0, "alpha": 0.0, "beta": 0.0},
               "cross-entropy alone", uses_teacher=False),
    MethodSpec("ega", ("node", "edge"),
               {**_EGA, "node_weight": 0.8, "edge_weight": 0.24},
               "EGA's train_student.py defaults"),
    MethodSpec("ega_node", ("node",),
               {**_EGA, "node_weight": 0.8, "edge_weight": 0.0},
               "EGA, node term only"),
    MethodSpec("ega_edge", ("edge",),
               {**_EGA, "node_weight": 0.0, "edge_weight": 0.24},
               "EGA, edge term only"),
    MethodSpec("kd", (), {"gamma": 0.1, "alpha": 0.9, "beta": 0.0,
                          "kd_temperature": 4.0},
               "RepDistiller's KD recipe (-r 0.1 -a 0.9 -b 0, T=4)"),
    MethodSpec("hint", ("hint",), {**_EGA, "beta": 100.0},
               "RepDistiller's FitNet weight (-b 100)"),
    MethodSpec("rkd", ("rkd_distance", "rkd_angle"),
               {**_EGA, "rkd_distance": 25.0, "rkd_angle": 50.0},
               "RepDistiller's RKD (25 distance + 50 angle, -b 1)"),
    MethodSpec("pkt", ("pkt",), {**_EGA, "beta": 30000.0},
               "RepDistiller's PKT weight (-b 30000)"),
    MethodSpec("sp", ("sp",), {**_EGA, "beta": 3000.0},
               "RepDistiller's SP weight (-b 3000)"),
    MethodSpec("nce", ("nce",), {**_EGA, "nce_temperature": 0.1},
               "EGA's NCE (T 0.1, -b 1)"),
    MethodSpec("ccl", ("nce", "kl"), {**_EGA, "nce_temperature": 0.1,
                                      "ccl_kl_temperature": 1.0},
               "EGA's CCL (NCE + symmetric KL at T 1, -b 1)"),
    MethodSpec("crd", ("crd",), {**_EGA, "beta": 0.8, "crd_dim": 128,
                                 "crd_negatives": 16384,
                                 "crd_temperature": 0.07,
                                 "crd_momentum": 0.5},
               "RepDistiller's CRD (-b 0.8; 128-d, 16384 negatives, T 0.07,"
               " momentum 0.5)"),
    MethodSpec("dkd", ("tckd", "nckd"), {**_EGA, "dkd_alpha": 1.0,
                                         "dkd_beta": 8.0,
                                         "dkd_temperature": 4.0,
                                         "dkd_warmup": 20},
               "mdistiller's DKD for resnet32x4 -> resnet8x4 (alpha 1, beta "
               "8, T 4, 20-epoch warm-up)"),
    MethodSpec("seed", ("seed",), {**_EGA, "seed_queue": 65536,
                                   "seed_student_t": 0.2,
                                   "seed_teacher_t": 1e-4},
               "SEED's defaults (queue 65536, T_s 0.2, T_t 1e-4)"),
    MethodSpec("compress", ("compress",), {**_EGA, "compress_queue": 128000,
                                           "compress_t": 0.04},
               "CompRess-1q (queue 128000, T 0.04)"),
]:
    METHODS.register(_spec.name, _spec)

# Every field any method reads; the config holds them all (None: the
# method's default, or not used by it).
LOSS_FIELDS = sorted({k for s in METHODS.names()
                      for k in METHODS.get(s).defaults} | {"kd_temperature"})


def resolve_weights(name, overrides):
    """The method's defaults with ``overrides`` (config.loss, None = keep)
    applied; also kd_temperature (used whenever alpha > 0)."""
    spec = METHODS.get(name)
    weights = {"kd_temperature": 4.0, **spec.defaults}
    for k, v in overrides.items():
        if v is not None:
            weights[k] = v
    return weights


def describe():
    """The table of methods and their default weights, one per line."""
    lines = []
    for name in METHODS.names():
        spec = METHODS.get(name)
        weights = ", ".join(f"{k}={v:g}" for k, v in spec.defaults.items())
        lines.append(f"  {name}: {weights} ({spec.source})")
    return "\n".join(lines)


GENERAL_FIELDS = ("gamma", "alpha", "beta", "kd_temperature")


def check_weights(name, loss):
    """The problems of ``loss`` (config.loss) for method ``name``, as
    messages: fields the method does not read, and values out of range."""
    if name not in METHODS:
        return []
    spec = METHODS.get(name)
    used = set(spec.defaults) | set(GENERAL_FIELDS)
    problems = []
    for field, value in loss.items():
        if value is None:
            continue
        if field not in used:
            problems.append(
                f"loss.{field} is not read by --distill={name} (it reads "
                f"{', '.join(sorted(used))}); drop it or pick the method "
                "that uses it.")
        elif field.endswith(("temperature", "_t")) and not value > 0:
            problems.append(f"loss.{field} must be > 0; got {value}.")
        elif field == "crd_momentum" and not 0 <= value < 1:
            problems.append(f"loss.crd_momentum must be in [0, 1); got "
                            f"{value}.")
        elif field in ("crd_dim", "crd_negatives", "seed_queue",
                       "compress_queue") and not value >= 1:
            problems.append(f"loss.{field} must be at least 1; got {value}.")
        elif not value >= 0:
            problems.append(f"loss.{field} must be >= 0; got {value}.")
    if not spec.uses_teacher and (loss.get("alpha") or 0) > 0:
        problems.append(f"loss.alpha > 0 distils the teacher's logits, "
                        f"which --distill={name} has no teacher for; use "
                        "--distill=kd.")
    return problems


def create(name, weights=None, num_examples=0, embed_dim=256, seed=0,
           steps_per_epoch=1, labels=None):
    """The method layer ``name``, built (its state is created in the
    current strategy scope).

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
    """
    from ega_tf.methods import layers
    spec = METHODS.get(name)
    weights = resolve_weights(name, weights or {})
    kwargs = {}
    cls = layers.CLASSES[name]
    if cls in (layers.Queue, layers.CRD) and num_examples < 2:
        raise ValueError(f"{name} needs num_examples (the training set's "
                         f"size) of at least 2; got {num_examples}.")
    if name == "crd":
        kwargs["labels"] = labels
    layer = cls(spec, weights, num_examples, embed_dim, seed,
                steps_per_epoch, **kwargs)
    layer.build(None)
    return layer
