#!/usr/bin/env python
"""How far ega_tf's training step and PyTorch's part, trained freely and
one step at a time: the measurements behind tests/test_trajectory.py's
bounds (docs/notes.md, "ega_tf's step against PyTorch's").

    python tools/diagnostics/trajectory.py [--methods=ega,kd,crd]

For each method, on the test's data and from PyTorch's initial weights:

* free: ega_tf (float32), PyTorch in float32 and PyTorch in float64 each
  train the 50 steps on their own; per step, the largest term difference
  (of the term, or absolutely below 1) and the largest difference of a
  weight or statistic, relative to the largest value of its part (the
  student, the teacher head, CRD's embeddings and banks), of ega_tf and of
  PyTorch float32 against float64, and of ega_tf against PyTorch float32;
* lockstep: ega_tf and PyTorch float32 take each step from float64's
  state before it, rounded to float32 (what the test asserts).
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def free_keras(model, data, initial):
    """ega_tf trained freely from ``initial``: [(None, logs, state
    after)]."""
    import tensorflow as tf

    from tests import test_trajectory as T
    from tests.test_case import ReplicaStepper
    state = T.KerasState(model, T.pairs(model,
                                        *T.torch_modules(model.method.name)))
    state.load(initial)
    stepper = ReplicaStepper(model, tf.distribute.get_strategy(), data)
    return [(None, stepper(), state.read()) for _ in data]


def free_errors(run, reference):
    """Per step: (largest term difference, largest state difference
    relative to its part's scale), momentum buffers left out."""
    import numpy as np

    from tests import test_trajectory as T
    out = []
    for (_, terms, after), (_, ref_terms, ref_after) in zip(run, reference):
        kept = {k: v for k, v in ref_after.items()
                if not k.endswith("/momentum")}
        scale = {}
        for k, v in kept.items():
            part = k.split("/")[0]
            scale[part] = max(scale.get(part, 0.0), float(np.abs(v).max()))
        state = max(float(np.abs(after[k] - v).max())
                    / scale[k.split("/")[0]] for k, v in kept.items())
        out.append((max(T.term_errors(terms, ref_terms).values()), state))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="ega,kd,crd")
    args = ap.parse_args()
    from ega_tf.core import runtime
    runtime.import_tensorflow()
    import torch

    from tests import test_trajectory as T
    for method in args.methods.split(","):
        model, data, negatives, f64 = T.reference_run(method)
        f32 = T.free_run(T.TorchRun(method, model, torch.float32,
                                    negatives), data)
        ours = free_keras(model, data, T.rounded(f64[0][0]))
        rows = {"ega_tf - PyTorch float64": free_errors(ours, f64),
                "PyTorch float32 - float64": free_errors(f32, f64),
                "ega_tf - PyTorch float32": free_errors(ours, f32)}
        print(f"\n{method}, trained freely: terms / weights and statistics")
        shown = (0, 1, 2, 5, 10, 20, 30, 40, len(data) - 1)
        print("| step | " + " | ".join(rows) + " |")
        print("| ---: |" + " --- |" * len(rows))
        for s in shown:
            print(f"| {s} | " + " | ".join(
                f"{r[s][0]:.1e} / {r[s][1]:.1e}" for r in rows.values())
                + " |")
        print(f"loss at the last step: ega_tf {ours[-1][1]['loss']:.4f}, "
              f"PyTorch float32 {f32[-1][1]['loss']:.4f}, float64 "
              f"{f64[-1][1]['loss']:.4f}")
        model, data, negatives, f64 = T.reference_run(method)
        print(f"{method}, lockstep, ega_tf: " + T.summary(T.step_errors(
            T.lockstep_keras(model, data, f64), f64)))
        print(f"{method}, lockstep, PyTorch float32: " + T.summary(
            T.step_errors(T.lockstep_torch(T.TorchRun(
                method, model, torch.float32, negatives), data, f64), f64)))


if __name__ == "__main__":
    main()
