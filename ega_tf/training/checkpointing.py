"""A run's checkpoints: its model's state, where it stands (completed
epochs, steps into the next) and the running metrics, written atomically
and read back with a fall-back to an older one."""

from __future__ import annotations

from absl import logging

from ega_tf.core.errors import first_line


class Checkpointer:
    """The distiller's ``checkpoint_items()``, the progress (completed
    epochs, steps into the next) and the running metrics, in TF checkpoints.
    TF writes each checkpoint under a temporary name and then records it, so
    a crash mid-save leaves the previous one current; ``restore`` falls back
    to an older checkpoint if the newest cannot be read."""

    def __init__(self, model, directory, read_from=None, keep=3):
        import tensorflow as tf
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False)
        metrics = {f"{m.name}_{i}": v.value for m in model.metrics
                   for i, v in enumerate(m.variables)}
        self.ckpt = tf.train.Checkpoint(epoch=self.epoch, step=self.step,
                                        metrics=metrics,
                                        **model.checkpoint_items())
        self.state = [(f"{item}/{v.path}", v) for item, obj in
                      model.checkpoint_items().items() for v in obj.variables]
        self.manager = tf.train.CheckpointManager(self.ckpt, directory, keep)
        # Other workers restore the chief's checkpoints.
        self.read_from = read_from or directory

    def restore(self):
        """Restores the newest readable checkpoint; returns (epoch, step)."""
        import tensorflow as tf
        state = tf.train.get_checkpoint_state(self.read_from)
        paths = list(state.all_model_checkpoint_paths) if state else []
        for i, path in enumerate(reversed(paths)):
            try:
                self.ckpt.restore(path).assert_existing_objects_matched()
            except Exception as e:  # truncated, corrupt or missing files
                logging.warning("Checkpoint %s cannot be read (%s); %s", path,
                                first_line(e, 200),
                                "trying the one before it."
                                if i + 1 < len(paths) else
                                "no other checkpoint; starting over.")
                continue
            # .numpy(): under a multi-worker strategy these are mirrored.
            epoch, step = int(self.epoch.numpy()), int(self.step.numpy())
            logging.info("Resumed from %s (epoch %d, step %d).", path, epoch,
                         step)
            return epoch, step
        return 0, 0

    def non_finite(self):
        """The name of the first checkpointed float variable holding a NaN
        or an infinity, or None."""
        import numpy as np
        for name, variable in self.state:
            value = np.asarray(variable.numpy())
            if np.issubdtype(value.dtype, np.floating) and not np.all(
                    np.isfinite(value)):
                return name
        return None

    def save(self, epoch, step, number):
        self.epoch.assign(epoch)
        self.step.assign(step)
        self.manager.save(checkpoint_number=number)
