#!/usr/bin/env python
"""The training step of ega_tf's default configuration, timed, and (with
--compare=torch) the published PyTorch EGA step on the same shapes.

    python benchmarks/train_step.py                          # resnet32x4 -> resnet8x4, 32 px
    python benchmarks/train_step.py --compare=torch          # both, alternating, with the ratio
    python benchmarks/train_step.py --compare=terms_jit      # the method's terms XLA-compiled or not
    python benchmarks/train_step.py --teacher=clip_rn50 --compare=torch
    python benchmarks/train_step.py --profile                # where the time goes
    python benchmarks/train_step.py --json                   # one JSON line

The step runs on synthetic uint8 images and random labels (10 % of them -1,
as in a 10 %-labeled run) with random weights. ``--teacher`` is a student-zoo
name (a frozen random network of that architecture), ``clip_rn50`` (OpenAI
CLIP's RN50 image tower at 224 px, random weights: the paper's setting) or a
teacher ``.keras`` file. A random teacher's pooled features are large (about
24 for resnet32x4 in inference mode) and make the online teacher head
diverge at lr 0.01 in both frameworks, so random teachers are followed by a
fixed standardisation measured on a batch, as the local SimCLR teacher is.

Times are medians over ``--steps`` steps after warm-up; the first call
(tracing, and XLA compilation when on) is reported separately as compile
time. PyTorch runs the step of EGA's published training loop, written here
from the paper and the published architectures: the student's loss (cross-
entropy + EGA on the 256-d projections) is backpropagated, through the
teacher head too (the published loop clears that gradient afterwards), the
student's SGD steps, then the teacher head's cross-entropy is
backpropagated and its SGD steps. Its input pipeline prepares the teacher's
view at the teacher's resolution on the CPU before the step; ega_tf's
teacher resizes its 32-px view inside the step, so the clip_rn50 case
charges ega_tf for the resize and not PyTorch. With --compare=torch each
framework runs in its own child process, alternately, ``--rounds`` times;
with --compare=terms_jit so does ega_tf's step with the method's terms
uncompiled and compiled with XLA (``--terms_jit``, the run's
``terms_jit_compile``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NUM_CLASSES, EMBED = 100, 256


def flags():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--student", default="resnet8x4")
    ap.add_argument("--teacher", default="resnet32x4")
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--image_size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--distill", default="ega", choices=("ega", "none"))
    ap.add_argument("--jit", default="auto", choices=("auto", "true",
                                                      "false"))
    ap.add_argument("--terms_jit", default="auto",
                    choices=("auto", "true", "false"),
                    help="the method's terms as their own XLA function "
                    "(config.terms_jit_compile)")
    ap.add_argument("--precision", default="float32")
    ap.add_argument("--teacher_precision", default="float32")
    ap.add_argument("--teacher_view", default="independent",
                    choices=("independent", "clean"),
                    help="clean: the teacher's features computed once, as "
                    "training does for the clean view (teacher_cache)")
    ap.add_argument("--teacher_fold_bn", default="true",
                    choices=("true", "false"),
                    help="fold the frozen teacher's BatchNorm into its "
                    "convolutions, as training does by default")
    ap.add_argument("--compare", default=None,
                    choices=("torch", "terms_jit"))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--framework", default="tf", choices=("tf", "torch"),
                    help=argparse.SUPPRESS)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


def synthetic(args, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (args.batch_size, args.image_size,
                                   args.image_size, 3), np.uint8)
    labels = rng.integers(0, NUM_CLASSES, args.batch_size)
    labels[rng.random(args.batch_size) >= 0.1] = -1
    labels[0] = 0
    return images, labels


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------ ega_tf
def tf_teacher(args, images):
    """A frozen teacher: a .keras file, or random weights standardised."""
    import numpy as np

    from ega_tf import students, teachers
    from ega_tf.core.constants import CLIP_MEAN, CLIP_STD
    if args.teacher.endswith(".keras"):
        teacher = teachers.load(args.teacher)
        if args.teacher_fold_bn == "true":
            from ega_tf.teachers import fold
            teacher, _ = fold.fold_batchnorm(teacher)
        return teacher
    if args.teacher == "clip_rn50":
        from ega_tf.teachers import clip_resnet
        backbone = clip_resnet.build({"blocks": [3, 4, 6, 3], "width": 64,
                                      "output_dim": 1024, "heads": 32,
                                      "resolution": 224})
        pre = teachers.TeacherPreprocess(CLIP_MEAN, CLIP_STD, input_size=224,
                                         interpolation="pil_bicubic")
    else:
        backbone = students.create(args.teacher, input_shape=(
            args.image_size, args.image_size, 3))
        backbone.name = "backbone"
        pre = teachers.TeacherPreprocess(CLIP_MEAN, CLIP_STD)
    raw = teachers.assemble(backbone, pre)
    feats = np.asarray(raw(images, training=False))
    teacher = teachers.assemble(backbone, pre, standardize=(
        teachers.FeatureStandardize(feats.mean(0), feats.std(0) + 1e-3)))
    if args.teacher_fold_bn == "true":
        from ega_tf.teachers import fold
        teacher, _ = fold.fold_batchnorm(teacher)
    return teacher


def tf_model(args, images):
    import keras

    from ega_tf import students
    from ega_tf.core import runtime
    from ega_tf.nn.optimizers import TorchSGD
    from ega_tf.students.head import build_student
    from ega_tf.training import build
    from ega_tf.training.distiller import Distiller
    runtime.set_precision(args.precision)
    keras.utils.set_random_seed(0)
    teacher = tf_teacher(args, images) if args.distill == "ega" else None
    if teacher is not None and args.teacher_precision != "float32":
        from ega_tf.teachers import teacher_file
        teacher = teacher_file.with_precision(teacher, args.teacher_precision)
    student = build_student(students.create(args.student, input_shape=(
        args.image_size, args.image_size, 3)), NUM_CLASSES, EMBED)
    model = Distiller(student, teacher, NUM_CLASSES, EMBED,
                      method="ega" if teacher is not None else "none")
    jit, why = build.choose_jit(args.jit, teacher,
                                (args.image_size, args.image_size))
    model.terms_jit_compile, terms_why = build.choose_terms_jit(
        args.terms_jit, jit)
    model.compile(TorchSGD(0.05), teacher_head_optimizer=(
        TorchSGD(0.01) if teacher is not None else None), jit_compile=jit)
    return model, jit, f"{why}; {terms_why}"


def run_tf(args):
    from ega_tf.core import runtime
    tf = runtime.import_tensorflow()
    from ega_tf.training import cell
    images, labels = synthetic(args)
    model, jit, why = tf_model(args, images)
    strategy = tf.distribute.get_strategy()
    batch = ({"student": images, "teacher": images}, labels)
    if args.teacher_view == "clean" and model.teacher is not None:
        feats = tf.function(lambda x: model.teacher(x, training=False))(
            images)
        batch = ({"student": images, "teacher_features": feats}, labels)
    it = iter(strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.from_tensors(batch).repeat()))
    step = cell.step_function(model, strategy, model.train_step, jit)
    start = time.perf_counter()
    first = {k: float(v) for k, v in step(it).items()}
    compile_s = time.perf_counter() - start
    for _ in range(3):
        step(it)
    times, last = [], {}
    for _ in range(args.steps):
        start = time.perf_counter()
        last = {k: float(v) for k, v in step(it).items()}
        times.append(time.perf_counter() - start)
    profile = tf_profile(args, model, images, labels) if args.profile else {}
    return summary(args, "ega_tf", statistics.median(times), compile_s,
                   jit, first, last, profile, why, model.terms_jit_compile)


def tf_profile(args, model, images, labels):
    """Median time of each part of the step, run alone."""
    import numpy as np
    import tensorflow as tf

    from ega_tf.methods import ega

    def timed_tf(fn, *a):  # waits for the values
        return timed(lambda: tf.nest.map_structure(
            lambda t: t.numpy() if hasattr(t, "numpy") else t, fn(*a)),
            args.steps)

    x = tf.constant(images)
    y = tf.constant(np.maximum(labels, 0))
    student_vars = model.student.trainable_variables
    parts = {}
    if model.teacher is not None:
        parts["teacher forward"] = timed_tf(tf.function(
            lambda x: model.teacher(x, training=False)), x)

    @tf.function
    def student_fwd_bwd(x, y):
        with tf.GradientTape() as tape:
            out = model.student(x, training=True)
            ce = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                y, out["logits"], from_logits=True))
            loss = ce + tf.reduce_sum(out["embedding"]) * 0.0
        return tape.gradient(loss, student_vars)
    parts["student forward + backward"] = timed_tf(student_fwd_bwd, x, y)
    emb = tf.random.normal((args.batch_size, EMBED))

    @tf.function
    def ega_gradient(t, s):
        with tf.GradientTape() as tape:
            tape.watch(s)
            loss = ega.ega_loss(t, s)
        return tape.gradient(loss, s)
    if model.teacher is not None:
        parts["EGA loss + gradient"] = timed_tf(ega_gradient, emb,
                                                emb * 0.5 + 1)
    grads = [tf.zeros_like(v) for v in student_vars]

    @tf.function
    def apply():
        model.optimizer.apply_gradients(zip(grads, student_vars))
        return model.optimizer.iterations
    parts["student SGD update"] = timed_tf(apply)
    return parts


def summary(args, name, median, compile_s, jit, first, last, profile=None,
            why="", terms_jit=False):
    finite = all(v == v and abs(v) != float("inf") for v in last.values())
    return {"framework": name, "img_per_s": args.batch_size / median,
            "median_step_s": median, "compile_s": compile_s, "jit": bool(jit),
            "terms_jit": bool(terms_jit),
            "precision": args.precision, "device": "CPU",
            "teacher_precision": args.teacher_precision,
            "teacher_view": args.teacher_view,
            "student": args.student, "teacher": args.teacher,
            "batch_size": args.batch_size, "image_size": args.image_size,
            "first_loss": first.get("loss"), "last_loss": last.get("loss"),
            "last_teacher_ce": last.get("teacher_ce"), "finite": finite,
            "peak_rss_mib": round(peak_rss_mib()), "profile": profile or {},
            "jit_choice": why}


# ----------------------------------------------------------------- PyTorch
def run_torch(args):
    import copy

    import numpy as np
    import torch
    from torch import nn

    from ega_tf.core.constants import CLIP_MEAN, CLIP_STD
    from tools.reference import torch_cifar_resnet, torch_clip
    from tools.reference.torch_losses import ega as torch_ega
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    images, labels = synthetic(args)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x_s = (torch.tensor(images).permute(0, 3, 1, 2).float() / 255 - mean) / std
    if args.teacher == "clip_rn50":
        teacher = torch_clip.ModifiedResNet()
        x_t = torch.nn.functional.interpolate(x_s, (224, 224),
                                              mode="bicubic")
    else:
        teacher = torch_cifar_resnet.create(args.teacher)
        x_t = x_s.clone()
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        feats = teacher(x_t)
    f_mean, f_std = feats.mean(0), feats.std(0) + 1e-3
    width = feats.shape[1]
    student = torch_cifar_resnet.create(args.student)
    s_embed, s_cls = nn.Linear(student.width, EMBED), nn.Linear(EMBED,
                                                                NUM_CLASSES)
    t_embed, t_cls = nn.Linear(width, EMBED), nn.Linear(EMBED, NUM_CLASSES)
    s_params = [*student.parameters(), *s_embed.parameters(),
                *s_cls.parameters()]
    t_params = [*t_embed.parameters(), *t_cls.parameters()]
    opt = torch.optim.SGD(s_params, 0.05, momentum=0.9, weight_decay=5e-4)
    opt_t = torch.optim.SGD(t_params, 0.01, momentum=0.9, weight_decay=5e-4)
    y = torch.tensor(labels)
    ce = nn.CrossEntropyLoss(ignore_index=-1)
    student.train()
    del copy, np

    def step():
        with torch.no_grad():
            f_t = (teacher(x_t) - f_mean) / f_std
        ft = t_embed(f_t)
        logit_t = t_cls(ft)
        fs = s_embed(student(x_s))
        logit_s = s_cls(fs)
        loss = ce(logit_s, y)
        if args.distill == "ega":
            loss = loss + torch_ega(fs, ft)
        opt.zero_grad()
        loss.backward(retain_graph=True)
        opt.step()
        opt_t.zero_grad()  # what the student's loss sent into the head
        loss_t = ce(logit_t, y)
        loss_t.backward()
        opt_t.step()
        return {"loss": float(loss), "teacher_ce": float(loss_t)}

    start = time.perf_counter()
    first = step()
    compile_s = time.perf_counter() - start
    for _ in range(3):
        step()
    times, last = [], {}
    for _ in range(args.steps):
        start = time.perf_counter()
        last = step()
        times.append(time.perf_counter() - start)
    profile = {}
    if args.profile:
        def forward():
            with torch.no_grad():
                return teacher(x_t)

        def student_fwd_bwd():
            opt.zero_grad()
            ce(s_cls(s_embed(student(x_s))), y).backward()
        profile["teacher forward"] = timed(forward, args.steps)
        profile["student forward + backward"] = timed(student_fwd_bwd,
                                                      args.steps)
    return summary(args, f"PyTorch {torch.__version__}",
                   statistics.median(times), compile_s, False, first, last,
                   profile)


def timed(fn, steps):
    """Median seconds of ``fn()`` (run twice first) over
    max(5, steps // 2) calls."""
    fn()
    fn()
    out = []
    for _ in range(max(5, steps // 2)):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return statistics.median(out)


# ------------------------------------------------------------------ report
def child(args, framework, **overrides):
    cmd = [sys.executable, os.path.abspath(__file__), "--json",
           f"--framework={framework}"]
    for name in ("student", "teacher", "batch_size", "image_size", "steps",
                 "distill", "jit", "terms_jit", "precision",
                 "teacher_precision", "teacher_view"):
        cmd.append(f"--{name}={overrides.get(name, getattr(args, name))}")
    cmd.append(f"--teacher_fold_bn={args.teacher_fold_bn}")
    if args.profile:
        cmd.append("--profile")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    if r.returncode:
        sys.exit(f"{framework} benchmark failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def table(rows, args):
    print(f"Training step, student {args.student}, teacher {args.teacher}, "
          f"{args.image_size} px, batch {args.batch_size}, "
          f"{NUM_CLASSES} classes, D={EMBED}, {os.cpu_count()} CPU cores; "
          f"median of {args.steps} steps")
    print("| round | framework | jit | precision | ms/step | img/s | "
          "compile (s) | loss first -> last | finite |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | --- | --- |")
    for rnd, r in rows:
        print(f"| {rnd} | {r['framework']} | {'on' if r['jit'] else 'off'}"
              f"{', terms on' if r.get('terms_jit') else ''} "
              f"| {r['precision']}"
              f"{'' if r['teacher_precision'] == 'float32' else ' (teacher ' + r['teacher_precision'] + ')'}"
              f"{' (teacher cached)' if r.get('teacher_view') == 'clean' else ''}"
              f" | {1000 * r['median_step_s']:.0f} | {r['img_per_s']:.1f} | "
              f"{r['compile_s']:.1f} | {r['first_loss']:.3f} -> "
              f"{r['last_loss']:.3f} | {r['finite']} |")


def side_by_side(rows):
    """Each part of the step, run alone, in both frameworks (every
    round)."""
    print("| round | part of the step, run alone | ega_tf ms | PyTorch ms |")
    print("| --- | --- | ---: | ---: |")
    for rnd in sorted({r for r, _ in rows}):
        ours, theirs = (r for n, r in rows if n == rnd)
        for part in ("teacher forward", "student forward + backward"):
            print(f"| {rnd} | {part} | "
                  f"{1000 * ours['profile'].get(part, float('nan')):.0f} | "
                  f"{1000 * theirs['profile'].get(part, float('nan')):.0f}"
                  " |")
        print(f"| {rnd} | whole step | {1000 * ours['median_step_s']:.0f} | "
              f"{1000 * theirs['median_step_s']:.0f} |")


def compare_terms_jit(args):
    """ega_tf's step with the method's terms uncompiled, then compiled
    with XLA, alternately in child processes, ``--rounds`` times: both
    medians and their ratio."""
    rows = []
    for rnd in range(1, args.rounds + 1):
        for setting in ("false", "true"):
            rows.append((rnd, child(args, "tf", terms_jit=setting)))
    table(rows, args)
    off, on = (statistics.median(r["median_step_s"] for _, r in rows
                                 if r["terms_jit"] == flag)
               for flag in (False, True))
    print(f"terms uncompiled: {1000 * off:.1f} ms/step; compiled with XLA: "
          f"{1000 * on:.1f} ms/step (median over {args.rounds} round(s)); "
          f"uncompiled / compiled step time: {off / on:.2f}x")


def main():
    args = flags()
    if args.compare == "terms_jit":
        compare_terms_jit(args)
        return
    if args.compare:
        rows, ratios = [], []
        for rnd in range(1, args.rounds + 1):
            ours, theirs = child(args, "tf"), child(args, "torch")
            rows += [(rnd, ours), (rnd, theirs)]
            ratios.append(ours["img_per_s"] / theirs["img_per_s"])
        table(rows, args)
        print("ega_tf / PyTorch images per second: " + ", ".join(
            f"round {i}: {r:.2f}x" for i, r in enumerate(ratios, 1)))
        if args.profile:
            side_by_side(rows)
        return
    result = (run_tf if args.framework == "tf" else run_torch)(args)
    if args.json:
        print(json.dumps(result))
        return
    table([(1, result)], args)
    print(result["jit_choice"])
    if result["profile"]:
        step = result["median_step_s"]
        print("| part of the step, run alone | ms | share of the step |")
        print("| --- | ---: | ---: |")
        for part, t in result["profile"].items():
            print(f"| {part} | {1000 * t:.0f} | {t / step:.0%} |")
        print(f"| whole step | {1000 * step:.0f} | 100% |")
        print(f"peak resident memory of the process: "
              f"{result['peak_rss_mib']} MiB")


if __name__ == "__main__":
    main()
