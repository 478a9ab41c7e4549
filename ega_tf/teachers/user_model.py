"""A teacher from a model the user already has: a ``.keras`` file or a
TensorFlow SavedModel directory, with the preprocessing the user declares.

The model must map float32 NHWC RGB images (already resized and normalised
as declared) to one ``[N, F]`` embedding. It becomes the teacher's
``backbone`` sub-model; ``TeacherPreprocess`` in front of it applies the
declared resize, crop and normalisation to uint8 images. A SavedModel is
called through ``keras.layers.TFSMLayer`` (its ``serving_default``
signature), which refers to the directory by path: keep the directory where
it is.

Before anything is written, the wrapped teacher is run once on a dummy
batch of uint8 images, so a model that cannot take RGB images at the
declared size, or that outputs class probabilities instead of features, is
refused here and not halfway through a training run.
"""

from __future__ import annotations

import os

import numpy as np

from ega_tf.core.errors import UserError, first_line


def _load_inner(path, endpoint):
    import keras
    if path.endswith(".keras"):
        from ega_tf.nn import serialization
        return serialization.load_user_file(path, "Model file")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return keras.layers.TFSMLayer(os.path.abspath(path),
                                      call_endpoint=endpoint,
                                      name="saved_model")
    raise UserError(
        f"{path!r} is neither a .keras file nor a SavedModel directory "
        "(one holding saved_model.pb).")


def _check_runs(teacher, size):
    """Runs ``teacher`` on a dummy uint8 batch; refuses what cannot work."""
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3),
                                               np.uint8)
    try:
        out = np.asarray(teacher(images, training=False))
    except Exception as e:
        raise UserError(
            "The model cannot run on RGB images of the declared size "
            f"{size}x{size}x3: {first_line(e)}. Declare the input size the "
            "model was built for (--input_size), and use a model that takes "
            "3-channel images.") from None
    if not np.all(np.isfinite(out)):
        raise UserError("The model gives non-finite outputs on a test "
                        "batch; it cannot serve as a teacher.")
    rows = out.sum(axis=1)
    if out.shape[1] > 1 and np.all(out >= 0) and np.allclose(rows, 1.0,
                                                             atol=1e-3):
        raise UserError(
            "The model outputs class probabilities (non-negative rows that "
            "sum to 1), not features: export the layer before the softmax "
            "(the embedding) and wrap that model instead.")


def prefix_tokens(inner, given=None):
    """How many tokens precede the patches in ``inner``'s output: ``given``,
    else keras-hub's DINOv2/DINOv3 backbones say (class token and
    registers), else 1 (a class token)."""
    if given is not None:
        return int(given)
    registers = getattr(inner, "num_register_tokens", None)
    return 1 + int(registers) if registers is not None else 1


def _pool_tokens(inner, out, pool, prefix):
    """``out`` [N, T, D] -> the pooled feature, or a UserError saying how."""
    from ega_tf.core.registry import check_choice
    from ega_tf.teachers.vit import POOLS, TokenPool
    if pool is None:
        raise UserError(
            f"The model returns a token sequence {tuple(out.shape)}; say "
            "which feature the teacher gives: --pool=cls (the class token, "
            "first), mean (the mean of the tokens after --prefix_tokens) or "
            "cls_mean (both, concatenated).")
    check_choice("pool", pool, list(POOLS))
    k = prefix_tokens(inner, prefix)
    return TokenPool(pool, prefix=k, name="pool")(out), k


def wrap(path, *, input_size=None, crop_pct=1.0, crop_mode="center",
         interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
         output=None, endpoint="serving_default", pool=None,
         prefix=None):
    """The teacher ``keras.Model`` around the model at ``path``.

    ``input_size`` is the side of the square the model takes; ``crop_pct``
    and ``crop_mode`` say how an image gets there (``preprocess``);
    ``output`` names the embedding when the model returns a dict; ``pool``
    (``cls``, ``mean``, ``cls_mean``) turns a ``[N, T, D]`` token output
    into the feature, ``prefix`` tokens (default: what a keras-hub DINO
    backbone says, else 1) left out of the mean.
    """
    import keras

    from ega_tf.core.constants import CROP_MODES
    from ega_tf.teachers import checkpoint_io
    from ega_tf.teachers.preprocess import TeacherPreprocess
    from ega_tf.teachers.teacher_file import assemble

    if not input_size or input_size < 1:
        raise UserError("Declare the model's input size: --input_size=S "
                        "(the side of the square images it takes).")
    if crop_mode not in CROP_MODES:
        raise UserError(f"Unknown crop mode {crop_mode!r}. Valid values: "
                        f"{', '.join(CROP_MODES)}.")
    if not 0.0 < crop_pct <= 1.0:
        raise UserError(f"--crop_pct must be in (0, 1]; got {crop_pct}.")
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise UserError("--mean and --std take three values each (one per "
                        "RGB channel), std > 0.")
    path = os.fspath(path)
    inner = _load_inner(path, endpoint)
    inputs = keras.Input((input_size, input_size, 3), name="pixels")
    key = (next(iter(inner.input)) if isinstance(
        getattr(inner, "input", None), dict) and len(inner.input) == 1
        else None)  # keras-hub backbones take {"images": ...}
    try:
        out = inner({key: inputs} if key else inputs)
    except Exception as e:
        raise UserError(
            f"The model cannot take {input_size}x{input_size}x3 images: "
            f"{first_line(e)}.") from None
    if isinstance(out, dict):
        if output is None and len(out) == 1:
            output = next(iter(out))
        if output not in out:
            raise UserError(f"The model returns {sorted(out)}; pass "
                            "--output with the embedding's name.")
        out = out[output]
    pooled = None
    if len(out.shape) == 3:
        out, pooled = _pool_tokens(inner, out, pool, prefix)
    elif pool is not None:
        raise UserError(f"--pool applies to a model returning tokens [N, T, "
                        f"D]; this one returns {tuple(out.shape)}.")
    if len(out.shape) != 2:
        raise UserError(
            f"The model returns shape {tuple(out.shape)}; a teacher needs "
            "[N, F]. Add global pooling to the model, or export the layer "
            "that gives the embedding.")
    backbone = keras.Model(inputs, out, name="backbone")
    preprocess = TeacherPreprocess(
        mean, std, input_size=input_size, crop_pct=crop_pct,
        crop_mode=crop_mode, interpolation=interpolation, antialias=True,
        name="preprocess", metadata={
            "family": "user", "source_file": os.path.basename(
                os.path.normpath(path)),
            "source_sha256": (checkpoint_io.sha256(path)
                              if os.path.isfile(path) else None),
            "embedding_dim": int(out.shape[-1]),
            "input_resolution": input_size,
            **({"pool": pool, "prefix_tokens": pooled} if pooled else {})})
    teacher = assemble(backbone, preprocess, name="user_teacher")
    _check_runs(teacher, input_size)
    return teacher
