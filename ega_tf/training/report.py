"""What a run reports: its ``results.json`` (``results_of``), whether its
student has collapsed (``collapse``), the epoch chosen on the validation
split (``best_val_epoch``), and a finished run's results read back
(``finished``)."""

from __future__ import annotations

from absl import logging

from ega_tf.core.constants import COLLAPSED_SHARE
from ega_tf.training.divergence import DivergedError


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


def collapse_warning(epoch, share, label=None, balanced=False):
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


def finished(results, workdir):
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


def results_of(config, model, history, dataset):
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
