"""Tuning with an equal budget: ``python -m ega_tf.compare --tune=N``.

Before the grid trains, each method of each setting (student, labeled
fraction) gets the same N trials: its tuned weights (``Method.
tuned_fields``: beta, or the method's own pair, DKD's beta, KD's alpha and
gamma) and, with ``--tune_lr``, the learning rate, each searched on a log
scale around its published value, judged by the validation top-1 of the
last epoch (``data.val_fraction``: images held out of the training split,
never the test set), on the grid's first seed. Trial 0 is the published
values, so a method's choice is never worse on validation than its
defaults. The grid then trains every seed with the chosen values and
reports test numbers as usual.

Optuna proposes the values (``sampler``; docs/architecture.md,
"Dependencies", says why Optuna). The study lives in memory only: each trial is an ordinary
``ega_tf.train`` workdir (``<grid>/tuning/<method>_<student>_lf<f>/
trial_<k>``), and trial k is asked for with a sampler seeded by the setting
and k after the trials before it are told their results. So a rerun asks
for the same values in the same order, finds the finished trials' results
in their workdirs, resumes an interrupted one from its checkpoint, and
continues the search where it stopped; a killed search ends where an
uninterrupted one would. ``tuning.csv`` (every trial) and ``tuned.json``
(the chosen values) are written beside summary.md.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
import time
import warnings
import zlib

from ega_tf import methods
from ega_tf.comparison import grid
from ega_tf.core.constants import COLLAPSED_SHARE
from ega_tf.core.errors import UserError
from ega_tf.core.io_utils import atomic_output
from ega_tf.methods.base import TUNE_RANGE
from ega_tf.training import workdir as wd

TUNING = "tuning"
TUNING_CSV = "tuning.csv"
TUNED = "tuned.json"
# --tune_lr: the student's rate is searched over [lr * low, lr * high].
LR_RANGE = (0.1, 3.0)
LR = "optim.lr"
# --weights=balanced: the ratio of each term's gradient to the
# cross-entropy's is searched over [ratio * low, ratio * high].
RATIO = "balance.ratio"
BALANCE_RANGE = (0.1, 10.0)


@dataclasses.dataclass(frozen=True)
class Setting:
    """What one search tunes: a method in one setting of the grid."""
    method: type  # its Method class (a name given is resolved to it)
    student: str
    labeled_fraction: float
    weights: str = "published"

    def __post_init__(self):
        object.__setattr__(self, "method", methods.get(self.method))

    @classmethod
    def of(cls, cell):
        return cls(cell.method, cell.student, cell.labeled_fraction,
                   cell.weights)

    def cell(self, seed):
        return grid.Cell(self.method, self.student, self.labeled_fraction,
                         seed, self.weights)

    @property
    def name(self):
        """Its directory under tuning/ and its key in tuned.json."""
        return self.cell(0).name.rsplit("_s", 1)[0]


def space(config, tune_lr):
    """{parameter: (low, high, published)} searched for the method of
    ``config`` (the cell's, resolved): ``loss.FIELD`` for its tuned
    weights, or with balanced weights the balance's ratio (trial 0 then
    is the balanced run), and ``optim.lr`` with ``tune_lr``."""
    out = {}
    low, high = TUNE_RANGE
    if config.weights == "balanced":
        if config.method.uses_teacher:
            ratio = float(config.balance.ratio)
            out[RATIO] = (ratio * BALANCE_RANGE[0],
                          ratio * BALANCE_RANGE[1], ratio)
        fields = ()
    else:
        fields = config.method.tuned_fields()
    for field in fields:
        value = float(config.loss[field])
        if value > 0:
            out[f"loss.{field}"] = (value * low, value * high, value)
    if tune_lr:
        lr = float(config.optim.lr)
        out[LR] = (lr * LR_RANGE[0], lr * LR_RANGE[1], lr)
    return out


def check(base, trials, epochs):
    """Refuses a search that cannot choose on held-out data."""
    if trials < 0:
        raise UserError(f"--tune={trials}: give a number of trials per "
                        "method (0: the published weights, no search).")
    if trials and not base.data.val_fraction:
        raise UserError(
            "--tune chooses on a validation split, and "
            "--config.data.val_fraction=0 asks for none. Give it a "
            "fraction (compare's default is 0.1).")
    if epochs is not None and epochs < 1:
        raise UserError(f"--tune_epochs={epochs}: at least 1.")


def sampler(setting, trial, trials):
    """The sampler that proposes trial ``trial`` of ``trials``: trial 0 is
    the published values (enqueued), the first half spreads over the range
    (a scrambled Halton sequence: even coverage, where random draws of a
    few points bunch), the rest follows Optuna's TPE from every result so
    far. Its seed is a function of the setting (and the trial) alone, the
    same in every process, so a rerun asks for the same values."""
    import optuna
    seed = zlib.crc32(setting.name.encode())
    if trial <= trials // 2:
        with warnings.catch_warnings():  # QMCSampler is "experimental"
            warnings.simplefilter("ignore",
                                  optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.QMCSampler(qmc_type="halton",
                                              scramble=True, seed=seed)
    return optuna.samplers.TPESampler(n_startup_trials=1,
                                      seed=zlib.crc32(
                                          f"{setting.name}/{trial}".encode()))


def collapsed_on_validation(history):
    """Whether the last epoch's student is dead on the validation images
    (at least COLLAPSED_SHARE of its pooled features exactly zero): the
    collapse flag of a trial, measured without the test set."""
    share = history[-1].get("val_zero_features") if history else None
    return share is not None and share >= COLLAPSED_SHARE


def outcome(results, history):
    """(state, score) of a trial: ("complete", its last validation
    top-1), ("failed", None) for a diverged or collapsed student, which
    is never chosen, or ("pruned", None)."""
    status = results.get("status", "finished")
    if status == "diverged" or collapsed_on_validation(history):
        return "failed", None
    if status == "pruned":
        return "pruned", None
    return "complete", float(results["val_top1_last"])


def search(base, cells, workdir, trials, *, epochs=None, tune_lr=False,
           verbose=0, log=print, cost=None):
    """Runs (or resumes) the searches of every setting of ``cells``;
    writes tuning.csv and tuned.json in ``workdir``; returns {Setting:
    {parameter: chosen value}} ({} for a method with nothing to tune).
    ``cost``, a dict, receives what the search cost: trials, pruned,
    failed, seconds (trials finished in an earlier process count 0 s)."""
    import optuna
    check(base, trials, epochs)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = cells[0].seed
    chosen, published, rows = {}, {}, []
    for setting in dict.fromkeys(Setting.of(c) for c in cells):
        config = grid.cell_config(base, setting.cell(seed))
        if epochs is not None:
            config.epochs = epochs
        params = space(config, tune_lr)
        chosen[setting] = {}
        if params and trials:
            published[setting.name] = {k: v[2] for k, v in params.items()}
            found, chosen[setting] = _search_one(
                setting, config, params, trials, workdir, verbose, log)
            rows += found
    write(rows, chosen, published, workdir, trials)
    if cost is not None:
        cost.update(trials=len(rows),
                    pruned=sum(r["outcome"] == "pruned" for r in rows),
                    failed=sum(r["outcome"] == "failed" for r in rows),
                    seconds=sum(r.pop("_seconds") for r in rows))
    return chosen


def pruner(epochs):
    """Optuna's median rule: a trial whose validation top-1 after an epoch
    (past the first third of the run) is below the median of the
    completed trials' at that epoch stops there, once two trials have
    completed. Only the trials TPE proposes are judged by it
    (``prunable``): trial 0 (the published or balanced weights) and the
    spread of the first half always run whole, so the median is taken over
    the range, not over trial 0 alone (against one completed trial, every
    value whose student starts slower was stopped: all 27 trials of ratios
    below 1 on digits)."""
    import optuna
    return optuna.pruners.MedianPruner(
        n_startup_trials=2, n_warmup_steps=max(1, epochs // 3))


def prunable(trial, trials):
    """Whether the median rule may stop trial ``trial`` of ``trials``: the
    ones ``sampler`` gives to TPE."""
    return trial > trials // 2


def _search_one(setting, config, params, trials, workdir, verbose, log):
    """The ``trials`` runs of one setting (``config``: its first seed's
    cell, resolved); returns (tuning.csv's rows, the chosen values)."""
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState
    cell = setting.cell(config.seed)
    study = optuna.create_study(direction="maximize",
                                pruner=pruner(config.epochs))
    study.enqueue_trial({k: v[2] for k, v in params.items()})
    distributions = {k: FloatDistribution(lo, hi, log=True)
                     for k, (lo, hi, _) in params.items()}
    rows, scores = [], []
    for k in range(trials):
        study.sampler = sampler(setting, k, trials)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore",
                                  optuna.exceptions.ExperimentalWarning)
            trial = study.ask(distributions)
        path = os.path.join(workdir, TUNING, setting.name, f"trial_{k}")
        label = (f"[tune {cell.label} {cell.student_label} labeled="
                 f"{setting.labeled_fraction:g} {k + 1}/{trials}] "
                 + ", ".join(f"{n.split('.')[1]}={v:.4g}"
                             for n, v in trial.params.items()))
        results, history, note, seconds = _trial(
            grid.with_values(config, trial.params), path, verbose, label,
            log, trial, prunable(k, trials))
        state, score = outcome(results, history)
        if state == "complete":
            study.tell(trial, score)
        else:
            study.tell(trial, state=(TrialState.FAIL if state == "failed"
                                     else TrialState.PRUNED))
        scores.append(score)
        log(f"{label}: " + (
            f"validation top-1 last {score:.2f}" if state == "complete" else
            f"pruned after epoch {len(history)} (validation top-1 "
            f"{100 * history[-1]['val_top1']:.2f}, under the earlier "
            "trials' median)" if state == "pruned" else
            "failed, never chosen") + note)
        rows.append({"method": cell.label, "student": cell.student_label,
                     "labeled_fraction": setting.labeled_fraction,
                     "trial": k, "seed": config.seed,
                     "epochs": len(history),
                     "status": results.get("status", "finished"),
                     "collapsed": collapsed_on_validation(history),
                     "outcome": state, "val_top1_last": score,
                     "val_top1_best": results.get("val_top1_best"),
                     **trial.params,
                     "workdir": os.path.relpath(path, workdir),
                     "_seconds": seconds})
    complete = [i for i in range(trials) if scores[i] is not None]
    if complete:
        # The first best: trial 0 (published) wins a tie.
        best = max(complete, key=lambda i: (scores[i], -i))
    else:
        best = 0
        log(f"[tune {cell.label}] no trial trained a working student "
            "(each diverged or collapsed); the grid keeps trial 0's "
            "values.")
    for row in rows:
        row["chosen"] = row["trial"] == best
    chosen = {k: rows[best][k] for k in params}
    log(f"[tune {cell.label}] chosen: " + ", ".join(
        f"{n}={v:.4g} (" + ("balanced " if n == RATIO else "published ")
        + f"{params[n][2]:g})" for n, v in chosen.items()))
    return rows, chosen


