"""One run of a lockstep group (``Cell``): its model, its compiled step
functions, its checkpoints, its history and its progress display; and the
step functions the loop compiles (``fetch_function``: the batch and the
frozen teacher's forward, shared by the group; ``cell_step_function``: one
run's train or test step on it).
"""

from __future__ import annotations

import os
import shutil
import tempfile

from ega_tf.training import workdir as wd
from ega_tf.training.build import build_model
from ega_tf.training.checkpointing import Checkpointer
from ega_tf.training.report import results_of


def fetch_function(strategy, teacher, jit):
    """``fetch(iterator)``: the iterator's next batch, the frozen teacher's
    features of its teacher view put in place of the view
    (``teacher_features``). The teacher runs here, in a function of its own,
    and not inside a run's step: every run of a lockstep group then reads
    the one forward (``loop.run_lockstep``), and a run alone computes exactly
    what it computes in a group."""
    import tensorflow as tf

    def add_features(batch):
        x, *rest = batch
        if teacher is None or "teacher" not in x:
            return batch
        x = dict(x)
        x["teacher_features"] = teacher(x.pop("teacher"), training=False)
        return (x, *rest)
    replica = (tf.function(add_features, jit_compile=True, autograph=False)
               if jit else add_features)

    @tf.function(autograph=False)
    def fetch(iterator):
        return strategy.run(replica, args=(next(iterator),))
    return fetch


def cell_step_function(model, strategy, step_fn, jit):
    """``step(batch)``: ``step_fn`` (a train or test step) on a fetched
    batch on every replica; returns the metrics over all replicas (read in
    cross-replica context).

    Traced without autograph: the steps hold no Python control flow on
    tensors, and converting every function they call adds seconds to the
    start of every run (measured in docs/speed.md, "Start-up")."""
    import tensorflow as tf
    replica_step = (tf.function(step_fn, jit_compile=True, autograph=False)
                    if jit else step_fn)

    @tf.function(autograph=False)
    def step(batch):
        strategy.run(replica_step, args=(batch,))
        return {m.name: m.result() for m in model.metrics}
    return step


def step_function(model, strategy, step_fn, jit):
    """One step of one run on the next batch of a distributed iterator, as
    the loop takes it: the teacher's forward (``fetch_function``), then the
    run's step (``cell_step_function``); returns the metrics."""
    fetch = fetch_function(strategy, model.teacher, jit)
    step = cell_step_function(model, strategy, step_fn, jit)
    return lambda iterator: step(fetch(iterator))


class Progress:
    """Keras's progress bar (verbose 1) or one line per epoch (2); a run of
    a lockstep group (``label``) prints its lines, prefixed by its label, at
    verbose 1 and 2."""

    def __init__(self, verbose, epochs, steps, label=None):
        self.verbose, self.epochs, self.steps = verbose, epochs, steps
        self.label = label
        if label is not None and verbose:
            self.verbose = 2

    def start(self, epoch, step):
        import keras
        if self.verbose == 1:
            print(f"Epoch {epoch + 1}/{self.epochs}")
            self.bar = keras.utils.Progbar(self.steps, verbose=1)
            self.bar.update(step)

    def update(self, step, logs):
        if self.verbose == 1:
            self.bar.update(step + 1, list(logs.items()))

    def end(self, epoch, logs, seconds):
        if self.verbose == 2:
            text = " - ".join(f"{k}: {v:.4f}" for k, v in logs.items())
            label = f"{self.label}: " if self.label else ""
            print(f"{label}Epoch {epoch + 1}/{self.epochs} - "
                  f"{seconds:.0f}s - {text}", flush=True)
        elif self.verbose == 1:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()
                             if k.startswith(("val_", "test_"))), flush=True)


class Cell:
    """One run of a group: what it was asked (config, workdir), what it
    built (model, step functions, checkpointer) and where it stands
    (history, the epoch and step it starts from)."""

    def __init__(self, index, config, workdir, chief):
        self.index, self.config, self.workdir = index, config, workdir
        self.chief = chief
        self.label = os.path.basename(os.path.normpath(workdir))
        self.history_path = os.path.join(workdir, wd.HISTORY)
        # Other workers write their checkpoints to a scratch directory
        # (MultiWorkerMirroredStrategy needs every worker to save).
        self.scratch = (None if chief else
                        tempfile.mkdtemp(prefix="ega_tf_worker_"))
        # What the group adds to the run's results (the teacher store).
        self.extra_results = {}

    def build(self, dataset, teacher, strategy):
        """The model, its step functions, the newest checkpoint restored
        and the history trimmed to it."""
        config = self.config
        with strategy.scope():
            self.model = build_model(config, dataset, teacher,
                                     strategy.num_replicas_in_sync)
        jit = bool(self.model.step_jit_compile)
        self.train_step = cell_step_function(self.model, strategy,
                                             self.model.train_step, jit)
        self.eval_step = cell_step_function(self.model, strategy,
                                            self.model.test_step, jit)
        os.makedirs(self.workdir, exist_ok=True)
        own_dir = os.path.join(self.workdir, wd.CHECKPOINTS)
        with strategy.scope():
            self.ckpt = Checkpointer(self.model, self.scratch or own_dir,
                                     read_from=own_dir)
        self.start_epoch, self.start_step = self.ckpt.restore()
        self.history = [r for r in wd.read_history(self.history_path)
                        if r["epoch"] < self.start_epoch]
        if self.chief:
            wd.write_json(os.path.join(self.workdir, wd.CONFIG),
                          wd.config_record(config))
            wd.write_history(self.history_path, self.history)
        schedule = self.model.optimizer.learning_rate
        self.last_lr = lambda: (  # the rate of the last step taken
            float(schedule(self.model.optimizer.iterations - 1))
            if callable(schedule) else float(schedule))

    def finish(self, dataset, pruned=False):
        """The results of a run whose epochs are done: the probe of its
        test embeddings (``training.probe``) and the exported student, on the
        chief; results.json written last. ``pruned``: stopped early by
        ``on_epoch`` (no probe, no export)."""
        from ega_tf.deploy import serving
        from ega_tf.training import probe
        results = results_of(self.config, self.model, self.history, dataset)
        results.update(self.extra_results)
        if pruned:
            results["status"] = "pruned"
        if not self.chief or pruned:
            if self.chief:
                wd.write_json(os.path.join(self.workdir, wd.RESULTS),
                              results)
            return results
        results.update(probe.write_probe(self.model, dataset.test,
                                         self.workdir))
        if self.config.export:
            path = os.path.join(self.workdir, wd.SAVED_MODEL)
            serving.export_student(self.model.student, path,
                                   dataset.class_names)
            results["saved_model"] = path
        wd.write_json(os.path.join(self.workdir, wd.RESULTS), results)
        return results

    def record_divergence(self, e, dataset):
        if self.chief:
            wd.write_json(os.path.join(self.workdir, wd.RESULTS), {
                **results_of(self.config, self.model, self.history, dataset),
                "status": "diverged", "diverged": e.record()})

    def close(self):
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
