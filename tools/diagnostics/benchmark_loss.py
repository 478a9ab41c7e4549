#!/usr/bin/env python
"""The loss column of ``benchmarks/train_step.py --compare=torch``: is a
gap between the two frameworks' losses the starting weights, or the step?

    python tools/diagnostics/benchmark_loss.py same_start
    python tools/diagnostics/benchmark_loss.py seeds --seeds=0,1,2,3,4,5

The benchmark's setting (resnet8x4 student, a random resnet32x4 teacher in
inference mode with its features standardised on the batch, batch 64 at 32
px, 100 classes, 10 % of the labels kept, EGA; one batch repeated), 64
steps (the benchmark's 1 + 3 warm-up + 60 timed). The teacher's features
are computed once (the batch repeats, so they are the same every step).

* ``same_start``: PyTorch's run from the benchmark's PyTorch start (seed
  0, drawn in the benchmark's order), and ega_tf's step from the same
  start: PyTorch's initial weights copied into it, PyTorch's teacher
  features given to it (tools/reference/torch_step.py is the PyTorch step);
* ``seeds``: each framework from its own start for each seed (seed 0 is
  the benchmark's start in both): the loss after 64 steps, and its mean
  and spread over the seeds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

STEPS, SHOWN = 64, (0, 1, 4, 8, 16, 32, 48, 63)


def setting():
    import train_step
    args = argparse.Namespace(
        batch_size=64, image_size=32, student="resnet8x4",
        teacher="resnet32x4", distill="ega", precision="float32",
        teacher_precision="float32", teacher_fold_bn="true", jit="false")
    return args, *train_step.synthetic(args)


def torch_start(seed, images):
    """(student, head, standardised teacher features) drawn as the
    benchmark's PyTorch side draws them (its order of random draws)."""
    import torch

    from ega_tf.core.constants import CLIP_MEAN, CLIP_STD
    from tools.reference import torch_cifar_resnet, torch_step
    torch.manual_seed(seed)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = (torch.tensor(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    teacher = torch_cifar_resnet.create("resnet32x4").eval()
    with torch.no_grad():
        feats = teacher(x)
    feats = (feats - feats.mean(0)) / (feats.std(0) + 1e-3)
    # Then the student's network, its two layers and the head's two, in
    # that order, as the benchmark draws them.
    student = torch_step.Student("resnet8x4", 100, 256, CLIP_MEAN, CLIP_STD)
    head = torch_step.TeacherHead(feats.shape[1], 100, 256)
    return student, head, feats.numpy()


def run_torch(student, head, feats, images, labels):
    import torch

    from tools.reference import torch_step
    step = torch_step.Step("ega", student, head)
    pixels = torch.tensor(images, dtype=torch.float32).permute(0, 3, 1, 2)
    y, f = torch.tensor(labels), torch.tensor(feats)
    return [step(pixels, y, f)["loss"] for _ in range(STEPS)]


def tf_distiller(student, width):
    """ega_tf's Distiller with a teacher that passes its features on (the
    batch carries them)."""
    import keras

    from ega_tf.nn.optimizers import TorchSGD
    from ega_tf.training.distiller import Distiller
    teacher = keras.Sequential([keras.Input((width,)),
                                keras.layers.Identity()], name="teacher")
    model = Distiller(student, teacher, 100, 256, method="ega")
    model.compile(TorchSGD(0.05), teacher_head_optimizer=TorchSGD(0.01))
    return model


def tf_start(seed, args, images):
    """(Distiller, teacher features) drawn as the benchmark's ega_tf side
    draws them (``train_step.tf_model`` with ``seed``: the teacher, the
    student, then the head)."""
    import keras
    import numpy as np
    import train_step

    from ega_tf import students
    from ega_tf.students.head import build_student
    keras.utils.set_random_seed(seed)
    teacher = train_step.tf_teacher(args, images)
    student = build_student(students.create("resnet8x4", input_shape=(
        32, 32, 3)), 100, 256)
    model = tf_distiller(student, teacher.output_shape[-1])
    return model, np.asarray(teacher(images, training=False))


def run_tf(model, feats, images, labels):
    import numpy as np
    import tensorflow as tf

    from tests.test_case import ReplicaStepper
    batch = ({"student": images, "teacher_features": feats.astype(
        np.float32)}, labels)
    stepper = ReplicaStepper(model, tf.distribute.get_strategy(),
                             [batch] * STEPS)
    return [stepper()["loss"] for _ in range(STEPS)]


def show(label, curve):
    print(f"| {label} | " + " | ".join(f"{curve[i]:.2f}" for i in SHOWN)
          + " |", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=("same_start", "seeds"))
    ap.add_argument("--seeds", default="0,1,2,3,4,5")
    a = ap.parse_args()
    from ega_tf.core import runtime
    runtime.import_tensorflow()
    import numpy as np
    args, images, labels = setting()
    print("| run | " + " | ".join(f"step {i}" for i in SHOWN) + " |")
    print("| --- |" + " ---: |" * len(SHOWN))
    if a.mode == "same_start":
        from ega_tf import students
        from ega_tf.students.head import build_student
        from tests.test_trajectory import pairs, to_keras
        student, head, feats = torch_start(0, images)
        model = tf_distiller(build_student(students.create(
            "resnet8x4", input_shape=(32, 32, 3)), 100, 256),
            feats.shape[1])
        for _, variable, tensor, kind in pairs(model, student, head, None):
            variable.assign(to_keras(tensor, kind).astype(np.float32))
        show("ega_tf, from PyTorch's start",
             run_tf(model, feats, images, labels))
        show("PyTorch", run_torch(student, head, feats, images, labels))
        return
    last = {"PyTorch": [], "ega_tf": []}
    for seed in (int(s) for s in a.seeds.split(",")):
        curve = run_torch(*torch_start(seed, images), images, labels)
        show(f"PyTorch, seed {seed}", curve)
        last["PyTorch"].append(curve[-1])
        model, feats = tf_start(seed, args, images)
        curve = run_tf(model, feats, images, labels)
        show(f"ega_tf, seed {seed}", curve)
        last["ega_tf"].append(curve[-1])
    for name, values in last.items():
        print(f"{name}: loss at step 63 {statistics.mean(values):.2f} ± "
              f"{statistics.stdev(values):.2f} (mean ± sd over "
              f"{len(values)} seeds), range {min(values):.2f} to "
              f"{max(values):.2f}")


if __name__ == "__main__":
    main()
