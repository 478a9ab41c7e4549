"""The tf.distribute strategy of a run: one device, several on one host
(``MirroredStrategy``), or several hosts (``MultiWorkerMirroredStrategy``).

``config.distribute.strategy`` = ``auto`` picks ``multi_worker`` when
``TF_CONFIG`` names more than one worker, ``mirrored`` when more than one GPU
is visible (or ``cpu_replicas`` > 1), else ``none``. ``cpu_replicas`` splits
the CPU into N logical devices so the multi-device code runs on a laptop and
in CI. ``--batch_size`` is always the global batch; each replica takes its
slice of it. What the step computes over the global batch is explained in
docs/architecture.md, "Several devices".

The strategy is created before TensorFlow runs any op: logical devices and
multi-worker collectives can only be configured then.
"""

from __future__ import annotations

import itertools
import json
import os

from absl import logging

from ega_tf.core.errors import UserError
from ega_tf.core.registry import check_choice

STRATEGIES = ("auto", "none", "mirrored", "multi_worker")
_mirrored_count = itertools.count(1)


def check_strategy(name):
    check_choice("distribute.strategy", name, STRATEGIES)


def tf_config():
    """The parsed ``TF_CONFIG`` environment variable, or {}."""
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError:
        raise UserError(f"TF_CONFIG is not valid JSON: {text[:200]!r}") \
            from None


def num_workers():
    return len(tf_config().get("cluster", {}).get("worker", [])) or 1


def worker_index():
    task = tf_config().get("task", {})
    return int(task.get("index", 0)) if task.get("type", "worker") == \
        "worker" else 0


def is_chief():
    """Worker 0 writes the workdir; the others write nowhere lasting."""
    return worker_index() == 0


def resolve_name(setting, cpu_replicas=1):
    """The strategy ``auto`` stands for, here."""
    import tensorflow as tf
    check_strategy(setting)
    if setting != "auto":
        return setting
    if num_workers() > 1:
        return "multi_worker"
    if len(tf.config.list_physical_devices("GPU")) > 1 or cpu_replicas > 1:
        return "mirrored"
    return "none"


def split_cpu(n):
    """Makes ``n`` logical CPU devices (once, before TensorFlow starts)."""
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) >= n:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        raise UserError(
            f"distribute.cpu_replicas={n} must be set before TensorFlow "
            "starts its devices (here it already runs with "
            f"{len(current or [cpu])}); in a program, set it in the config, "
            "not after running TensorFlow code.") from None


def mirrored(devices):
    """A ``MirroredStrategy`` over ``devices``. Each one gets its own range
    of collective keys: TensorFlow starts every instance at the same keys,
    and a second strategy in one process (tests, notebooks) would collide
    with the first's collectives."""
    import tensorflow as tf
    tf.distribute.MirroredStrategy._collective_key_base = 100_000 * next(
        _mirrored_count)
    return tf.distribute.MirroredStrategy(devices)


def create(config):
    """The strategy for ``config.distribute``; logs which and how many
    replicas."""
    import tensorflow as tf
    d = config.distribute
    name = resolve_name(d.strategy, d.cpu_replicas)
    if name == "multi_worker":
        if num_workers() < 2:
            raise UserError("distribute.strategy=multi_worker needs TF_CONFIG"
                            " naming the workers; start them with `python -m"
                            " ega_tf.launch --workers=N -- ...` (BUILD.md).")
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    elif name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            devices = [f"/gpu:{i}" for i in range(len(gpus))]
        else:
            split_cpu(d.cpu_replicas)
            devices = [f"/cpu:{i}" for i in range(d.cpu_replicas)]
        strategy = mirrored(devices)
    else:
        strategy = tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    where = (f"{num_workers()} workers" if name == "multi_worker" else
             "this host")
    logging.info("Strategy %s: %d replica(s) on %s; global batch %d, %d per "
                 "replica.", name, replicas, where, config.batch_size,
                 config.batch_size // replicas)
    return strategy


def check_batch(config, replicas):
    """The global batch must split evenly, and leave each replica the
    examples its method needs (two for a method that relates them)."""
    per, rest = divmod(config.batch_size, replicas)
    if rest:
        raise UserError(f"batch_size {config.batch_size} does not divide "
                        f"among {replicas} replicas; use a multiple of "
                        f"{replicas}.")
    least = config.method.min_batch
    if per < least:
        raise UserError(f"batch_size {config.batch_size} leaves {per} "
                        f"example(s) per replica on {replicas} replicas; "
                        f"{config.method.name} needs at least {least}.")