def _trial(config, path, verbose, label, log, trial, may_prune):
    """One trial trained, resumed, or read back: (results, history, a
    note for its log line, seconds spent here). Each epoch's validation
    top-1 is reported to ``trial``; a student dead on the validation images
    two epochs running, or (``may_prune``) Optuna's pruner, stops it
    early."""
    import keras

    from ega_tf.training import divergence, loop
    state = grid.cell_state(path)
    done = state in ("finished", "diverged", "pruned")
    history_path = os.path.join(path, wd.HISTORY)
    # What an earlier process trained: reported as it was then.
    reported = set()

    def report(row):
        if row["epoch"] not in reported:  # a resumed epoch is the same
            trial.report(row["val_top1"], row["epoch"])
            reported.add(row["epoch"])
    for row in wd.read_history(history_path):
        report(row)
    rows = []

    def on_epoch(epoch, row):
        report(row)
        rows.append(row)
        if len(rows) >= 2 and all(collapsed_on_validation([r])
                                  for r in rows[-2:]):
            return True
        return may_prune and trial.should_prune()

    if not done:
        log(f"{label}: "
            + ("resuming" if state == "partial" else "training") + "...")
    begin = time.time()
    try:
        with grid.quiet(verbose == 0):
            results = loop.run(config, path, verbose, on_epoch=on_epoch)
    except divergence.DivergedError:
        results = wd.read_json(os.path.join(path, wd.RESULTS))
    keras.backend.clear_session(free_memory=False)
    seconds = 0.0 if done else time.time() - begin
    history = wd.read_history(history_path)
    note = (" (DIVERGED)" if results.get("status") == "diverged" else
            " (COLLAPSED on validation)" if collapsed_on_validation(history)
            else "")
    note += (" (done earlier)" if done else f" in {grid.duration(seconds)}")
    return results, history, note, seconds


