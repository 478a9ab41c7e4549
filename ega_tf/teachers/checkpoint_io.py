"""Reading a published checkpoint into a dict of numpy arrays.

Formats: PyTorch pickles (``.pth``, ``.pth.tar``, ``.pt``, ``.bin``) read
with ``torch.load(weights_only=True)`` unless ``allow_pickle``; TorchScript
archives (OpenAI CLIP's ``.pt``), whose ``state_dict()`` is taken;
``.safetensors`` files; TF1/TF2 name-based checkpoints (SimCLR), given as
their prefix, their ``.index`` file or their directory. Only the PyTorch
formats need PyTorch, imported when such a file is read.

``allow_pickle`` lets ``torch.load`` run the pickle, which can execute any
code the file carries: only for files from a source you trust.
"""

from __future__ import annotations

import glob
import hashlib
import os
import zipfile

import numpy as np

from ega_tf.core.errors import ConversionError, UserError, first_line

PICKLE_WARNING = ("--allow_pickle runs code stored in the file: use it only "
                  "for a checkpoint from a source you trust")


def _require_torch():
    try:
        import torch
    except ImportError:
        raise UserError(
            "Reading a PyTorch checkpoint needs PyTorch: "
            "pip install 'ega_tf[convert]' (installs torch==2.13.0, CPU).") \
            from None
    return torch


def _is_torchscript(path):
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def _looks_like_torch_file(path):
    """PyTorch writes zip archives (since 1.6) or legacy pickles, whose
    first byte is the pickle protocol marker 0x80."""
    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"


def read_checkpoint(path, allow_pickle=False):
    """The file's top-level object, tensors as numpy arrays."""
    path = os.fspath(path)
    tf_prefix = tf_checkpoint_prefix(path)
    if tf_prefix:
        return _read_tf_checkpoint(tf_prefix)
    if not os.path.isfile(path):
        raise UserError(f"Checkpoint {path!r} does not exist.")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    if path.endswith(".pkl"):
        if not allow_pickle:
            raise ConversionError(
                f"{path!r} is a Python pickle (DeepMind's BYOL release). "
                "ega_tf reads it without importing or running what it names,"
                " but only when asked: add --allow_pickle.")
        from ega_tf.teachers import byol
        return byol.read_pickle(path)
    if not _looks_like_torch_file(path):
        raise ConversionError(
            f"{path!r} is not a checkpoint: it is neither a PyTorch file "
            "(zip or pickle), a .safetensors file nor a TensorFlow "
            "checkpoint. Check the file name and that the download finished.")
    torch = _require_torch()
    if _is_torchscript(path):
        try:
            return _to_numpy(dict(torch.jit.load(path, map_location="cpu")
                                  .state_dict()))
        except Exception as e:
            raise ConversionError(
                f"Could not read {path!r} as a TorchScript archive "
                f"({first_line(e)}). Is the file complete?") from None
    try:
        obj = torch.load(path, map_location="cpu",
                         weights_only=not allow_pickle)
    except Exception as e:
        text = str(e)
        if not allow_pickle and ("weights_only" in text
                                 or "Unsupported global" in text):
            raise ConversionError(
                f"{path!r} stores Python objects besides tensors (e.g. saved "
                "training arguments), which only unpickling can read. "
                + PICKLE_WARNING + ": `python -m ega_tf.convert_teacher "
                f"--checkpoint={path} --allow_pickle --out=teacher.keras` "
                "(or train --allow_pickle).") from None
        raise ConversionError(
            f"Could not read {path!r} as a PyTorch checkpoint "
            f"({first_line(e)}). Is the file complete (not truncated) and a "
            ".pth/.pth.tar/.pt file?") from None
    return _to_numpy(obj)


def tf_checkpoint_prefix(path):
    """The TF checkpoint prefix ``path`` names (the prefix itself, its
    ``.index`` file, or a directory holding a ``checkpoint`` file), or
    None."""
    if os.path.isfile(os.path.join(path, "config.json")):
        return None  # a Hugging Face folder
    if os.path.isdir(path):
        import tensorflow as tf
        return tf.train.latest_checkpoint(path)
    if path.endswith(".index"):
        path = path[:-len(".index")]
    if os.path.isfile(path + ".index") and glob.glob(path + ".data-*"):
        return path
    return None


