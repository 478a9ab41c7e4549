"""SimCLR: contrastive pretraining of a backbone without labels.

Two augmented views of each image go through the backbone and a projection
MLP; the NT-Xent loss pulls the two views of an image together and pushes
them from the other 2B - 2 views of the batch (Chen et al., ICML 2020). After
pretraining, the backbone (not the projection head) is the teacher.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf
from keras import layers, ops

from ega_tf.ssl.augment import simclr_augment


def nt_xent(z1, z2, temperature=0.5):
    """Normalised-temperature cross-entropy over 2B views, float32, mean.

    Row i of ``z1`` and row i of ``z2`` are the positive pair; every other
    view of the batch is a negative.
    """
    z = ops.concatenate([z1, z2], axis=0)
    z = ops.cast(z, "float32")
    z = z / ops.maximum(ops.norm(z, axis=1, keepdims=True), 1e-12)
    n = ops.shape(z)[0]
    b = n // 2
    sim = ops.matmul(z, ops.transpose(z)) / temperature
    sim = sim - 1e9 * ops.eye(n, dtype="float32")  # a view is not its own pair
    positives = ops.concatenate([ops.arange(b, n), ops.arange(0, b)], axis=0)
    return ops.mean(keras.losses.sparse_categorical_crossentropy(
        positives, sim, from_logits=True))


class SimCLR(keras.Model):
    """A backbone trained by NT-Xent on two augmented views.

    Args:
        backbone: normalised float image -> pooled feature.
        preprocess: uint8 image -> the backbone's input (kept with the
            teacher so it can be exported with it).
        projection_dim / hidden_dim: the projection MLP.
        temperature: NT-Xent temperature.
        augment: augmentation model on float [0, 255] images.
    """

    def __init__(self, backbone, preprocess, projection_dim=128,
                 hidden_dim=512, temperature=0.5, augment=None, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.preprocess = preprocess
        self.augment = augment or simclr_augment()
        self.temperature = float(temperature)
        self.projector = keras.Sequential([
            layers.Dense(hidden_dim, use_bias=False),
            layers.BatchNormalization(epsilon=1e-5, momentum=0.9),
            layers.ReLU(),
            layers.Dense(projection_dim),
        ], name="projector")
        self.loss_tracker = keras.metrics.Mean(name="loss")

    @property
    def metrics(self):
        return [self.loss_tracker]

    def build(self, input_shape):
        self.projector.build(self.backbone.output_shape)
        super().build(input_shape)

    def call(self, images, training=False):
        return self.backbone(self.preprocess(images), training=training)

    def _project(self, images):
        view = self.augment(ops.cast(images, "float32"), training=True)
        return self.projector(self(view, training=True), training=True)

    def train_step(self, data):
        images = data[0] if isinstance(data, tuple) else data
        with tf.GradientTape() as tape:
            loss = nt_xent(self._project(images), self._project(images),
                           self.temperature)
            scaled = self.optimizer.scale_loss(loss)
        variables = (self.backbone.trainable_variables
                     + self.projector.trainable_variables)
        self.optimizer.apply_gradients(
            zip(tape.gradient(scaled, variables), variables))
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result()}


def embed(model, images, batch_size=256):
    """Features of uint8 ``images`` from a frozen model, as a numpy array."""
    return np.concatenate([
        np.asarray(model(images[i:i + batch_size], training=False))
        for i in range(0, len(images), batch_size)])


def knn_accuracy(train_emb, train_labels, test_emb, test_labels, k=20,
                 temperature=0.07):
    """Weighted k-NN top-1 on cosine similarity (Wu et al. 2018).

    Each of the k nearest training embeddings votes for its label with
    weight exp(cos / temperature). Returns the test accuracy in [0, 1].
    """
    def unit(x):
        x = np.asarray(x, np.float64)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    train_labels = np.asarray(train_labels)
    sims = unit(test_emb) @ unit(train_emb).T
    k = min(k, sims.shape[1])
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    n_cls = int(train_labels.max()) + 1
    votes = np.zeros((len(sims), n_cls))
    weights = np.exp(np.take_along_axis(sims, nearest, 1) / temperature)
    np.add.at(votes, (np.arange(len(sims))[:, None],
                      train_labels[nearest]), weights)
    return float((votes.argmax(1) == np.asarray(test_labels)).mean())
