"""The tables of a comparison grid: one row per cell (``collect``), the
per-method means with paired intervals against the references
(``summarise``), and the files a grid writes from them: ``results.csv``,
``summary.md`` and TensorBoard's HParams runs (``write_tables``,
``write_hparams``). Each is written atomically, so a rerun of the grid
gives the same files."""

from __future__ import annotations

import csv
import io
import math
import os
from typing import Dict, List

import numpy as np
from absl import logging

from ega_tf.comparison.grid import BALANCED, cell_state, duration
from ega_tf.core.constants import COLLAPSED_SHARE
from ega_tf.core.io_utils import atomic_output
from ega_tf.training import probe
from ega_tf.training import workdir as wd

# TensorBoard's HParams dashboard: one run per cell (tensorboard --logdir).
HPARAMS = "hparams"
RESULTS_CSV = "results.csv"
SUMMARY = "summary.md"
# test_top1_best is the best epoch's test top-1 (chosen on the test set,
# as papers report it): in results.csv for comparison with them, not in
# summary.md's headline.
COLUMNS = ("method", "student", "labeled_fraction", "seed", "status",
           "collapsed", "epochs", "test_top1_last", "test_top1_at_best_val",
           "val_best_epoch", "val_top1_best", "test_top1_best",
           "train_top1_last", "overfit_gap", "teacher_head_top1_last",
           "test_silhouette", "wall_time_s", "workdir")
# The methods every other is compared with in summary.md: cross-entropy
# alone and the paper's.
REFERENCES = ("none", "ega")


def collect(cells, workdir) -> List[Dict]:
    """One row per cell that has results (finished or diverged)."""
    rows = []
    for cell in cells:
        path = os.path.join(workdir, cell.name)
        state = cell_state(path)
        if state not in ("finished", "diverged"):
            continue
        results = wd.read_json(os.path.join(path, wd.RESULTS))
        history = wd.read_history(os.path.join(path, wd.HISTORY))
        last = history[-1] if history else {}
        train_top1 = 100 * last["top1"] if "top1" in last else None
        test_last = results.get("test_top1_last")
        rows.append({
            "method": cell.label, "student": cell.student_label,
            "labeled_fraction": cell.labeled_fraction, "seed": cell.seed,
            "status": state, "epochs": len(history),
            "collapsed": bool(results.get("collapsed", False)),
            "test_top1_best": results.get("test_top1_best"),
            "test_top1_last": test_last,
            "test_top1_at_best_val": results.get("test_top1_at_best_val"),
            "val_top1_best": results.get("val_top1_best"),
            "val_best_epoch": results.get("val_best_epoch"),
            "train_top1_last": train_top1,
            "overfit_gap": (train_top1 - test_last
                            if train_top1 is not None and test_last is not
                            None else None),
            "teacher_head_top1_last": results.get("teacher_head_top1_last"),
            "test_silhouette": results.get("test_silhouette"),
            "teacher_silhouette": results.get("teacher_silhouette"),
            "wall_time_s": results.get("wall_time_s"),
            "distill": cell.method.spec, "workdir": cell.name,
            "_history": history})
    return rows


def write_hparams(rows, configs_by_name, workdir):
    """One TensorBoard run per finished cell under ``workdir/hparams/``:
    its method, student, labeled fraction, seed and method weights as
    hyperparameters, its test top-1 (last and best), training top-1 and
    silhouette as metrics, for the HParams dashboard. Rewritten whole each
    time (atomically): a rerun of the grid gives the same files."""
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp
    metrics = ("test_top1_last", "test_top1_at_best_val", "val_top1_best",
               "test_top1_best", "train_top1_last", "test_silhouette")
    with atomic_output(os.path.join(workdir, HPARAMS)) as tmp:
        for row in rows:
            if row["status"] != "finished":
                continue
            config = configs_by_name[row["workdir"]]
            params = {"method": row["method"], "student": row["student"],
                      "weights": config.weights,
                      "labeled_fraction": float(row["labeled_fraction"]),
                      "seed": int(row["seed"])}
            params.update({f"loss.{k}": float(v) for k, v in
                           sorted(config.loss.items()) if v is not None})
            with tf.summary.create_file_writer(
                    os.path.join(tmp, row["workdir"])).as_default():
                hp.hparams(params, trial_id=row["workdir"])
                for name in metrics:
                    if row.get(name) is not None:
                        tf.summary.scalar(name, row[name], step=row["epochs"])
    logging.info("Wrote %s/ for TensorBoard's HParams dashboard.", HPARAMS)