def write(rows, chosen, published, workdir, trials):
    """tuning.csv (one row per trial) and tuned.json (the chosen values
    and the published ones, per setting)."""
    names = [n for row in rows for n in row if "." in n]
    columns = ["method", "student", "labeled_fraction", "trial", "seed",
               "epochs", "status", "collapsed", "outcome", "val_top1_last",
               "val_top1_best", *dict.fromkeys(names), "chosen", "workdir"]
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv(row.get(k)) for k in columns})
    with atomic_output(os.path.join(workdir, TUNING_CSV)) as tmp:
        with open(tmp, "w") as f:
            f.write(out.getvalue())
    wd.write_json(os.path.join(workdir, TUNED), {
        "trials_per_method": trials,
        "chosen": {s.name: v for s, v in chosen.items() if v},
        "published": published})


def _csv(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def markdown(chosen, trials, epochs):
    """summary.md's paragraph on the search: what each method chose."""
    lines = [f"Tuned: {trials} trial{'s' if trials != 1 else ''} per method"
             + (f" of {epochs} epochs" if epochs else "")
             + " on the validation split, first seed; every seed then "
             f"trained with the chosen values ({TUNING_CSV}, {TUNED}).", ""]
    for setting, values in chosen.items():
        if values:
            lines.append(f"- {setting.cell(0).label}: " + ", ".join(
                f"`{n}` {v:.4g}" for n, v in values.items()))
    return "\n".join(lines) + "\n"
