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
    from ega_tf.core.registry import check_choice
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

    from ega_tf.nn import replicas
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


class GradientBalancing:
    """The Distiller's side of this: which parts of its loss are measured
    (``gradient_parts``), the measurement inside its train step
    (``_measure``), the weights of the step (``_effective_weights``), what
    it logs (``monitor_names``) and reads back after a divergence
    (``gradient_ratios``). Mixed into ``training.distiller.Distiller``,
    which provides ``method``, ``beta``, ``alpha``, ``distilling``,
    ``balanced`` and ``balance_ratio``."""

    def _build_monitor(self, decay):
        """The parts of the student's loss whose gradient on the student's
        outputs is measured every step (this module): the
        cross-entropy, the method's value, each of its terms when it has
        several, the KD term; None when nothing distils."""
        parts = []  # (key, logged name, the weight field of the fix)
        if self.distilling and self.beta and self.method.terms:
            m = self.method
            parts.append(("method", f"grad_ratio_{m.name}", "beta"))
            if len(m.terms) > 1:
                parts += [(f"term:{t}", f"grad_ratio_{t}", f or "beta")
                          for t, f in m.terms.items()
                          if t not in (m.name, "kd")]
        if self.distilling and self.alpha:
            parts.append(("kd", "grad_ratio_kd", "alpha"))
        self.gradient_parts = parts
        self.gradient_monitor = (monitor(
            ["ce", *(p[0] for p in parts)], decay) if parts else None)

    def monitor_names(self):
        """The logged gradient measurements: each part's gradient on the
        student's outputs over the cross-entropy's (weights included), and
        with balanced weights the effective beta and alpha."""
        names = tuple(p[1] for p in self.gradient_parts)
        if self.balanced:
            keys = {p[0] for p in self.gradient_parts}
            names += (("weight_beta",) if "method" in keys else ()) + (
                ("weight_alpha",) if "kd" in keys else ())
        return names

    def _effective_weights(self, slow):
        """(beta, alpha) of this step: the published ones, or with
        balanced weights those that put each term's smoothed gradient
        norm at ``balance_ratio`` times the cross-entropy's."""
        if not self.balanced:
            return self.beta, self.alpha
        keys = ["ce", *(p[0] for p in self.gradient_parts)]

        def weight(key, published):
            if key not in keys:
                return published
            return ratio_weight(self.balance_ratio, slow[0],
                                slow[keys.index(key)])
        return weight("method", self.beta), weight("kd", self.alpha)

    def _measure(self, tape, out, shares):
        """This step's gradient norms on the student's embedding x_s (every
        path, the classifier's included), added to the monitor; returns
        (beta, alpha, logged measurements)."""
        import tensorflow as tf
        outputs = [out["embedding"]]
        keys = ["ce", *(p[0] for p in self.gradient_parts)]
        grads = {"ce": output_gradients(tape, shares["ce"], outputs)}
        # A part the step did not compute (beta or alpha set to 0 after
        # the model was made, a term a user's method does not share) is
        # not measured: NaN, and its averages keep their values.
        terms = shares.get("terms") if "method" in shares else None
        for key in keys:
            if key.startswith("term:") and terms is not None \
                    and key[5:] in terms:
                grads[key] = output_gradients(tape, terms[key[5:]],
                                              outputs)
        if "kd" in keys and "kd" in shares:
            grads["kd"] = output_gradients(tape, shares["kd"],
                                           outputs)
        if "method" in keys and "method" in shares:
            split = [k for k in grads if k.startswith("term:")]
            grads["method"] = (
                [tf.add_n(g) for g in zip(*(grads[k] for k in split))]
                if split and len(split) == len(self.method.terms)
                else output_gradients(tape, shares["method"],
                                      outputs))
        nan = tf.constant(float("nan"))
        norms = global_norms([grads.get(k) for k in keys])
        required = tf.constant([k in grads and not k.startswith("term:")
                                for k in keys])
        slow, fast = tf.unstack(self.gradient_monitor.update(norms,
                                                             required))
        beta, alpha = self._effective_weights(slow)
        logged = {}
        for i, (key, name, _) in enumerate(self.gradient_parts, 1):
            w = alpha if key == "kd" else beta
            logged[name] = (tf.math.divide_no_nan(w * fast[i], fast[0])
                            if key in grads else nan)
        if self.balanced:
            for key, name in (("method", "weight_beta"),
                              ("kd", "weight_alpha")):
                if name in self.monitor_names():
                    logged[name] = tf.convert_to_tensor(
                        beta if key == "method" else alpha, "float32")
        return beta, alpha, logged

    def gradient_ratios(self):
        """{logged name: (weight field, its fast-averaged gradient on the
        student's outputs over the cross-entropy's)} as they stand, read
        on the host (for a divergence's message); {} when nothing is
        measured."""
        import numpy as np
        if self.gradient_monitor is None:
            return {}
        slow, fast = np.asarray(self.gradient_monitor.smoothed())
        beta, alpha = (float(np.asarray(w)) for w in
                       self._effective_weights(slow))
        out = {}
        for i, (key, name, field) in enumerate(self.gradient_parts, 1):
            w = alpha if key == "kd" else beta
            ratio = w * fast[i] / fast[0] if fast[0] > 0 else None
            out[name] = (field, None if ratio is None or fast[i] == 0 and
                         key.startswith("term:") else float(ratio))
        return out