def write_results_csv(rows, path):
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_value(row[k]) for k in COLUMNS})
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            f.write(out.getvalue())


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.4f}"
    return v


def _mean_std(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None, None
    std = float(np.std(values, ddof=1)) if len(values) > 1 else None
    return float(np.mean(values)), std


def _interval(values):
    """(mean, half-width of its 95 % Student-t interval) of the finite
    ``values``; the half-width is None below two values."""
    mean, std = _mean_std(values)
    if std is None:
        return mean, None
    from scipy import stats
    n = sum(v is not None and math.isfinite(v) for v in values)
    return mean, float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))


def _range(mean, half, signed=False):
    """"[lo, hi]" of an interval, "–" without one; a difference's interval
    that excludes 0 is marked *."""
    if mean is None or half is None:
        return "–"
    f = "+.2f" if signed else ".2f"
    text = f"[{mean - half:{f}}, {mean + half:{f}}]"
    return text + ("*" if signed and abs(mean) > half else "")


def _pm(mean, std, digits=2):
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std is not None
                                   else "")


def summarise(rows, method_order):
    """Per setting and method: the aggregated numbers (dicts); the list
    also carries the teacher's silhouette of each setting."""
    groups = {}
    for row in rows:
        key = (row["student"], row["labeled_fraction"], row["method"])
        groups.setdefault(key, []).append(row)
    out = []
    for key in sorted(groups, key=lambda k: (k[0], k[1],
                                             method_order.index(k[2]))):
        g = groups[key]
        fine = [r for r in g if r["status"] == "finished"]
        at_val = _mean_std([r["test_top1_at_best_val"] for r in fine])
        last = _mean_std([r["test_top1_last"] for r in fine])
        gap = _mean_std([r["overfit_gap"] for r in fine])
        out.append({"student": key[0], "labeled_fraction": key[1],
                    "method": key[2], "runs": len(fine),
                    "last_by_seed": {r["seed"]: r["test_top1_last"]
                                     for r in fine},
                    "last_ci": _interval([r["test_top1_last"]
                                          for r in fine])[1],
                    "diverged": len(g) - len(fine),
                    "collapsed": sum(bool(r.get("collapsed")) for r in fine),
                    "at_best_val": at_val,
                    "last": last, "gap": gap,
                    "wall_time_s": _mean_std([r["wall_time_s"]
                                              for r in fine])[0],
                    "silhouette": _mean_std([r["test_silhouette"]
                                             for r in fine])})
    for s in out:
        for ref in REFERENCES:
            other = next((o for o in out if (o["student"],
                          o["labeled_fraction"], o["method"]) ==
                          (s["student"], s["labeled_fraction"], ref)), None)
            # Paired by seed: the same seed gives both runs the same data
            # order, views and labeled subset.
            mine, theirs = s["last_by_seed"], (other or {}).get(
                "last_by_seed", {})
            diffs = [mine[k] - theirs[k] for k in sorted(mine)
                     if k in theirs and mine[k] is not None
                     and theirs[k] is not None]
            s[f"vs_{ref}"], s[f"vs_{ref}_ci"] = _interval(diffs)
            s[f"vs_{ref}_pairs"] = len(diffs)
    out = _Summary(out)
    # The frozen teacher's features are the same in every run of a setting.
    out.teacher_silhouettes = {}
    for row in rows:
        if row.get("teacher_silhouette") is not None:
            out.teacher_silhouettes.setdefault(
                (row["student"], row["labeled_fraction"]),
                row["teacher_silhouette"])
    return out


class _Summary(list):
    """The summary rows, with the teacher's silhouettes alongside."""


