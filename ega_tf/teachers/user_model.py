"""A teacher from a model the user already has: a ``.keras`` file or a
TensorFlow SavedModel directory, with the preprocessing the user declares.

The model must map float32 NHWC images (already resized and normalised as
declared) to one ``[N, F]`` embedding. It becomes the teacher's ``backbone``
sub-model; ``TeacherPreprocess`` in front of it applies the declared resize,
crop and normalisation to uint8 images. A SavedModel is called through
``keras.layers.TFSMLayer`` (its ``serving_default`` signature), which refers
to the directory by path: keep the directory where it is.
"""

from __future__ import annotations

import os

import keras


def _load_inner(path, endpoint):
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Model file {path!r} does not exist.")
        from ega_tf import serialization
        return serialization.load_model(path, compile=False)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return keras.layers.TFSMLayer(os.path.abspath(path),
                                      call_endpoint=endpoint,
                                      name="saved_model")
    raise FileNotFoundError(
        f"{path!r} is neither a .keras file nor a SavedModel directory "
        "(one holding saved_model.pb).")


def wrap(path, *, image_size=None, resize_shorter=None, crop_size=None,
         interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
         output=None, endpoint="serving_default"):
    """The teacher ``keras.Model`` around the model at ``path``.

    Declare either ``image_size`` (resize to it) or ``resize_shorter`` and
    ``crop_size`` (torchvision style); ``output`` names the embedding when
    the model returns a dict of several tensors.
    """
    from ega_tf import teachers
    from ega_tf.teachers.convert import sha256

    side = crop_size or image_size
    if not side or (resize_shorter and not crop_size):
        raise ValueError("Declare the model's input: --image_size=S, or "
                         "--resize_shorter=R with --crop_size=S.")
    inner = _load_inner(os.fspath(path), endpoint)
    inputs = keras.Input((side, side, 3), name="pixels")
    out = inner(inputs)
    if isinstance(out, dict):
        if output is None and len(out) == 1:
            output = next(iter(out))
        if output not in out:
            raise ValueError(f"The model returns {sorted(out)}; pass "
                             "--output with the embedding's name.")
        out = out[output]
    if len(out.shape) != 2:
        raise ValueError(
            f"The model returns shape {tuple(out.shape)}; a teacher needs "
            "[N, F]. Add global pooling to the model, or export the layer "
            "that gives the embedding.")
    backbone = keras.Model(inputs, out, name="backbone")
    preprocess = teachers.TeacherPreprocess(
        mean, std, image_size=(side, side) if image_size else None,
        resize_shorter=resize_shorter, crop_size=crop_size,
        interpolation=interpolation, antialias=True, name="preprocess",
        metadata={"family": "user", "source_file": os.path.basename(
            os.path.normpath(path)),
            "source_sha256": sha256(path) if os.path.isfile(path) else None,
            "embedding_dim": int(out.shape[-1]), "input_resolution": side})
    return teachers.assemble(backbone, preprocess, name="user_teacher")
