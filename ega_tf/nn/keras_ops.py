"""``keras.ops``, imported when it is first used.

The methods' files and ``ega_tf.methods.maths`` write their maths with
``from ega_tf.nn.keras_ops import ops`` at module level, and the command
lines' ``--help`` imports those files for the methods' declarations
without starting TensorFlow (which importing Keras does). The first
``ops.NAME`` imports Keras and keeps the function; later ones are plain
attribute lookups.
"""


class _KerasOps:
    def __getattr__(self, name):  # only for names not yet looked up
        from keras import ops as keras_ops
        value = getattr(keras_ops, name)
        setattr(self, name, value)
        return value

    def __repr__(self):
        return "<keras.ops, imported on first use>"


ops = _KerasOps()
