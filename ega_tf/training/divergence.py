"""A run whose loss stops being finite: which term, what drove it, and the
message that says what to try.

The loop (``training.loop``) checks every step's logged terms with
``first_non_finite`` and stops the run with a ``DivergedError``;
``cause_of`` reads the step's gradient measurements (``training.balance``)
to name the distillation term whose gradient outgrew the cross-entropy's.
"""

from __future__ import annotations

import math

from ega_tf.core.constants import DIAGNOSTICS
from ega_tf.core.errors import RunStopped

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
            others = ", ".join(f"{k} {_ratio(v)}" for k, v in
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


def _ratio(value):
    """A gradient ratio for the message: two digits, or "<0.01x" for one
    that vanished (as the logits blow up, a term on a saturated softmax,
    DKD's TCKD, gets no gradient at all: 1e-14x of the cross-entropy's on
    digits), whose digits would mean nothing."""
    return "<0.01x" if value < 0.01 else f"{value:.2g}x"


def cause_of(config, model):
    """The distillation term that drove a divergence, or None: the one
    whose fast-averaged gradient on the student's outputs was at least
    ``balance.DOMINANT`` times the cross-entropy's (a method's own terms
    before its total). None with balanced weights, which hold every term
    at the set ratio."""
    from ega_tf.training import balance
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


def first_non_finite(logs, ignore=()):
    """The first term of ``logs`` that is not finite: the cross-entropies,
    then the method's terms, the total last; None if all are. The
    diagnostics (zero_features, xs_norm) and the gradient measurements
    (``ignore``) are not terms: they follow."""
    logs = {k: v for k, v in logs.items()
            if k not in DIAGNOSTICS and k not in ignore}
    order = sorted(logs, key=lambda k: (k == "loss", k not in FIRST_TERMS))
    return next((k for k in order if not math.isfinite(logs[k])), None)
