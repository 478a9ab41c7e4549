"""How hard each term of the student's loss pushes the student, measured
every step, and the balanced weights made from it (``--weights=balanced``).

A method's published weights were set for one data set and recipe
(CIFAR-100, 240 epochs); on other data its gradient can be ten or a hundred
times the cross-entropy's, and the student collapses or diverges. Each
training step therefore measures, for the cross-entropy (CE), the method's
value and the KD term, the norm of its gradient on the student's outputs,
taken where they all reach the student's network: the embedding ``x_s``,
every path included (a term on the logits ``z_s = C(x_s)`` reaches it
through the classifier), over the global batch,

    n_p = sqrt( sum over the global batch of |dL_p/dx_s|^2 )

(the gradient of each replica's share on its own rows is the gradient of
the global value on them, so the squares are summed over the replicas and
every device count measures the same norm). The logits' own gradient,
which trains the classifier alone, is not added: with it, the
cross-entropy's norm counted its push on the classifier too, and a term on
``x_s`` balanced against that pushed the backbone about twice as hard as
the cross-entropy did (on digits SP and CRD then collapsed at ratio 1;
docs/balanced.md). Two exponential moving
averages of each norm are kept, bias-corrected as Adam's moments are, and
checkpointed with the run: a slow one (``balance.decay``) for the weights,
a fast one (``FAST_DECAY``) that says which term dominated in the steps
before a divergence.

With ``--weights=balanced`` the method's beta and the KD term's alpha are
replaced, at every step, by

    beta_eff = ratio * n_CE / n_method,   alpha_eff = ratio * n_CE / n_KD

from the slow averages (``balance.ratio``, default 1): each term then
pushes the student as hard as the cross-entropy does, whatever the data.
The method's own terms keep their published proportions (EGA's 0.8 / 0.24,
RKD's 25 / 50, DKD's 1 / 8), gamma keeps its value, and nothing of the
method needs to change: the scale is applied to the value it returns. This
is the idea of gradient-norm balancing of multi-task losses (GradNorm, Chen
et al., ICML 2018) with the cross-entropy as the anchor, written here for
one anchor and a fixed ratio. A balanced run is no longer the published
method: its weights follow the gradients, so a schedule inside a method's
value (DKD's warm-up) is undone by the balance.
"""

from __future__ import annotations

import math

WEIGHTS = ("published", "balanced")
# The fast average, for the divergence diagnosis: about ten steps.
FAST_DECAY = 0.9
# A term whose fast-averaged gradient is at least this many times the
# cross-entropy's is named as a divergence's cause.
DOMINANT = 1.0


def check_weights(value):
    from ega_tf.registry import check_choice
    check_choice("weights", value, WEIGHTS)


def output_gradients(tape, share, outputs):
    """``share``'s gradient on each of ``outputs`` (this replica's
    tensors, ``[x_s]``; zeros where it does not reach one)."""
    import tensorflow as tf
    return [tf.cast(g, "float32") for g in tape.gradient(
        share, outputs, unconnected_gradients=tf.UnconnectedGradients.ZERO)]


def global_norms(parts):
    """The norms of each entry of ``parts`` (a list of gradient lists on
    this replica's rows, or None: not measured, NaN) over the global
    batch: the squares are summed over the replicas in one all-reduce for
    every part (one collective each made the two-replica step's graph
    twice as slow to build)."""
    import tensorflow as tf

    from ega_tf import replicas
    local = tf.stack([
        tf.add_n([tf.reduce_sum(tf.square(g)) for g in grads])
        if grads is not None else tf.constant(0.0) for grads in parts])
    norms = tf.sqrt(replicas.sum(local))
    known = tf.constant([grads is not None for grads in parts])
    return tf.where(known, norms, float("nan"))


def _layer_class():
    import keras

    class GradientMonitor(keras.layers.Layer):
        """Bias-corrected moving averages of each part's gradient norm:
        row 0 with ``decay`` (the balance), row 1 with FAST_DECAY (the
        diagnosis). A step whose norms are not all finite leaves them as
        they were. Checkpointed with the run, the same on every replica."""

        def __init__(self, parts, decay, **kwargs):
            super().__init__(**kwargs)
            self.parts = tuple(parts)
            self.decay = float(decay)
            self.ema = self.add_weight(
                shape=(2, len(self.parts)), initializer="zeros",
                trainable=False, name="ema",
                aggregation="only_first_replica")
            self.count = self.add_weight(
                shape=(), initializer="zeros", trainable=False, name="count",
                aggregation="only_first_replica")
            self.built = True

        def call(self, inputs):
            return inputs

        def _decays(self):
            import tensorflow as tf
            return tf.constant([[self.decay], [FAST_DECAY]], "float32")

        def update(self, norms, required):
            """Adds this step's norms ([parts]); returns the corrected
            averages ([2, parts]) including them. The step counts only if
            the ``required`` norms (a [parts] bool mask) are finite; a part
            whose norm is not known (NaN, outside ``required``) keeps its
            average."""
            import tensorflow as tf
            d = self._decays()
            finite = tf.math.is_finite(norms)
            counts = tf.reduce_all(finite | ~required)
            keep = tf.logical_and(counts, finite)[None]
            ema = tf.where(keep, d * self.ema + (1.0 - d) * tf.where(
                finite, norms, 0.0)[None], self.ema)
            count = self.count + tf.cast(counts, "float32")
            self.ema.assign(ema)
            self.count.assign(count)
            return self._corrected(ema, count)

        def smoothed(self):
            """The corrected averages as they stand ([2, parts])."""
            return self._corrected(self.ema, self.count)

        def _corrected(self, ema, count):
            import tensorflow as tf
            scale = 1.0 - tf.pow(self._decays(), count)
            return tf.math.divide_no_nan(tf.convert_to_tensor(ema), scale)

    return GradientMonitor


_CLASS = []


def monitor(parts, decay, name="gradient_monitor"):
    """A GradientMonitor layer over ``parts`` (``"ce"`` first)."""
    if not _CLASS:
        _CLASS.append(_layer_class())
    return _CLASS[0](parts, decay, name=name)


def ratio_weight(ratio, anchor, norm):
    """``ratio * anchor / norm``, 0 where ``norm`` is 0 (a term with no
    gradient on the outputs needs no weight)."""
    import tensorflow as tf
    return tf.math.divide_no_nan(ratio * anchor, norm)


def dominant(ratios):
    """(part, ratio) of the largest known ratio if it is at least
    DOMINANT, else None. ``ratios``: {part: ratio or None}."""
    known = {k: v for k, v in ratios.items()
             if v is not None and math.isfinite(v)}
    if not known:
        return None
    part = max(known, key=known.get)
    return (part, known[part]) if known[part] >= DOMINANT else None
