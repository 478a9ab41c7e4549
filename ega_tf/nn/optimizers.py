"""SGD with PyTorch's semantics, and the published step schedule.

``torch.optim.SGD(lr, momentum, weight_decay)`` and Keras's ``SGD`` differ in
two ways that change results:

* weight decay: PyTorch adds ``wd * w`` to the gradient of *every* parameter
  before momentum (L2 coupled into the update); Keras's ``weight_decay``
  argument shrinks the weights outside the momentum (decoupled, AdamW-style);
* momentum: PyTorch keeps the buffer in gradient units
  (``buf = m * buf + g; w -= lr * buf``) while Keras keeps it in step units
  (``v = m * v - lr * g; w += v``); the two agree at a constant learning rate
  but not across a learning-rate drop, where PyTorch's step shrinks at once.

``TorchSGD`` implements PyTorch's rule exactly (no dampening, no Nesterov).
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="ega_tf")
class TorchSGD(keras.optimizers.Optimizer):
    """``torch.optim.SGD`` with momentum and coupled weight decay.

    Args:
        learning_rate: float or a ``LearningRateSchedule`` of the step count.
        momentum: momentum factor (PyTorch's, buffer in gradient units).
        weight_decay: L2 factor added to every gradient as ``wd * w``.
    """

    def __init__(self, learning_rate=0.05, momentum=0.9, weight_decay=5e-4,
                 name="torch_sgd", **kwargs):
        kwargs.pop("weight_decay", None)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if momentum < 0:
            raise ValueError(f"momentum must be >= 0, got {momentum}.")
        self.momentum = float(momentum)
        self.l2 = float(weight_decay)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.buffers = (self.add_optimizer_variables(variables, "buffer")
                        if self.momentum else [])

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        g = ops.cast(gradient, variable.dtype)
        if self.l2:
            g = g + ops.cast(self.l2, variable.dtype) * variable
        if self.momentum:
            buf = self.buffers[self._get_variable_index(variable)]
            m = ops.cast(self.momentum, variable.dtype)
            self.assign(buf, m * buf + g)
            g = buf
        self.assign_sub(variable, lr * g)

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, weight_decay=self.l2)
        return config


def step_schedule(base_lr, steps_per_epoch, epochs,
                  decay_fractions=(150 / 240, 180 / 240, 210 / 240),
                  factor=0.1):
    """RepDistiller's step decay with the milestones as fractions of the run.

    The published run multiplies the rate by ``factor`` after epochs 150, 180
    and 210 of 240; a run of ``epochs`` epochs drops after
    ``round(f * epochs)`` epochs for each fraction f (Python's round, half to
    even: 20 epochs drop after 12, 15 and 18), so a short run keeps the same
    shape. Step ``s`` (0-based) of epoch ``e`` = s // steps_per_epoch
    uses the rate of epoch e, as PyTorch's per-epoch adjustment does.
    """
    milestones = sorted({max(1, round(f * epochs)) for f in decay_fractions
                         if round(f * epochs) < epochs})
    if not milestones:
        return float(base_lr)
    boundaries = [m * steps_per_epoch - 1 for m in milestones]
    values = [base_lr * factor**i for i in range(len(milestones) + 1)]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries,
                                                             values)
