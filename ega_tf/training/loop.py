"""The training loop, as a library: config -> strategy -> data -> model ->
loop -> export.

``run(config, workdir)`` is what ``python -m ega_tf.train`` calls once its
flags are resolved. The workdir receives ``config.json`` (everything
resolved), ``history.csv`` and TensorBoard logs (``logs/``), checkpoints
(``checkpoints/``), ``results.json`` and the exported student
(``saved_model/``).

The loop is written here rather than left to ``keras.Model.fit`` because a
run must survive a ``kill -9`` and end exactly where an uninterrupted one
would: a checkpoint records the epoch, the step within it and the running
metrics, and the resumed epoch replays its deterministic stream from that
step (``fit`` restarts an epoch's metrics and cannot start mid-epoch). It
also stops at the first non-finite loss term, naming it, and reads the
metrics over all replicas (Keras keeps them per replica until read outside
the replica step). The model itself is a plain ``Distiller``, which
``fit`` trains as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import time

from ega_tf.core import runtime
from ega_tf.training import distribute
from ega_tf.training import workdir as wd
from ega_tf.training.build import (load_dataset, load_teacher,
                                   open_teacher_store, teacher_features,
                                   uses_teacher)
from ega_tf.training.cell import Cell, Progress, fetch_function
from ega_tf.training.divergence import (DivergedError, cause_of,
                                        first_non_finite)
from ega_tf.training.report import collapse, collapse_warning, finished


def run(config, workdir, verbose=2, strategy=None, on_step=None,
        on_epoch=None):
    """Trains per ``config`` (resolved) into ``workdir``; returns the
    results dict. Raises ``DivergedError`` if a loss term stops being
    finite, and ``UserError`` (before writing anything) for bad input or a
    workdir that belongs to another run. ``on_step(epoch, step, logs)`` is
    called after every training step (0-based; logs are the epoch's running
    means). ``on_epoch(epoch, row)`` is called with each epoch's history
    row; when it returns True the run stops there, its results recorded
    with status "pruned" (a rerun reports them as they stand). With
    ``config.deterministic``, TensorFlow's op determinism is
    on for the run and the process's setting is restored after it.

    A run alone is a lockstep group of one (``run_lockstep``): it computes
    what it computes in a group, bit for bit."""
    outcome, = run_lockstep(
        [(config, workdir)], verbose, strategy,
        on_step=(None if on_step is None else
                 lambda epoch, step, logs: logs[0] is None or on_step(
                     epoch, step, logs[0])),
        on_epoch=(None if on_epoch is None else
                  lambda index, epoch, row: on_epoch(epoch, row)))
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


# Fields the runs of one lockstep group may set each for itself: what is
# trained, and how. Every other field decides the batches, the views or the
# teacher's features, and is the group's.
CELL_FIELDS = ("distill", "loss", "weights", "balance", "student",
               "student_weights", "student_feature_layer", "student_input",
               "student_bn_momentum", "embed_dim", "optim", "resume",
               "export")


def lockstep_key(config):
    """Runs with equal keys see the same batches, views and teacher
    features, epoch by epoch: ``config`` without ``CELL_FIELDS``."""
    shared = wd.config_record(config)
    for field in CELL_FIELDS:
        shared.pop(field, None)
    return json.dumps(shared, sort_keys=True)


def run_lockstep(runs, verbose=0, strategy=None, on_step=None,
                 on_epoch=None):
    """Trains ``runs`` ([(config, workdir)], configs with one
    ``lockstep_key``: different methods or students on the same data, seed
    and teacher) in one process, in lockstep: each step draws one batch and
    runs the frozen teacher once, then every run's own step (its student,
    teacher head, method state and optimizers) on it. Each run keeps its
    own workdir, checkpoints, history, results and export, and ends bit for
    bit where it would end alone; a run that diverges stops alone, the
    others go on. Runs resumed at different points train in turn, each
    set of equal points in lockstep.

    Returns, per run, its results dict or the ``DivergedError`` that
    stopped it. ``on_step(epoch, step, logs)``: after every step, ``logs``
    one entry per run (None for those not training in it).
    ``on_epoch(run index, epoch, row)``: after each epoch of a run, with
    its history row; True stops that run there (status "pruned")."""
    if not runs:
        return []
    keys = {lockstep_key(c) for c, _ in runs}
    if len(keys) > 1:
        raise ValueError("Runs of a lockstep group must share every config "
                         f"field but {', '.join(CELL_FIELDS)}.")
    workdirs = [os.path.abspath(w) for _, w in runs]
    if len(set(workdirs)) < len(workdirs):
        raise ValueError("Runs of a lockstep group need a workdir each.")
    with runtime.op_determinism(runs[0][0].deterministic), \
            _no_retracing_warning():
        group = Group(runs, verbose, strategy, on_step, on_epoch)
        try:
            return group.run()
        finally:
            group.close()


class _RetracingFilter:
    """Drops TensorFlow's "triggered tf.function retracing" warning: each
    run of a group traces its own step functions, once each (every batch
    of a stream has one shape; tests/test_lockstep.py counts the traces),
    and that heuristic counts the traces of every function made from the
    same Python code as retraces of one."""

    @staticmethod
    def filter(record):
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def _no_retracing_warning():
    import logging as std_logging
    logger = std_logging.getLogger("tensorflow")
    logger.addFilter(_RetracingFilter)
    try:
        yield
    finally:
        logger.removeFilter(_RetracingFilter)



class Group:
    """The runs of ``run_lockstep``: the shared dataset, teacher and input
    streams, and each run's ``Cell``."""

    def __init__(self, runs, verbose, strategy, on_step, on_epoch=None):
        self.config = config = runs[0][0]
        self.verbose, self.on_step = verbose, on_step
        self.on_epoch = on_epoch
        self.strategy = strategy or distribute.create(config)
        distribute.check_batch(config, self.strategy.num_replicas_in_sync)
        self.chief = distribute.is_chief()
        self.outcomes = [None] * len(runs)
        self.cells = []
        # Every workdir is checked before any is written.
        claims = [wd.claim(w, c) for c, w in runs]
        for i, ((c, w), (state, done)) in enumerate(zip(runs, claims)):
            if state == "done":
                try:
                    self.outcomes[i] = finished(done, w)
                except DivergedError as e:
                    self.outcomes[i] = e
            else:
                self.cells.append(Cell(i, c, w, self.chief))

    def run(self):
        if self.cells:
            self.build()
            for start in sorted({(c.start_epoch, c.start_step)
                                 for c in self.cells}):
                self._loop([c for c in self.cells if (
                    c.start_epoch, c.start_step) == start], *start)
        return self.outcomes

    def build(self):
        """Data, teacher, every run's model, the input streams."""
        from ega_tf.data import pipeline
        config, strategy, cells = self.config, self.strategy, self.cells
        runtime.set_seed(config.seed)
        runtime.set_precision(config.precision)
        self.dataset = dataset = load_dataset(config)
        taught = [c for c in cells if uses_teacher(c.config)]
        with strategy.scope():
            teacher = (load_teacher(config, dataset.image_size)
                       if taught else None)
        for cell in cells:
            cell.build(dataset, teacher if cell in taught else None,
                       strategy)
        features = teacher_features(
            config, teacher, dataset, [c.workdir for c in cells],
            self.chief, self.verbose)
        store = open_teacher_store(config, teacher, dataset, self.verbose)
        if store is not None:
            for cell in cells:
                cell.extra_results["teacher_store"] = store.record()
        self.train = pipeline.TrainStream(
            dataset.train, config.batch_size, seed=config.seed,
            padding=config.padding, teacher_view=config.teacher_view,
            deterministic=config.deterministic,
            features=features.get("train"), store=store,
            store_images=dataset.train_positions,
            index=any(c.model.method.uses_index for c in cells),
            **config.input)
        # Evaluated every epoch, in this order: history's val_* and test_*.
        self.evaluated = {
            prefix: pipeline.EvalStream(split, config.eval_batch_size,
                                        features=features.get(name),
                                        **config.input)
            for prefix, name, split in (("val", "val", dataset.val),
                                        ("test", "test", dataset.test))
            if split is not None}
        jit = any(c.model.step_jit_compile for c in taught)
        # One fetch for training batches, one for evaluation's (which carry
        # their weights): each traced once.
        self.fetch = fetch_function(strategy, teacher, jit)
        self.eval_fetch = fetch_function(strategy, teacher, jit)

    def _stop_if_state_broke(self, cell, live, epoch, step):
        """Before a checkpoint: a run whose state holds a non-finite value
        (a BatchNorm's moving variance overflowing while the loss, which
        normalises with the batch's own, is still finite) is stopped as
        diverged, so no checkpoint kept holds one."""
        broken = cell.ckpt.non_finite()
        if broken:
            self._stop(cell, live, DivergedError(
                broken, "inf or nan", epoch, step, cell.last_lr(),
                cause_of(cell.config, cell.model)))
        return bool(broken)

    def _stop(self, cell, live, error):
        """A run whose loss stopped being finite: recorded, and dropped
        from the group."""
        cell.record_divergence(error, self.dataset)
        self.outcomes[cell.index] = error
        live.remove(cell)

    def _loop(self, cells, start_epoch, start_step):
        """The epochs of ``cells`` (built, all at ``start_epoch`` and
        ``start_step``), appending to their histories; then their
        results. A run's wall time is the time of its own steps plus its
        share of the group's (the batch, the teacher, evaluation's
        batches)."""
        import tensorflow as tf
        config, strategy, train = self.config, self.strategy, self.train
        steps = train.steps_per_epoch
        every = config.checkpoint_every_steps or 0
        label = (lambda c: c.label) if len(self.outcomes) > 1 else (
            lambda c: None)
        for cell in cells:
            cell.progress = Progress(self.verbose, config.epochs, steps,
                                     label(cell))
            # TensorBoard runs: train, validation (held-out training images)
            # and test.
            boards = {"train": "train", "val": "validation", "test": "test"}
            cell.writers = ({prefix: tf.summary.create_file_writer(
                os.path.join(cell.workdir, wd.LOGS, boards[prefix]))
                for prefix in ("train", *self.evaluated)}
                if self.chief else {})
        live = list(cells)
        by_index = {c.index: c for c in self.cells}
        slots = [by_index.get(i) for i in range(len(self.outcomes))]
        for epoch in range(start_epoch, config.epochs):
            if not live:
                break
            skip = start_step if epoch == start_epoch else 0
            for cell in live:
                if not skip:  # a resumed epoch keeps its running metrics
                    cell.model.reset_metrics()
                cell.progress.start(epoch, skip)
                cell.seconds = 0.0
            iterator = iter(train.distributed(strategy, epoch, skip))
            shared, logs = 0.0, {}
            for step in range(skip, steps):
                begin = time.time()
                batch = self.fetch(iterator)
                shared += (time.time() - begin) / len(live)
                for cell in list(live):
                    begin = time.time()
                    logs[cell] = {k: float(v) for k, v in
                                  cell.train_step(batch).items()}
                    cell.seconds += time.time() - begin
                    bad = first_non_finite(logs[cell],
                                           cell.model.monitor_names())
                    if bad:
                        self._stop(cell, live, DivergedError(
                            bad, logs[cell][bad], epoch, step,
                            cell.last_lr(), cause_of(cell.config,
                                                     cell.model)))
                        continue
                    cell.progress.update(step, logs[cell])
                    done = epoch * steps + step + 1
                    if every and done % every == 0 and step + 1 < steps:
                        if self._stop_if_state_broke(cell, live, epoch,
                                                     step):
                            continue
                        cell.ckpt.save(epoch, step + 1, done)
                if self.on_step is not None:
                    self.on_step(epoch, step, [
                        logs.get(c) if c in live else None for c in slots])
                if not live:
                    return
            for cell in live:
                cell.train_seconds = cell.seconds = cell.seconds + shared
            evaluated = self._evaluate(live)
            for cell in list(live):
                values = evaluated[cell]
                bad = next(((prefix, k) for prefix, v in values.items()
                            for k in [first_non_finite(v)] if k), None)
                if bad:
                    prefix, k = bad
                    self._stop(cell, live, DivergedError(
                        f"{prefix}_{k}", values[prefix][k], epoch,
                        steps - 1, cell.last_lr(), cause_of(cell.config,
                                                            cell.model)))
                    continue
                if self._stop_if_state_broke(cell, live, epoch, steps - 1):
                    continue
                self._end_epoch(cell, epoch, logs.get(cell, {}), values,
                                steps)
                if self.on_epoch is not None and epoch + 1 < config.epochs \
                        and self.on_epoch(cell.index, epoch,
                                          cell.history[-1]):
                    live.remove(cell)
                    self.outcomes[cell.index] = cell.finish(
                        self.dataset, pruned=True)
        for cell in live:
            self.outcomes[cell.index] = cell.finish(self.dataset)

    def _evaluate(self, cells):
        """{cell: {prefix: its metrics over that stream}}, train-only terms
        left out; each batch's teacher forward computed once."""
        out = {cell: {} for cell in cells}
        for prefix, stream in self.evaluated.items():
            for cell in cells:
                cell.model.reset_metrics()
            iterator = iter(stream.distributed(self.strategy))
            values = {}
            for _ in range(stream.steps):
                begin = time.time()
                batch = self.eval_fetch(iterator)
                shared = (time.time() - begin) / len(cells)
                for cell in cells:
                    begin = time.time()
                    values[cell] = cell.eval_step(batch)
                    cell.seconds += time.time() - begin + shared
            for cell in cells:
                out[cell][prefix] = {
                    k: float(v) for k, v in values[cell].items()
                    if k not in cell.model.train_only_names()}
        return out

    def _end_epoch(self, cell, epoch, logs, evaluated, steps):
        """The epoch's row in the cell's history, TensorBoard and
        checkpoint."""
        import tensorflow as tf
        config = cell.config
        val = {f"{prefix}_{k}": v for prefix, values in evaluated.items()
               for k, v in values.items()}
        row = {"epoch": epoch, **logs, **val,
               "epoch_seconds": cell.seconds,
               "train_seconds": cell.train_seconds}
        was_collapsed = collapse(cell.history)[0]
        cell.history.append(row)
        collapsed, _, share = collapse(cell.history)
        if collapsed and not was_collapsed:
            collapse_warning(epoch + 1, share, cell.label
                             if len(self.outcomes) > 1 else None,
                             balanced=config.weights == "balanced")
        cell.progress.end(epoch, {**logs, **val}, row["epoch_seconds"])
        if self.chief:
            # The row goes in before the checkpoint: a crash between the
            # two resumes from the previous checkpoint, and the history is
            # trimmed to it.
            wd.write_history(cell.history_path, cell.history)
            for prefix, values in (("train", logs), *evaluated.items()):
                with cell.writers[prefix].as_default(step=epoch + 1):
                    for k, v in values.items():
                        tf.summary.scalar(k, v)
        if (epoch + 1) % config.checkpoint_every == 0 or \
                epoch + 1 == config.epochs:
            cell.ckpt.save(epoch + 1, 0, (epoch + 1) * steps)

    def close(self):
        for cell in self.cells:
            cell.close()
