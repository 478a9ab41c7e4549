"""The Keras layer that holds a method's variables and layers, so that the
model checkpoints them (``method/<name>``) and its optimizer trains the
trainable ones. Kept apart from ``base`` because it imports Keras."""

from __future__ import annotations

import keras


class MethodState(keras.layers.Layer):
    """Variables and sub-layers of one method, set as attributes by
    ``Method.add_variable`` / ``Method.add_layer``; it computes nothing."""

    def call(self, inputs):
        return inputs
