"""The arithmetic of a step over every replica of the global batch.

The training step and every distillation method compute their terms with
these, so that one device and N devices (or M machines) give the same
numbers for the same global batch. Inside a ``tf.distribute`` replica
context they communicate across replicas; outside one (a single device,
eager code) they are the identity.

- ``gather(x)``: the global batch's rows, in replica order. Its gradient
  sums every replica's upstream gradient into the local rows.
- ``mean(values, weights)``: a weighted mean over the global batch, and
  this replica's share of it (its weighted sum over the global weight):
  Keras sums the replicas' gradients, so the shares' gradients add up to
  the mean's.
- ``graph_share(value)``: the share of a loss that every replica computes
  alike on the gathered batch (``1 / count()`` of it).
- ``sum(x)``, ``count()``, ``index()``.

docs/architecture.md ("Several devices") explains why each term is
computed this way.
"""

from __future__ import annotations

import tensorflow as tf


def _context():
    return tf.distribute.get_replica_context()


def count():
    """Replicas in sync (1 outside a strategy)."""
    ctx = _context()
    return ctx.num_replicas_in_sync if ctx is not None else 1


def index():
    """This replica's id in its group (0 on one replica)."""
    ctx = _context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return 0
    return ctx.replica_id_in_sync_group


def sum(x):  # noqa: A001 (the module's vocabulary: replicas.sum)
    """``x`` summed over every replica (the identity on one)."""
    return (_context().all_reduce(tf.distribute.ReduceOp.SUM, x)
            if count() > 1 else x)


def gather(x):
    """The global batch's rows of ``x``, in replica order (the identity on
    one replica)."""
    return _context().all_gather(x, axis=0) if count() > 1 else x


def mean(values, weights):
    """(the global weighted mean of ``values``, for logging; this
    replica's share of it: its weighted sum over the global weight)."""
    total = tf.maximum(sum(tf.reduce_sum(weights)), 1.0)
    local = tf.reduce_sum(values * weights)
    return sum(local) / total, local / total


def graph_share(value):
    """This replica's share of a loss computed alike on every replica from
    the gathered batch: ``value / count()``."""
    return value / count()