def _read_tf_checkpoint(prefix):
    import tensorflow as tf
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = reader.get_variable_to_shape_map()
        return {k: reader.get_tensor(k) for k in names}
    except Exception as e:
        raise ConversionError(
            f"Could not read the TensorFlow checkpoint {prefix!r} "
            f"({first_line(e)}). Are its .index and .data-* files "
            "complete?") from None


def _read_safetensors(path):
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise UserError("Reading .safetensors files needs safetensors: "
                        "pip install 'ega_tf[convert]'.") from None
    try:
        tensors = load_file(path)
    except Exception as e:
        raise ConversionError(
            f"Could not read {path!r} as a safetensors file "
            f"({first_line(e)}).") from None
    return {k: v.astype(np.float32) if v.dtype.kind == "f" else v
            for k, v in tensors.items()}


def _to_numpy(obj):
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):
        return obj.detach().cpu().float().numpy() if obj.is_floating_point() \
            else obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    return obj


def find_state_dict(obj):
    """The tensor dict inside a checkpoint, and a family hint: DINO's
    ``teacher`` (its ``module.``/``backbone.`` prefixes stripped),
    RepDistiller's ``model``, else ``state_dict`` or the object itself
    (PyTorch Lightning's: hint "lightning"; mmselfsup's extracted backbone:
    "mmselfsup_backbone"); open_clip's ``module.`` prefix is stripped."""
    if not isinstance(obj, dict):
        raise ConversionError("The checkpoint is not a dict of tensors.")
    if "teacher" in obj and isinstance(obj["teacher"], dict):
        return {_strip_dino(k): v for k, v in obj["teacher"].items()}, "dino"
    if "model" in obj and isinstance(obj["model"], dict) and any(
            isinstance(v, np.ndarray) for v in obj["model"].values()):
        return dict(obj["model"]), "repdistiller"
    hint = None
    if "pytorch-lightning_version" in obj:
        hint = "lightning"
    elif obj.get("author") == "MMSelfSup":  # its backbone-extraction tool
        hint = "mmselfsup_backbone"
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if hint == "lightning":
        # solo-learn before its December 2021 rename; its own linear
        # evaluation reads such files the same way.
        obj = {("backbone." + k[len("encoder."):] if k.startswith("encoder.")
                else "momentum_backbone." + k[len("momentum_encoder."):]
                if k.startswith("momentum_encoder.") else k): v
               for k, v in obj.items()}
    if not any(isinstance(v, np.ndarray) for v in obj.values()):
        raise ConversionError("No tensors found in the checkpoint (keys: "
                              + ", ".join(list(obj)[:10]) + ").")
    if any(k.startswith("module.visual.") for k in obj):
        # open_clip training checkpoints keep DistributedDataParallel's prefix.
        obj = {k[len("module."):] if k.startswith("module.") else k: v
               for k, v in obj.items()}
    return obj, hint


def _strip_dino(key):
    for p in ("module.", "backbone."):
        if key.startswith(p):
            key = key[len(p):]
    return key


def source_files(path):
    """The file(s) a checkpoint consists of (a TF checkpoint: its .index and
    .data-* files), or [] when there is none."""
    path = os.fspath(path)
    if os.path.isfile(path) and not path.endswith(".index"):
        return [path]
    if os.path.isfile(os.path.join(path, "config.json")):
        # A Hugging Face folder: its config and weights.
        return [os.path.join(path, n) for n in ["config.json"] + sorted(
            n for n in os.listdir(path) if n.endswith(".safetensors"))]
    prefix = tf_checkpoint_prefix(path)
    return sorted([prefix + ".index", *glob.glob(prefix + ".data-*")]) \
        if prefix else []


def sha256(path):
    """SHA-256 of the checkpoint's bytes (all its files, in order)."""
    h = hashlib.sha256()
    for name in source_files(path):
        with open(name, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