def summary_markdown(summary, header):
    """summary.md: the grid's description, then one table per setting."""
    lines = [header.rstrip(), ""]
    settings = dict.fromkeys((s["student"], s["labeled_fraction"])
                             for s in summary)
    for student, fraction in settings:
        lines += [f"## {student}, labeled fraction {fraction:g}", "",
                  "| method | runs | test top-1 last | 95 % CI (last) | "
                  "test top-1 at best val | Δ last vs none | Δ last vs ega "
                  "| train − test (last) | embedding silhouette | wall time "
                  "|",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s in summary:
            if (s["student"], s["labeled_fraction"]) != (student, fraction):
                continue
            notes = [f"{s[k]} {k}" for k in ("diverged", "collapsed")
                     if s[k]]
            runs = str(s["runs"]) + (f" ({', '.join(notes)})" if notes
                                     else "")
            lines.append(
                f"| {s['method']} | {runs} | {_pm(*s['last'])} | "
                f"{_range(s['last'][0], s['last_ci'])} | "
                f"{_pm(*s['at_best_val'])} | "
                f"{_difference(s, 'none')} | {_difference(s, 'ega')} | "
                f"{_pm(*s['gap'])} | "
                + _pm(*s["silhouette"], digits=3)
                + f" | {duration(s['wall_time_s']) if s['wall_time_s'] else '–'} |")
        teacher = (silhouettes_of(summary) or {}).get((student, fraction))
        if teacher is not None:
            lines += ["", f"The frozen teacher's features: silhouette "
                      f"{teacher:.3f}."]
        lines.append("")
    lines += [
        "Test top-1 in %, mean ± standard deviation over seeds (last: the "
        "final epoch; at best val: the epoch with the best top-1 on the "
        "validation images held out of the training split, – without "
        "them), and the 95 % Student-t interval of the mean last top-1. "
        "No number here is chosen on the test set (results.csv's "
        "test_top1_best, the best epoch's test top-1 as papers report it, "
        "is). Δ: the mean over seeds of the "
        "difference in last top-1 to the reference run of the same seed "
        "(paired: the same seed gives both the same data order, views and "
        "labeled subset), with its 95 % t interval; * where that interval "
        "excludes 0, the methods then differ at that level. train − test: the final epoch's training top-1 (the running "
        "accuracy over the epoch's augmented labeled images, as the training "
        "loop logs it) minus its test top-1, the paper's measure of "
        "overfitting. Collapsed: finished runs whose student ended with at "
        f"least {100 * COLLAPSED_SHARE:.0f} % of its pooled features exactly "
        "zero on the test set "
        "(dead ReLUs; counted in the means, which they pull down: their "
        "accuracy is the collapse's, not the method's). Diverged: runs "
        "stopped at a non-finite loss, left out of the means. "
        + ("(balanced): the method with balanced weights, each term's "
           "weight following its gradient on the student's embedding to "
           "hold it at the cross-entropy's (balance.ratio times); not the "
           "published method (docs/balanced.md). " if any(
               s["method"].endswith(BALANCED) for s in summary) else "")
        + "Silhouette: of the test-set embeddings x_s by class, "
        "cosine distance, on a fixed class-balanced choice of up to "
        f"{probe.PROBE_POINTS} test images, mean ± standard deviation over "
        "seeds (embeddings.png draws the first seed's). Wall time: per run.",
        ""]
    return "\n".join(lines)


def silhouettes_of(summary):
    """{(student, fraction): the teacher's silhouette}, kept aside by
    ``summarise``."""
    return getattr(summary, "teacher_silhouettes", None)


def _signed(v):
    return "–" if v is None else f"{v:+.2f}"


def _difference(s, ref):
    """Δ to ``ref``: the mean paired difference and its interval."""
    mean, half = s[f"vs_{ref}"], s[f"vs_{ref}_ci"]
    if mean is None:
        return "–"
    if s["method"] == ref:
        return _signed(mean)
    return _signed(mean) + ("" if half is None else
                            " " + _range(mean, half, signed=True))


def write_tables(rows, workdir, header, method_order):
    """results.csv and summary.md; returns the summary."""
    write_results_csv(rows, os.path.join(workdir, RESULTS_CSV))
    summary = summarise(rows, method_order)
    with atomic_output(os.path.join(workdir, SUMMARY)) as tmp:
        with open(tmp, "w") as f:
            f.write(summary_markdown(summary, header))
    logging.info("Wrote %s and %s.", RESULTS_CSV, SUMMARY)
    return summary
