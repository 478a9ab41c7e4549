"""The shared test harness: every test class derives from ``TestCase``.

``TestCase`` is a ``tf.test.TestCase`` with absl's parameterisation, run by
pytest. Its harness methods are what the test modules repeat:

- ``rel_err`` / ``assertParity``: a converted network against its source
  framework, the plain relative error and the image-dependent one (outputs
  centred on their mean over the batch) side by side;
- ``assertTermsClose``: loss terms against an independent computation;
- ``run_model_saving_test``: save, reload, same function;
- ``run_precision_test``: the same check under each mixed-precision policy
  (``skip_unless_kernels_run``: skipped where oneDNN refuses the dtype);
- ``run_cli``: a command line in this process (flags on a fresh
  ``FlagValues``), its exit status, output and log lines;
- ``run_subprocess``: a command in a fresh process (one per command line in
  the suite, and where a fresh process is the point of the test);
- ``assertOneLineError``: exit status 2, one ``error:`` line naming the
  problem, no traceback;
- ``conv_teacher``: a small teacher stand-in; ``pixel_teacher``: a cheap
  digits teacher file that knows something; ``small_cnn``: a two-layer
  student backbone (also ``--student=tests.test_case:small_cnn``);
- ``history_rows``: a run's history rows without its wall-clock columns;
- ``start_process``: a program left running (to be killed);
- ``run_parity_tool``: tools/parity.py on a checkpoint and a random image;
- ``split_among_replicas`` / ``run_replica_steps``: fixed batches as a
  distributed dataset, each replica given its slice of every batch, and
  the training loop's step run over them;
- ``run_lockstep`` / ``lockstep_errors``: two models stepped side by side
  from the same state before every step (one device against two, eager
  against XLA), so a comparison sees one step's rounding and holds on any
  CPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import flags
from absl.testing import parameterized

ROOT = pathlib.Path(__file__).resolve().parents[1]
# absl log lines ("I1122 17:00:00.0 ...", in-process "I] ...") and warnings.
_LOG_LINE = re.compile(r"^([IWE]\d{4} |[IW]\] )|Warning:")
SUBPROCESS_ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                  "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}


@dataclasses.dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str  # what the command printed to stderr, then its log lines

    @property
    def output_lines(self):
        """stderr lines other than log lines and warnings."""
        return [line for line in self.stderr.splitlines()
                if line.strip() and not _LOG_LINE.search(line)]


class _Capture(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def conv_teacher(size, batchnorm=True):
    """A small frozen-teacher stand-in: uint8 [size, size, 3] -> rescale
    -> 3x3 conv (12, stride 2) (-> BatchNorm, to check inference mode)
    -> global average pool."""
    inp = keras.Input((size, size, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inp)
    x = keras.layers.Conv2D(12, 3, strides=2, name="t_conv")(x)
    if batchnorm:
        x = keras.layers.BatchNormalization(name="t_bn")(x)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x))


# ``small_cnn`` as a command line names it.
SMALL_CNN = "tests.test_case:small_cnn"


def small_cnn(input_shape, raw_pixels=True):
    """A student backbone of two 3x3 convolutions, each followed by
    BatchNorm and ReLU, the second strided, then average pooling: for
    tests of the step and the loop rather than of a zoo network. Its two
    BatchNorms, against resnet8's nine, make a two-replica step a third as
    costly to build (each synchronised BatchNorm adds its all-reduces).
    ``raw_pixels``: it takes 0-255 pixels (a ``Rescaling`` first, as the
    command line asks of a user's network); ``build_student`` called
    directly puts CLIP's normalisation in front, so those calls pass
    False. Named layers, so two builds give the same variable paths."""
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Rescaling(1 / 255, name="to_unit")(inputs) \
        if raw_pixels else inputs
    for i, (width, stride) in enumerate(((8, 1), (16, 2))):
        x = keras.layers.Conv2D(width, 3, strides=stride, padding="same",
                                use_bias=False, name=f"conv{i}")(x)
        x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(inputs, x, name="small_cnn")


def pixel_teacher(path, spread=0.1):
    """A cheap teacher that knows something, written to ``path`` (returned
    as a string): 8x8 average-pooled pixels (a k-NN on them separates
    digits well), standardised per feature on the digits training images
    with ``spread`` added to each feature's standard deviation."""
    from ega_tf import data, teachers
    digits = data.load("digits")
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.AveragePooling2D(4)(inputs)
    backbone = keras.Model(inputs, keras.layers.Flatten()(x),
                           name="backbone")
    pre = teachers.TeacherPreprocess((0.5,) * 3, (0.25,) * 3, input_size=32)
    feats = backbone(pre(digits.train.images)).numpy()
    teachers.save(teachers.assemble(backbone, pre, standardize=(
        teachers.FeatureStandardize(feats.mean(0), feats.std(0) + spread))),
        str(path))
    return str(path)


def history_rows(workdir):
    """The history rows of the run in ``workdir`` without the wall-clock
    columns (``*_seconds``), which differ between runs that compute the
    same numbers."""
    from ega_tf.training import workdir as wd
    return [{k: v for k, v in row.items() if not k.endswith("_seconds")}
            for row in wd.read_history(os.path.join(workdir, wd.HISTORY))]


def split_among_replicas(batches, replicas):
    """A dataset function (for ``distribute_datasets_from_function``) that
    gives replica r rows [r * b, (r + 1) * b) of every (x dict, y) batch,
    b = batch / replicas."""
    x0, y0 = batches[0]
    per = len(y0) // replicas

    def per_pipeline(ctx):
        def gen():
            for x, y in batches:
                for r in range(replicas):
                    rows = slice(r * per, (r + 1) * per)
                    yield {k: v[rows] for k, v in x.items()}, y[rows]
        spec = {k: tf.TensorSpec((per, *v.shape[1:]), tf.as_dtype(v.dtype))
                for k, v in x0.items()}
        return tf.data.Dataset.from_generator(gen, output_signature=(
            spec, tf.TensorSpec((per,), tf.as_dtype(y0.dtype))))
    return per_pipeline


class ReplicaStepper:
    """The training loop's step (``cell.step_function``) on each of
    ``batches`` in turn, split among the strategy's replicas; each call
    runs the next step and returns its logs (metrics reset before it)."""

    def __init__(self, model, strategy, batches, jit=False):
        from ega_tf.training import cell
        self.model = model
        self.iterator = iter(strategy.distribute_datasets_from_function(
            split_among_replicas(batches, strategy.num_replicas_in_sync)))
        self.step = cell.step_function(model, strategy,
                                       model.train_step, jit)

    def __call__(self):
        self.model.reset_metrics()
        return {k: float(v) for k, v in self.step(self.iterator).items()}


def run_replica_steps(model, strategy, batches, jit=False):
    """The logs of every step of ``ReplicaStepper`` over ``batches``."""
    stepper = ReplicaStepper(model, strategy, batches, jit)
    return [stepper() for _ in batches]


def training_state(model):
    """Every variable a training step reads and then writes, by name: what
    the distiller checkpoints (the student with its BatchNorm statistics,
    the online teacher head, the method's queues and banks, both
    optimizers)."""
    state = {}
    for item, obj in model.checkpoint_items().items():
        for v in obj.variables:
            state[f"{item}/{v.path}"] = v
    return state


def run_lockstep(reference, other, batches, jit=(False, False)):
    """Steps two models built alike (``(model, strategy)`` pairs: one
    device and two, eager and XLA) through ``batches`` side by side. Before
    each step ``other`` is given ``reference``'s state, so each step is
    compared from the same weights: what differs is that step's rounding,
    never earlier steps' rounding grown by training, which depends on the
    CPU's float order. Returns, per step, (reference logs, other logs,
    reference state, other state), the states as {name: array}."""
    steppers = [ReplicaStepper(m, s, batches, j)
                for (m, s), j in zip((reference, other), jit)]
    ref_state = training_state(reference[0])
    other_state = training_state(other[0])
    assert list(ref_state) == list(other_state), "models built differently"
    steps = []
    for _ in batches:
        for name, v in ref_state.items():
            other_state[name].assign(v.numpy())
        logs = [stepper() for stepper in steppers]
        steps.append((*logs, *({k: v.numpy() for k, v in state.items()}
                               for state in (ref_state, other_state))))
    return steps


def lockstep_errors(steps):
    """Over the steps of ``run_lockstep``: {term: largest relative
    difference} of the logged terms, and {variable: largest difference}
    of the state after each step, each float variable relative to the
    largest value of its checkpoint item (the student, the teacher head, the
    method's banks); integer variables must be equal.

    The optimizers' momentum buffers are left out: they hold the step's
    gradient itself, and where a pre-activation lies within rounding of
    zero, adding in another order flips a ReLU and moves a gradient by up
    to 4e-3 of its scale (seen with rows merely reordered on one device).
    The weights after the step carry that gradient times the learning rate,
    a wrong gradient (a sum for a mean, a count of one replica's examples)
    by percents of the update."""
    terms, state = {}, {}
    for a_logs, b_logs, a_state, b_state in steps:
        for k, a in a_logs.items():
            error = abs(a - b_logs[k]) / max(abs(a), 1e-3)
            terms[k] = max(terms.get(k, 0.0), error)
        kept = {k: a for k, a in a_state.items()
                if "optimizer" not in k.split("/")[0]}
        scale = {}
        for k, a in kept.items():
            if np.issubdtype(a.dtype, np.floating):
                item = k.split("/")[0]
                scale[item] = max(scale.get(item, 0.0), np.abs(a).max())
        for k, a in kept.items():
            error = np.abs(np.asarray(a, np.float64) - b_state[k]).max()
            if np.issubdtype(a.dtype, np.floating):
                error /= max(scale[k.split("/")[0]], 1e-12)
            state[k] = max(state.get(k, 0.0), float(error))
    return terms, state


def make_tempdir(owner=None):
    """A temporary directory removed when ``owner`` (a test) ends, or at
    class cleanup when called from ``setUpClass``."""
    path = tempfile.mkdtemp(prefix="ega_tf_test_")
    if owner is not None:
        owner.addCleanup(shutil.rmtree, path, ignore_errors=True)
    return pathlib.Path(path)


# dtype -> whether oneDNN runs its kernels here (``skip_unless_kernels_run``).
_KERNELS_RUN = {}


class TestCase(tf.test.TestCase, parameterized.TestCase):
    """Base class of every test in the suite."""

    # tf.test.TestCase's deprecated session helper is not a test.
    test_session = None

    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(0)

    def tearDown(self):
        keras.mixed_precision.set_global_policy("float32")
        # Keras's global state (layer-name counters, the graph it keeps for
        # functional models) grows with every model a test builds, and
        # slows the tests after it in the same process; the models a test
        # keeps still run.
        keras.backend.clear_session(free_memory=False)
        super().tearDown()

    @classmethod
    def class_tempdir(cls):
        path = tempfile.mkdtemp(prefix="ega_tf_test_")
        cls.addClassCleanup(shutil.rmtree, path, ignore_errors=True)
        return pathlib.Path(path)

    def tmp_path(self):
        return make_tempdir(self)

    # ------------------------------------------------------------ numbers
    @staticmethod
    def rel_err(got, want):
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        return float(np.abs(got - want).max() / np.abs(want).max())

    def assertParity(self, got, want, tol, label="", source=None):
        """``got`` equals ``want`` to ``tol`` relative error, both as they
        are and after removing their mean over the batch (rows): a network
        whose output is nearly the same for every image would otherwise be
        checked only on its constant part.

        With ``source`` (the source framework's own float32 result; ``want``
        then being its float64 result), the bound is the larger of ``tol``
        and three times the source's own error: the port must be as exact as
        the framework it came from. Returns (plain, image-dependent)."""
        got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
        self.assertGreaterEqual(len(want), 2, "need several images")

        def errors(a):
            return (self.rel_err(a, want),
                    self.rel_err(a - a.mean(0), want - want.mean(0)))
        plain, centred = errors(got)
        spread = np.abs(want - want.mean(0)).max() / np.abs(want).max()
        bound = (tol, tol)
        text = (f"{label} parity: rel err {plain:.2e}, image-dependent part "
                f"{centred:.2e} ({spread:.0%} of the output's scale)")
        if source is not None:
            noise = errors(np.asarray(source, np.float64))
            bound = tuple(max(tol, 3 * n) for n in noise)
            text += (f"; the source framework's own float32: {noise[0]:.2e},"
                     f" {noise[1]:.2e}")
        print(text)
        self.assertLessEqual(plain, bound[0], f"{label}: plain")
        self.assertLessEqual(centred, bound[1], f"{label}: image-dependent")
        return plain, centred

    def assertPublishedParity(self, backbone, published, x, tol=1e-4):
        """The Keras backbone against the published file's reference
        network on normalised pixels ``x``, in float64 when the reference
        can run so; and the backbone with its BatchNorm folded, as training
        runs it (``teachers/fold.py``), to the same bound. Returns the
        unfolded backbone's errors."""
        from ega_tf.teachers import fold
        if published.reference64 is None:
            want, source = published.reference(x), None
        else:
            want, source = published.reference64(x), published.reference(x)
        folded, count = fold.fold_batchnorm(backbone)
        out = self.assertParity(np.asarray(backbone(x)), want, tol,
                                published.family, source=source)
        if count:
            self.assertParity(np.asarray(folded(x)), want, tol,
                              f"{published.family} ({count} BatchNorm "
                              "folded)", source=source)
        return out

    def assertPixelsMatch(self, ours, want, std, label=""):
        """Preprocessed pixels within one grey level of the reference
        pipeline's (in normalised units: 1 / 255 / std), and at least 99 %
        of them exact."""
        diff = np.abs(np.asarray(ours) - np.asarray(want))
        one_level = 1 / 255 / min(std)
        print(f"{label} preprocessing: max abs diff {diff.max():.2e} "
              f"({diff.max() / one_level:.2f} grey levels), "
              f"{(diff < 1e-5).mean():.4%} of values exact")
        self.assertLessEqual(diff.max(), one_level * 1.001)
        self.assertGreater((diff < 1e-5).mean(), 0.99)

    def assertTermsClose(self, got, want, rtol=1e-5, atol=1e-6):
        """Every term of ``want`` (a dict) equals the same key of ``got``."""
        for name, value in want.items():
            self.assertIn(name, got)
            np.testing.assert_allclose(np.asarray(got[name]), value,
                                       rtol=rtol, atol=atol, err_msg=name)

    # ------------------------------------------------------------ harness
    def run_model_saving_test(self, model, inputs, save, load, path,
                              rtol=1e-5, atol=1e-6):
        """``save(model, path)`` then ``load(path)`` gives the same outputs
        on ``inputs``; returns the reloaded model."""
        want = np.asarray(model(inputs))
        save(model, path)
        again = load(path)
        np.testing.assert_allclose(np.asarray(again(inputs)), want,
                                   rtol=rtol, atol=atol)
        return again

    def run_precision_test(self, check,
                           policies=("mixed_float16", "mixed_bfloat16")):
        """Runs ``check(policy)`` under each global dtype policy."""
        for policy in policies:
            keras.mixed_precision.set_global_policy(policy)
            try:
                with self.subTest(policy=policy):
                    self.skip_unless_kernels_run(policy.split("_")[1])
                    check(policy)
            finally:
                keras.mixed_precision.set_global_policy("float32")

    def skip_unless_kernels_run(self, dtype):
        """Skips the test where this CPU's oneDNN cannot run a convolution
        and a pooling in ``dtype`` ("float16", "bfloat16"). That happens
        only when oneDNN is held below the instructions TensorFlow saw
        (``ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX-512 CPU, how the suite is
        timed as on an AVX2 CPU): TensorFlow then hands it kernels it
        refuses, where on a real AVX2 CPU it runs its own."""
        if dtype not in _KERNELS_RUN:
            x = tf.ones((1, 4, 4, 1), dtype)
            try:
                tf.nn.avg_pool2d(tf.nn.conv2d(x, tf.ones((1, 1, 1, 1), dtype),
                                              1, "SAME"), 2, 2, "VALID")
                _KERNELS_RUN[dtype] = True
            except (tf.errors.AbortedError, tf.errors.InternalError) as e:
                _KERNELS_RUN[dtype] = "could not create" not in str(e)
                if _KERNELS_RUN[dtype]:
                    raise
        if not _KERNELS_RUN[dtype]:
            self.skipTest(f"oneDNN refuses {dtype} kernels here "
                          f"(ONEDNN_MAX_CPU_ISA="
                          f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')})")

    def run_cli(self, module, *args):
        """Runs ``python -m ega_tf.<module> args`` in this process."""
        from ega_tf import cli
        mod = importlib.import_module(f"ega_tf.{module}")
        out, err = io.StringIO(), io.StringIO()
        capture = _Capture()
        absl_logger = logging.getLogger("absl")
        old_level = absl_logger.level
        absl_logger.addHandler(capture)
        absl_logger.setLevel(logging.INFO)
        try:
            with contextlib.redirect_stdout(out), \
                    contextlib.redirect_stderr(err):
                code = cli.run_main(
                    mod.define_flags, mod.main,
                    [f"ega_tf.{module}", *map(str, args)], flags.FlagValues(),
                    getattr(mod, "help_extra", None))
        finally:
            absl_logger.removeHandler(capture)
            absl_logger.setLevel(old_level)
            keras.mixed_precision.set_global_policy("float32")
        stderr = err.getvalue() + "".join(f"I] {m}\n" for m in capture.lines)
        return CliResult(code, out.getvalue(), stderr)

    @staticmethod
    def run_subprocess(args, env=None, timeout=900, cwd=ROOT):
        """``python args`` in a fresh process (cwd: the repository)."""
        return subprocess.run([sys.executable, *map(str, args)], cwd=cwd,
                              env={**SUBPROCESS_ENV, **(env or {})},
                              capture_output=True, text=True,
                              timeout=timeout)

    @staticmethod
    def start_process(args):
        """``python args`` started in a fresh process and left running,
        its output discarded."""
        return subprocess.Popen([sys.executable, *map(str, args)], cwd=ROOT,
                                env=SUBPROCESS_ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)

    def run_parity_tool(self, checkpoint, tmp_path, image_shape, seed=0):
        """Writes a random PNG of ``image_shape``, runs tools/parity.py on it
        and ``checkpoint``; returns (stdout, network rel err,
        preprocessing max)."""
        img = np.random.default_rng(seed).integers(0, 256, image_shape,
                                                   np.uint8)
        png = tmp_path / "photo.png"
        png.write_bytes(tf.io.encode_png(img).numpy())
        r = self.run_subprocess(["tools/parity.py",
                                 f"--checkpoint={checkpoint}",
                                 f"--image={png}"], timeout=600)
        self.assertSucceeded(r)
        net = float(re.search(r"network:\s+rel err ([^,\s]+)", r.stdout)[1])
        pre = float(re.search(r"preprocessing: max abs ([^,\s]+)",
                              r.stdout)[1])
        return r.stdout, net, pre

    def assertSucceeded(self, result):
        code = getattr(result, "code", getattr(result, "returncode", None))
        self.assertEqual(code, 0, result.stderr[-3000:])

    def assertOneLineError(self, result, message):
        """Exit 2, ``message`` on one ``error:`` line, nothing else but
        log lines and warnings, no traceback."""
        code = getattr(result, "code", getattr(result, "returncode", None))
        self.assertEqual(code, 2, result.stderr[-3000:])
        self.assertNotIn("Traceback", result.stderr)
        lines = [line for line in result.stderr.splitlines()
                 if line.strip() and not _LOG_LINE.search(line)]
        self.assertLen(lines, 1, result.stderr[-3000:])
        self.assertTrue(lines[0].startswith("error: "), lines[0])
        self.assertIn(message, lines[0])
