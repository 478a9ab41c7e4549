"""TorchSGD follows torch.optim.SGD step for step, across a rate drop."""

import keras
import numpy as np
import tensorflow as tf

from ega_tf.nn.optimizers import TorchSGD, step_schedule
from tests.test_case import TestCase


def numpy_torch_sgd(w, grads, lrs, momentum, wd):
    """PyTorch's SGD rule written out in float64."""
    w = w.astype(np.float64).copy()
    buf = None
    for g, lr in zip(grads, lrs):
        d = g + wd * w
        buf = d if buf is None else momentum * buf + d
        w = w - lr * buf
    return w


def _run_keras(w0, grads, schedule, momentum, wd):
    var = keras.Variable(w0)
    opt = TorchSGD(schedule, momentum=momentum, weight_decay=wd)
    for g in grads:
        opt.apply_gradients([(tf.constant(g), var)])
    return var.numpy()


class TorchSGDTest(TestCase):

    def test_matches_pytorch_rule_with_lr_drop(self):
        rng = np.random.default_rng(0)
        w0 = rng.normal(size=(4, 3)).astype(np.float32)
        grads = [rng.normal(size=(4, 3)).astype(np.float32)
                 for _ in range(8)]
        # Rate 0.1 for steps 0..3, 0.01 from step 4.
        sched = keras.optimizers.schedules.PiecewiseConstantDecay(
            [3], [0.1, 0.01])
        got = _run_keras(w0, grads, sched, 0.9, 5e-4)
        want = numpy_torch_sgd(w0, grads, [0.1] * 4 + [0.01] * 4, 0.9, 5e-4)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # Keras's own SGD keeps momentum in step units and decays
        # decoupled: it lands elsewhere, which is why TorchSGD exists.
        var = keras.Variable(w0)
        ksgd = keras.optimizers.SGD(sched, momentum=0.9, weight_decay=5e-4)
        for g in grads:
            ksgd.apply_gradients([(tf.constant(g), var)])
        self.assertGreater(np.abs(var.numpy() - want).max(), 1e-3)

    def test_matches_torch_itself(self):
        import torch
        rng = np.random.default_rng(1)
        w0 = rng.normal(size=(5,)).astype(np.float32)
        grads = [rng.normal(size=(5,)).astype(np.float32) for _ in range(6)]
        p = torch.nn.Parameter(torch.tensor(w0))
        opt = torch.optim.SGD([p], lr=0.05, momentum=0.9, weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, [3], 0.1)
        for g in grads:
            p.grad = torch.tensor(g)
            opt.step()
            sched.step()
        ks = keras.optimizers.schedules.PiecewiseConstantDecay(
            [2], [0.05, 0.005])
        np.testing.assert_allclose(_run_keras(w0, grads, ks, 0.9, 5e-4),
                                   p.detach().numpy(), rtol=1e-5, atol=1e-7)

    def test_step_schedule_milestones(self):
        # 240 epochs of 10 steps: drops after epochs 150, 180, 210.
        s = step_schedule(0.05, 10, 240)
        for step, lr in ((0, 0.05), (1499, 0.05), (1500, 0.005),
                         (1800, 0.0005), (2100, 0.00005)):
            self.assertAllClose(float(s(step)), lr, rtol=1e-6)
        # A 24-epoch run keeps the shape: drops after epochs 15, 18, 21.
        s = step_schedule(0.05, 10, 24)
        for step, lr in ((149, 0.05), (150, 0.005), (210, 0.00005)):
            self.assertAllClose(float(s(step)), lr, rtol=1e-6)

    def test_config_roundtrip(self):
        opt = TorchSGD(0.1, momentum=0.8, weight_decay=1e-3)
        again = TorchSGD.from_config(opt.get_config())
        self.assertEqual((again.momentum, again.l2), (0.8, 1e-3))
