#!/usr/bin/env python
"""What two start-up choices of the training loop save, each measured in a
fresh process (so no trace or cache is shared):

* tracing the training step with or without autograph: the first call of
  ``tf.function(Distiller.train_step, autograph=...)``, which traces it,
  on one digits batch (resnet8 student, EGA, a resnet8 teacher of random
  weights; the loop traces without autograph);
* clearing Keras's state after a cell of a grid with or without a forced
  garbage collection: ``keras.backend.clear_session(free_memory=...)``
  after the cell's model has been built and trained for a few steps (a
  grid clears without forcing one).

::

    python benchmarks/startup.py --rounds=3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def flags():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3,
                    help="fresh processes per setting, alternating")
    ap.add_argument("--steps", type=int, default=3,
                    help="training steps before clearing the session")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    return ap.parse_args()


def child(what, steps):
    """Seconds of the measured call, in this process."""
    import time

    import numpy as np

    from ega_tf.core import runtime
    tf = runtime.import_tensorflow()
    import keras

    from ega_tf import config as config_lib
    from ega_tf import students
    from ega_tf.teachers import TeacherPreprocess, assemble
    from ega_tf.training import build
    c = config_lib.default_config("smoke")
    c.dataset, c.student, c.distill = "digits", "resnet8", "ega"
    c.teacher = "random"  # not read: the teacher is built below
    config = config_lib.resolve(c)
    dataset = build.load_dataset(config)
    backbone = students.create("resnet8")
    backbone.name = "backbone"
    teacher = assemble(backbone, TeacherPreprocess(input_size=32))
    model = build.build_model(config, dataset, teacher)
    x = dataset.train.images[:64]
    batch = ({"student": tf.constant(x), "teacher": tf.constant(x)},
             tf.constant(dataset.train.labels[:64]))
    autograph = what == "autograph"
    if what in ("autograph", "no_autograph"):
        step = tf.function(model.train_step, autograph=autograph)
        begin = time.perf_counter()
        step(batch)
        return time.perf_counter() - begin
    step = tf.function(model.train_step, autograph=False)
    for _ in range(steps):
        step(batch)
    del step, model
    begin = time.perf_counter()
    keras.backend.clear_session(free_memory=what == "collect")
    seconds = time.perf_counter() - begin
    np.asarray(0)
    return seconds


def main():
    args = flags()
    if args.child:
        print(json.dumps(child(args.child, args.steps)))
        return
    settings = ("autograph", "no_autograph", "collect", "no_collect")
    times = {s: [] for s in settings}
    for _ in range(args.rounds):
        for s in settings:
            out = subprocess.run(
                [sys.executable, __file__, f"--child={s}",
                 f"--steps={args.steps}"], capture_output=True, text=True,
                cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
            if out.returncode:
                sys.exit(f"{s} failed:\n{out.stderr[-3000:]}")
            times[s].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"median of {args.rounds} fresh processes each, seconds")
    print("| what | with | without |")
    print("| --- | ---: | ---: |")
    for label, a, b in (("first call of the step (traces it): autograph",
                         "autograph", "no_autograph"),
                        ("clear_session after a cell: forced garbage "
                         "collection", "collect", "no_collect")):
        print(f"| {label} | {statistics.median(times[a]):.2f} | "
              f"{statistics.median(times[b]):.2f} |")


if __name__ == "__main__":
    main()
