"""Distiller: a frozen teacher, a student, and a distillation method.

    f_t = T(img_t)                 frozen teacher, inference mode, float32
    x_t = P_t(f_t)                 teacher head Dense(D)           (online)
    z_t = C_t(x_t)                 teacher classifier Dense(K)     (online)
    f_s = S(img_s)                 student backbone, pooled
    x_s = P_s(f_s)                 student head Dense(D)
    z_s = C_s(x_s)                 student logits read the aligned embedding
    L   = gamma * CE(z_s, y) + beta * L_method(x_t, x_s, z_t, z_s, y)
          + alpha * KD_T(z_t, z_s)

with the method and its weights from ``ega_tf.methods`` (EGA:
L_method = w_node * L_node + w_edge * L_edge). The teacher head (P_t, C_t)
is trained by the teacher-logit cross-entropy alone, with its own
optimizer; the student's loss sees x_t and z_t as constants. Labels equal to
-1 mark unlabeled examples: they take part in the method but not in any
cross-entropy or accuracy. ``call()`` is the deployable student alone
(uint8 image -> logits), so ``predict``/``evaluate``/export see only it.
With ``teacher=None`` and the method ``none`` the same network is trained by
cross-entropy alone: the baseline with the identical pipeline. Every sum
over the global batch goes through ``ega_tf.nn.replicas``.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf
from keras import ops

from ega_tf.core.constants import DIAGNOSTICS
from ega_tf.methods import maths
from ega_tf.methods.base import STANDARDIZE
from ega_tf.nn import replicas
from ega_tf.nn.layers import torch_dense
from ega_tf.training.balance import GradientBalancing


def _f64(x):
    return ops.cast(x, "float64")


class Distiller(GradientBalancing, keras.Model):
    """Distils ``teacher`` into ``student`` with a method of
    ``ega_tf.methods``.

    Args:
        student: model from ``build_student`` (uint8 image -> dict with
            ``"embedding"`` [B, D] and ``"logits"`` [B, K]).
        teacher: frozen model, uint8 image -> feature [B, F]; or None for
            cross-entropy alone.
        num_classes: K.
        embed_dim: D, the shared node-embedding width (default 256).
        method: a method from ``ega_tf.methods.create``, or a method's
            name (created here with its published weights, overridden by
            ``weights``); default ``"none"``.
        weights: overrides of the named method's weights (gamma, beta,
            alpha, kd_temperature and its own fields).
        teacher_logits: the teacher logits the methods read (z_t): "head",
            the online teacher head's (trained during the run);
            "classifier", the teacher's own (a supervised teacher's layer
            ``classifier``), which it must have for the ``num_classes``
            classes; "auto", the teacher's own when it has it
            (``teacher_file.logits_source``, whose sentence
            ``logits_source`` keeps).

    Example:
        student = build_student(students.create("resnet8"), 100)
        model = Distiller(student, teacher, num_classes=100, method="ega")
        model.compile(optimizer=TorchSGD(0.05),
                      teacher_head_optimizer=TorchSGD(0.01))
        model.fit(train_ds, validation_data=test_ds, epochs=240)
    """

    def __init__(self, student, teacher, num_classes, embed_dim=256,
                 method="none", weights=None, balance_weights=False,
                 balance_ratio=1.0, balance_decay=0.99,
                 teacher_logits="auto", **kwargs):
        super().__init__(**kwargs)
        from ega_tf import methods
        self.student = student
        self.teacher = teacher
        self.num_classes = int(num_classes)
        if not isinstance(method, methods.Method):
            method = methods.create(method, weights, embed_dim=embed_dim)
        elif weights:
            raise ValueError("weights apply to a method given by name; a "
                             "created method has its own (methods.create).")
        if teacher is None and (method.uses_teacher
                                or method.w.get("alpha")):
            raise ValueError(f"Distillation method {method.name!r} "
                             "needs a teacher.")
        self.method = method
        # True: the method's terms run as their own XLA-compiled function
        # inside the step (build.choose_terms_jit sets it for a run).
        self.terms_jit_compile = False
        self._compiled_terms = None
        # The method's variables (queues, banks, CRD's embeddings), tracked.
        self.method_state = method.layer
        w = method.w
        self.gamma = float(w["gamma"])
        self.beta = float(w["beta"])
        self.alpha = float(w["alpha"])
        self.kd_temperature = float(w.get("kd_temperature", 4.0))
        if teacher is not None:
            teacher.trainable = False
            width = teacher.output_shape[-1]
            self.teacher_embed = torch_dense(embed_dim, width,
                                             name="teacher_embed",
                                             dtype="float32")
            self.teacher_classifier = torch_dense(
                num_classes, embed_dim, name="teacher_classifier",
                dtype="float32")
            self.teacher_embed.build((None, width))
            self.teacher_classifier.build((None, embed_dim))
        self.own_classifier, self.logits_source = None, None
        if teacher is not None:
            from ega_tf.teachers import teacher_file
            chosen, self.logits_source = teacher_file.logits_source(
                teacher, self.num_classes, teacher_logits)
            if chosen == "classifier":
                self.own_classifier = teacher_file.classifier(teacher)
        # Diagnostics beside the terms, when the student gives its pooled
        # features (build_student's do): the share of them exactly zero
        # (dead ReLUs: a collapsed student) and the mean norm of x_s.
        outputs = getattr(student, "output", None)
        self.diagnostics = (DIAGNOSTICS if isinstance(outputs, dict) and
                            "features" in outputs else ())
        self.balanced = bool(balance_weights) and self.distilling
        self.balance_ratio = float(balance_ratio)
        self._build_monitor(balance_decay)
        self._trackers = {n: keras.metrics.Mean(name=n)
                          for n in (*self.loss_names(), *self.diagnostics,
                                    *self.monitor_names())}
        self._accuracy = {
            "top1": keras.metrics.SparseCategoricalAccuracy(name="top1")}
        if num_classes >= 5:
            self._accuracy["top5"] = (
                keras.metrics.SparseTopKCategoricalAccuracy(5, name="top5"))
        if teacher is not None:
            self._accuracy["teacher_top1"] = (
                keras.metrics.SparseCategoricalAccuracy(name="teacher_top1"))

    @property
    def distilling(self):
        return self.teacher is not None

    def loss_names(self):
        """The logged loss terms, in order."""
        names = ["loss", "ce"]
        if self.distilling:
            names.append("teacher_ce")
            if self.beta:
                names += list(self.method.terms)
            if self.alpha:
                names.append("kd")
        return names

    def train_only_names(self):
        """Logged names that have no value on held-out data: CRD's bank
        term, and the gradient measurements (no gradient is taken
        there)."""
        return ((() if self.method.evaluates else tuple(self.method.terms))
                + self.monitor_names())

    @property
    def student_variables(self):
        """What the student's optimizer trains: the student and the
        method's own layers (CRD's embeddings)."""
        return (self.student.trainable_variables
                + self.method.trainable_variables)

    # ---------------------------------------------------------------- setup
    def compile(self, optimizer, teacher_head_optimizer=None, **kwargs):
        """``optimizer`` trains the student; ``teacher_head_optimizer`` (needed
        when distilling) trains the online teacher head. Both are built on
        their variables here, so a checkpoint can be restored before the
        first step."""
        if self.distilling and teacher_head_optimizer is None:
            raise ValueError("A Distiller with a teacher needs "
                             "teacher_head_optimizer for the online head.")
        super().compile(optimizer=optimizer, **kwargs)
        self.optimizer.build(self.student_variables)
        self.teacher_head_optimizer = teacher_head_optimizer
        if teacher_head_optimizer is not None:
            teacher_head_optimizer.build(self.teacher_head_variables)

    def checkpoint_items(self):
        """Everything a checkpoint must hold to continue training exactly:
        the student, the online teacher head, the method's state (queues,
        banks) and both optimizers. The frozen teacher is not included: it
        is its own file."""
        items = {"student": self.student, "optimizer": self.optimizer}
        if self.method.variables:
            items["method"] = self.method.layer
        if self.gradient_monitor is not None:
            items["gradient_monitor"] = self.gradient_monitor
        if self.distilling:
            items.update(teacher_embed=self.teacher_embed,
                         teacher_classifier=self.teacher_classifier,
                         teacher_head_optimizer=self.teacher_head_optimizer)
        return items

    @property
    def teacher_head_variables(self):
        if self.teacher is None:
            return []
        return (self.teacher_embed.trainable_variables
                + self.teacher_classifier.trainable_variables)

    @property
    def metrics(self):
        return list(self._trackers.values()) + list(self._accuracy.values())

    def call(self, images, training=False):
        if isinstance(images, dict):
            images = images["student"]
        return self.student(images, training=training)["logits"]

    # ----------------------------------------------------------- the steps
    # Under a tf.distribute strategy each replica runs these steps on its
    # slice of the global batch. Every logged term is a global-batch value,
    # and each replica's objective is its share of the single-device one:
    # Keras sums the replicas' gradients, so the update equals the
    # single-device update (docs/architecture.md, "Several devices").

    @staticmethod
    def _masks(y, weight):
        """(labels with -1 -> 0, labeled mask, valid mask). ``weight`` is 0
        for padding rows (evaluation), which take part in nothing."""
        y = ops.reshape(ops.cast(y, "int32"), (-1,))
        valid = (ops.ones_like(y, "float32") if weight is None else
                 ops.reshape(ops.cast(weight, "float32"), (-1,)))
        labeled = ops.cast(y >= 0, "float32") * valid
        return ops.maximum(y, 0), labeled, valid

    @staticmethod
    def _ce(labels, logits):
        return keras.losses.sparse_categorical_crossentropy(
            labels, ops.cast(logits, "float32"), from_logits=True)

    def _teacher_forward(self, x):
        """Frozen teacher feature -> the online head's (x_t, z_t) and the
        logits the methods read (the head's z_t, or the teacher's own
        classifier's). The features come from the teacher, or
        (``x["teacher_features"]``, the clean view's, computed once) from
        the input."""
        if "teacher_features" in x:
            f_t = x["teacher_features"]
        else:
            f_t = self.teacher(x["teacher"], training=False)
        f_t = ops.stop_gradient(ops.cast(f_t, "float32"))
        x_t = self.teacher_embed(f_t)
        z_t = self.teacher_classifier(x_t)
        own = (z_t if self.own_classifier is None else ops.cast(
            self.own_classifier(f_t), "float32"))
        return x_t, z_t, own

    def _compute_terms(self, x, y, labels, labeled, valid, training):
        """One batch's terms, unweighted. Returns (global terms, shares,
        the student's outputs, teacher logits, the method's batch and
        state); ``shares`` holds this replica's share of each part of the
        loss (``ce``, ``teacher_ce``, ``method`` with its ``terms``,
        ``kd``) and the global values that the logged total sums
        (``values``)."""
        from ega_tf.methods import Batch
        out = self.student(x["student"], training=training)
        s_logits = out["logits"]
        terms, share, values = {}, {}, {}
        terms["ce"], share["ce"] = replicas.mean(
            self._ce(labels, s_logits), labeled)
        if self.diagnostics:
            features = ops.cast(out["features"], "float32")
            terms["zero_features"], _ = replicas.mean(ops.mean(ops.cast(
                ops.equal(features, 0.0), "float32"), -1), valid)
            # Scaled by the row's largest entry first, so a norm past the
            # float32 range's square root does not overflow.
            emb = ops.cast(out["embedding"], "float32")
            big = ops.maximum(ops.max(ops.abs(emb), -1, keepdims=True),
                              1e-30)
            terms["xs_norm"], _ = replicas.mean(ops.squeeze(big, -1) * ops.sqrt(
                ops.sum(ops.square(emb / big), -1)), valid)
        t_logits, batch, state = None, None, None
        if self.distilling:
            x_t, t_logits, read_logits = self._teacher_forward(x)
            terms["teacher_ce"], share["teacher_ce"] = replicas.mean(
                self._ce(labels, t_logits), labeled)
            batch = Batch(
                x_t=ops.stop_gradient(x_t), x_s=out["embedding"],
                t_logits=ops.stop_gradient(read_logits), s_logits=s_logits,
                labels=labels, labeled=labeled, valid=valid,
                raw_labels=ops.where(valid > 0, ops.reshape(
                    ops.cast(y, "int32"), (-1,)), -1),
                index=x.get("index"), training=training)
            result, kd = self._method_terms(batch)
            if self.beta:
                terms.update(result.terms)
                values["method"], share["method"] = result.value, result.share
                share["terms"] = result.shares
                if result.shares is None and len(result.terms) == 1:
                    share["terms"] = {next(iter(result.terms)): result.share}
                state = result.state
            if self.alpha:
                values["kd"], share["kd"] = kd
                terms["kd"] = values["kd"]
        share["values"] = values
        return terms, share, out, t_logits, batch, state

    def _terms(self, batch):
        """(the method's Result when beta, else None; (KD value, share)
        when alpha, else None)."""
        result = self.method.compute(batch) if self.beta else None
        kd = None
        if self.alpha:
            t_kd, s_kd = maths.maybe_standardize(
                batch.t_logits, batch.s_logits,
                self.method.w.get(STANDARDIZE, False))
            kd = replicas.mean(
                maths.kd_per_example(t_kd, s_kd, self.kd_temperature),
                batch.valid)
        return result, kd

    def _method_terms(self, batch):
        """``_terms``; with ``terms_jit_compile``, one XLA-compiled
        function (made once), the Batch and Result passed through it as
        dicts of their fields. The tape differentiates through it; the
        method's ``update`` (queues, banks) stays outside."""
        if not self.terms_jit_compile:
            return self._terms(batch)
        from ega_tf.methods.base import Result
        if self._compiled_terms is None:
            self._compiled_terms = tf.function(
                self._flat_terms, jit_compile=True, autograph=False)
        fields = {f.name: getattr(batch, f.name)
                  for f in dataclasses.fields(batch) if f.name != "training"}
        result, kd = self._compiled_terms(fields, batch.training)
        return (None if result is None else Result(**result)), kd

    def _flat_terms(self, fields, training):
        """``_terms`` of the Batch of ``fields``, its Result as a dict."""
        from ega_tf.methods import Batch
        result, kd = self._terms(Batch(**fields, training=training))
        return (None if result is None else {
            f.name: getattr(result, f.name)
            for f in dataclasses.fields(result)}), kd

    def _combine(self, terms, share, beta, alpha):
        """The logged total (in ``terms["loss"]``) and this replica's
        share of the student's objective, gamma * CE + beta * method +
        alpha * KD.

        The logged total is summed in float64 and rounded once: Grappler's
        arithmetic optimiser may regroup a float32 sum of these terms
        differently in two traces of the same step (seen: 1 ulp between
        two identical runs in one process), the float64 sum rounds the
        same whatever the grouping."""
        total = self.gamma * _f64(terms["ce"])
        student = self.gamma * share["ce"]
        for key, weight in (("method", beta), ("kd", alpha)):
            if key in share:
                if not isinstance(weight, float):  # balanced: a tensor
                    weight = ops.stop_gradient(weight)
                total += (weight if isinstance(weight, float) else
                          _f64(weight)) * _f64(share["values"][key])
                student += weight * share[key]
        terms["loss"] = ops.cast(total, "float32")
        return student

    def _update_metrics(self, terms, labels, labeled, s_logits, t_logits):
        # Every replica adds the same global value to the trackers; their
        # variables sum over replicas, total and count alike, so the means
        # are unchanged. Accuracies add each replica's own examples.
        for name, tracker in self._trackers.items():
            if name in terms:  # CRD's term only in training
                tracker.update_state(terms[name])
        for name, metric in self._accuracy.items():
            logits = t_logits if name == "teacher_top1" else s_logits
            metric.update_state(labels, logits, sample_weight=labeled)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
        labels, labeled, valid = self._masks(y, weight)
        student_vars = self.student_variables
        measured = {}
        with tf.GradientTape(persistent=self.distilling) as tape:
            terms, share, out, t_logits, batch, state = (
                self._compute_terms(x, y, labels, labeled, valid, True))
            beta, alpha = self.beta, self.alpha
            if self.gradient_monitor is not None:
                with tape.stop_recording():
                    beta, alpha, measured = self._measure(tape, out, share)
                terms.update(measured)
            scaled = self.optimizer.scale_loss(
                self._combine(terms, share, beta, alpha))
        # The student's backward pass runs after the measurement's: run
        # side by side, the two backward passes over the same forward
        # tensors made the student's gradient differ between identical
        # steps (seen with a method whose value is a per-example mean).
        with tf.control_dependencies(list(measured.values())):
            grads = tape.gradient(scaled, student_vars)
        self.optimizer.apply_gradients(zip(grads, student_vars))
        if self.distilling:
            head_vars = self.teacher_head_variables
            grads = tape.gradient(share["teacher_ce"], head_vars)
            self.teacher_head_optimizer.apply_gradients(zip(grads, head_vars))
            del tape
            if self.beta:
                self.method.update(batch, state)
        return self._update_metrics(terms, labels, labeled, out["logits"],
                                    t_logits)

    def test_step(self, data):
        x, y, weight = keras.utils.unpack_x_y_sample_weight(data)
        if not isinstance(x, dict):
            x = {"student": x, "teacher": x}
        labels, labeled, valid = self._masks(y, weight)
        terms, share, out, t_logits, _, _ = self._compute_terms(
            x, y, labels, labeled, valid, False)
        beta, alpha = self.beta, self.alpha
        if self.balanced:
            slow, _ = tf.unstack(self.gradient_monitor.smoothed())
            beta, alpha = self._effective_weights(slow)
        self._combine(terms, share, beta, alpha)
        return self._update_metrics(terms, labels, labeled, out["logits"],
                                    t_logits)
