#!/usr/bin/env python
"""What one graph over the global batch costs: the EGA training step on one
and on two replicas (two logical CPU devices of this machine), and the share
of the all-gather that builds the global graph.

For each replica count it times the step on synthetic uint8 images (after
warm-up; tracing excluded), then the same step with the graph built from each
replica's own rows (no all-gather: the wrong graph, timed only to isolate the
gather), and the all-gather of the two embeddings alone.

    python benchmarks/distributed_step.py                 # resnet8x4, 32 px
    python benchmarks/distributed_step.py --student=resnet8 --steps=20
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--teacher", default="resnet8", help="a student-zoo "
                    "network used as a frozen random teacher")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--image_size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=15)
    args = ap.parse_args()

    from ega_tf.core import runtime
    from ega_tf.training import distribute
    tf = runtime.import_tensorflow()
    distribute.split_cpu(2)
    import keras
    import numpy as np

    from ega_tf import students, teachers
    from ega_tf.nn import layers, replicas
    from ega_tf.nn.optimizers import TorchSGD
    from ega_tf.students.head import build_student
    from ega_tf.training import cell
    from ega_tf.training.distiller import Distiller

    size, G = args.image_size, args.batch_size
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (G, size, size, 3), np.uint8)
    labels = rng.integers(0, 100, G)

    def model_for(strategy):
        with strategy.scope():
            keras.utils.set_random_seed(0)
            net = students.create(args.teacher, input_shape=(size, size, 3))
            net.name = "backbone"
            teacher = teachers.assemble(net, teachers.TeacherPreprocess())
            student = build_student(students.create(
                args.student, input_shape=(size, size, 3)), 100, 256)
            layers.synchronize_batchnorm(student, True)
            model = Distiller(student, teacher, 100, 256, method="ega")
            model.compile(TorchSGD(0.05), teacher_head_optimizer=TorchSGD(
                0.01))
        return model

    def data(strategy):
        per = G // strategy.num_replicas_in_sync
        x = {"student": images[:per], "teacher": images[:per]}
        return iter(strategy.distribute_datasets_from_function(
            lambda ctx: tf.data.Dataset.from_tensors(
                (x, labels[:per])).repeat()))

    def time_step(strategy, gather=True):
        model = model_for(strategy)
        step = cell.step_function(model, strategy, model.train_step,
                                  False)
        it = data(strategy)
        # Without the gather: the step traced with each replica's own rows
        # as the graph (wrong arithmetic, only to time the collective).
        with (contextlib.nullcontext() if gather else mock.patch.object(
                replicas, "gather", lambda x: x)):
            for _ in range(3):
                step(it)
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            logs = step(it)
            float(logs["loss"])
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def time_gather(strategy):
        per = G // strategy.num_replicas_in_sync
        emb = tf.random.normal((per, 256))

        @tf.function
        def gather():
            def fn():
                ctx = tf.distribute.get_replica_context()
                return ctx.all_gather(emb, 0), ctx.all_gather(emb, 0)
            return strategy.run(fn)
        gather()
        start = time.perf_counter()
        for _ in range(50):
            gather()
        return (time.perf_counter() - start) / 50

    one = tf.distribute.get_strategy()
    two = distribute.mirrored(["/cpu:0", "/cpu:1"])
    rows = [("1 replica", time_step(one), None, None),
            ("2 replicas", time_step(two), time_step(two, gather=False),
             time_gather(two))]
    print(f"EGA step, student {args.student}, frozen random teacher "
          f"{args.teacher}, {size} px, global batch {G}, on "
          f"{os.cpu_count()} CPU cores (median of {args.steps} steps)")
    print("| replicas | ms/step | img/s | without the gather (ms) | "
          "all-gather of x_t and x_s (ms) | gather share |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, t, local, gather in rows:
        extra = (f"{1000 * local:.0f} | {1000 * gather:.2f} | "
                 f"{gather / t:.1%}" if local else "- | - | -")
        print(f"| {name} | {1000 * t:.0f} | {G / t:.0f} | {extra} |")


if __name__ == "__main__":
    main()
