"""Published self-supervised checkpoints -> ``.keras`` teachers.

One shape for every family (see ../shared/reference/ssl_checkpoints.md):
read the file, find the state dict, detect the family from its keys (or take
``--format``), keep the backbone's keys under the family's prefix, drop
heads only by named patterns, port every tensor through one strict porter,
and wrap the network with the family's preprocessing and metadata.

Families supported here:

- torchvision-layout ResNets (``resnet.py``): ``torchvision``, ``moco``
  (v1/v2), ``mocov3`` (ResNet-50), ``swav``, ``barlow_twins``, ``vicreg``,
  ``dino`` (ResNet-50);
- timm-layout ViTs (``vit.py``): ``dino_vit``, ``mocov3_vit``;
- CLIP (``clip_resnet.py``, ``clip_vit.py``): ``clip`` (OpenAI's
  ModifiedResNet), ``clip_vit`` (OpenAI's ViTs, QuickGELU) and
  ``open_clip_gelu`` (open_clip ViTs trained with the exact GELU), from
  TorchScript ``.pt`` files, state dicts or ``.safetensors``.

- SimCLR v1/v2 (``simclr.py``): ``simclr``, TF1 checkpoints read with
  ``tf.train.load_checkpoint`` (a checkpoint prefix, its ``.index`` file,
  or a directory with a ``checkpoint`` file); no PyTorch needed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import os
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from ega_tf.teachers.porting import ConversionError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SWAV_STD = (0.228, 0.224, 0.225)


# CLIP's text tower and the scalars OpenAI's TorchScript files carry.
_CLIP_TEXT = ("transformer.*", "token_embedding.*", "positional_embedding",
              "ln_final.*", "text_projection", "logit_scale", "logit_bias",
              "attn_mask", "input_resolution", "context_length", "vocab_size")
_OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    prefix: str               # backbone keys start with this; it is stripped
    outside: Tuple[str, ...]  # keys outside the prefix that may be dropped
    inside: Tuple[str, ...]   # stripped keys that may be dropped (heads)
    std: Tuple[float, ...] = IMAGENET_STD
    interpolation: str = "pil_bilinear"  # torchvision's Resize on PIL
    arch: str = "resnet"      # ega_tf.teachers module that builds and ports
    mean: Tuple[float, ...] = IMAGENET_MEAN
    resize_shorter: Optional[int] = 256  # None: the network's resolution
    options: Tuple[Tuple[str, object], ...] = ()  # for the arch's infer_arch
    crop_fraction: Optional[float] = None  # SimCLR: crop, then resize


FAMILIES: Dict[str, Family] = {f.name: f for f in [
    Family("torchvision", "", (), ("fc.*",)),
    Family("barlow_twins", "", (), ()),
    Family("vicreg", "", (), ()),
    Family("moco", "module.encoder_q.",
           ("module.encoder_k.*", "queue", "queue_ptr"), ("fc.*",)),
    Family("mocov3", "module.base_encoder.",
           ("module.momentum_encoder.*", "module.predictor.*"), ("fc.*",)),
    Family("swav", "module.", (), ("projection_head.*", "prototypes.*"),
           std=SWAV_STD),
    Family("dino", "", (), ("head.*",), interpolation="pil_bicubic"),
    Family("simclr", "base_model/",
           ("head_supervised/*", "head_contrastive/*", "global_step",
            "ema_model/*", "*/Momentum"), ("*/Momentum",),
           mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bicubic",
           arch="simclr", resize_shorter=None, crop_fraction=0.875),
    Family("dino_vit", "", (), ("head.*",), interpolation="pil_bicubic",
           arch="vit", options=(("head_dim", 64),)),
    Family("mocov3_vit", "module.base_encoder.",
           ("module.momentum_encoder.*", "module.predictor.*"), ("head.*",),
           arch="vit", options=(("num_heads", 12),)),
    Family("clip", "visual.", _CLIP_TEXT, (), std=CLIP_STD, mean=CLIP_MEAN,
           interpolation="pil_bicubic", arch="clip_resnet", resize_shorter=None),
    Family("clip_vit", "visual.", _CLIP_TEXT, (), std=CLIP_STD,
           mean=CLIP_MEAN, interpolation="pil_bicubic", arch="clip_vit",
           resize_shorter=None, options=(("activation", "quick_gelu"),)),
    Family("open_clip_gelu", "visual.", _CLIP_TEXT, (), std=CLIP_STD,
           mean=CLIP_MEAN, interpolation="pil_bicubic", arch="clip_vit",
           resize_shorter=None, options=(("activation", "gelu"),)),
]}


def _require_torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "Reading a PyTorch checkpoint needs PyTorch: "
            "pip install 'ega_tf[convert]' (installs torch==2.13.0, CPU).") \
            from None
    return torch


def _is_torchscript(path):
    import zipfile
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def read_checkpoint(path, allow_pickle=False):
    """The file's top-level object, tensors as numpy arrays. TorchScript
    archives (OpenAI CLIP's ``.pt`` files) give their ``state_dict()``;
    TF checkpoints and ``.safetensors`` files a dict of their tensors."""
    path = os.fspath(path)
    tf_prefix = _tf_checkpoint_prefix(path)
    if tf_prefix:
        return _read_tf_checkpoint(tf_prefix)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    if path.endswith(".safetensors"):
        return _read_safetensors(path)
    torch = _require_torch()
    if _is_torchscript(path):
        return _to_numpy(dict(torch.jit.load(path, map_location="cpu")
                              .state_dict()))
    try:
        obj = torch.load(path, map_location="cpu",
                         weights_only=not allow_pickle)
    except Exception as e:
        text = str(e)
        if "weights_only" in text or "Unsupported global" in text:
            raise ConversionError(
                f"{path!r} holds Python objects besides tensors (e.g. saved "
                "training arguments). If you trust the file, rerun with "
                "--allow_pickle.") from None
        raise ConversionError(
            f"Could not read {path!r} as a PyTorch checkpoint ({text.splitlines()[0][:200]}). "
            "Is the file complete (not truncated) and a .pth/.pth.tar/.pt "
            "file?") from None
    return _to_numpy(obj)


def _tf_checkpoint_prefix(path):
    """The TF checkpoint prefix ``path`` names (the prefix itself, its
    ``.index`` file, or a directory holding a ``checkpoint`` file), or
    None."""
    import glob
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
            f"({str(e).splitlines()[0][:200]}). Are its .index and "
            ".data-* files complete?") from None


def _read_safetensors(path):
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise ImportError("Reading .safetensors files needs safetensors: "
                          "pip install 'ega_tf[convert]'.") from None
    try:
        tensors = load_file(path)
    except Exception as e:
        raise ConversionError(
            f"Could not read {path!r} as a safetensors file "
            f"({str(e).splitlines()[0][:200]}).") from None
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
    ``teacher`` (its ``module.``/``backbone.`` prefixes stripped), else
    ``state_dict`` or the object itself; open_clip's ``module.`` prefix is
    stripped."""
    if not isinstance(obj, dict):
        raise ConversionError("The checkpoint is not a dict of tensors.")
    if "teacher" in obj and isinstance(obj["teacher"], dict):
        return {_strip_dino(k): v for k, v in obj["teacher"].items()}, "dino"
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not any(isinstance(v, np.ndarray) for v in obj.values()):
        raise ConversionError("No tensors found in the checkpoint (keys: "
                              + ", ".join(list(obj)[:10]) + ").")
    if any(k.startswith("module.visual.") for k in obj):
        # open_clip training checkpoints keep DistributedDataParallel's prefix.
        obj = {k[len("module."):] if k.startswith("module.") else k: v
               for k, v in obj.items()}
    return obj, None


def _strip_dino(key):
    for p in ("module.", "backbone."):
        if key.startswith(p):
            key = key[len(p):]
    return key


def detect_family(keys, hint=None) -> Family:
    """The family whose layout ``keys`` follow (``hint`` from the wrapper)."""
    keys = list(keys)
    vit = any(k.startswith(("patch_embed.", "module.base_encoder.patch_embed",
                            "visual.class_embedding")) for k in keys)
    if hint:
        if vit and hint in ("dino", "mocov3"):
            hint += "_vit"  # the ResNet name given for a ViT file
        return FAMILIES[hint]
    if "visual.attnpool.positional_embedding" in keys:
        return FAMILIES["clip"]
    if "visual.class_embedding" in keys:
        if any(k in keys for k in _OPENAI_MARKERS):
            return FAMILIES["clip_vit"]
        raise ConversionError(
            "This is a CLIP ViT state dict without OpenAI's markers (an "
            "open_clip file?). Its MLP activation cannot be read off the "
            "weights, and a wrong one fails silently: pass --format=clip_vit "
            "for QuickGELU (OpenAI weights; open_clip tags openai, "
            "laion400m_*, metaclip_*) or --format=open_clip_gelu for the "
            "exact GELU (open_clip's laion2b_*, datacomp_* and other tags).")
    if any(k.startswith("base_model/") for k in keys):
        return FAMILIES["simclr"]
    if any(k.startswith("module.base_encoder.patch_embed") for k in keys):
        return FAMILIES["mocov3_vit"]
    if "patch_embed.proj.weight" in keys:
        return FAMILIES["dino_vit"]
    if any(k.startswith("module.encoder_q.") for k in keys):
        return FAMILIES["moco"]
    if any(k.startswith("module.base_encoder.") for k in keys):
        return FAMILIES["mocov3"]
    if any(k.startswith(("module.prototypes", "module.projection_head"))
           for k in keys) or "module.conv1.weight" in keys:
        return FAMILIES["swav"]
    if "conv1.weight" in keys:
        return FAMILIES["torchvision" if "fc.weight" in keys
                        else "barlow_twins"]
    raise ConversionError(
        "Could not recognise the checkpoint's layout (first keys: "
        + ", ".join(keys[:8]) + "). Pass --format with one of: "
        + ", ".join(FAMILIES) + ".")


def backbone_state(state, family: Family):
    """Keys under the family's prefix, stripped; everything else must match
    an ignore pattern."""
    kept, stray = {}, []
    for k, v in state.items():
        if k.startswith(family.prefix):
            kept[k[len(family.prefix):]] = v
        elif not any(fnmatch.fnmatchcase(k, p) for p in family.outside):
            stray.append(k)
    if stray:
        raise ConversionError(
            f"{len(stray)} key(s) outside the {family.name} backbone prefix "
            f"{family.prefix!r} and not known heads: " + ", ".join(stray[:20]))
    return kept


def source_files(path):
    """The file(s) a checkpoint consists of (a TF checkpoint: its .index and
    .data-* files), or [] when there is none."""
    path = os.fspath(path)
    if os.path.isfile(path) and not path.endswith(".index"):
        return [path]
    import glob
    prefix = _tf_checkpoint_prefix(path)
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


def convert(path, fmt: Optional[str] = None, allow_pickle=False,
            log: Callable[[str], None] = print):
    """Converts checkpoint ``path``; returns the teacher ``keras.Model``."""
    path = os.fspath(path)
    import importlib

    from ega_tf import teachers
    from ega_tf.registry import check_choice

    if fmt is not None:
        check_choice("checkpoint format", fmt, list(FAMILIES))
    state, hint = find_state_dict(read_checkpoint(path, allow_pickle))
    family = detect_family(state.keys(), fmt or hint)
    kept = backbone_state(state, family)
    module = importlib.import_module(f"ega_tf.teachers.{family.arch}")
    arch = module.infer_arch(kept, **dict(family.options))
    backbone = module.build(arch)
    used = module.port(backbone, kept, ignore=family.inside)
    log(f"{family.name}: ported {len(used)} tensors into {family.arch} "
        f"{arch}")
    resolution = arch.get("resolution", 224)
    if family.crop_fraction:  # SimCLR: centre crop, resize, clip to [0, 1]
        resize = dict(image_size=(resolution, resolution),
                      crop_fraction=family.crop_fraction, clip=True)
    else:
        resize = dict(resize_shorter=family.resize_shorter or resolution,
                      crop_size=resolution, antialias=True)
    preprocess = teachers.TeacherPreprocess(
        family.mean, family.std, interpolation=family.interpolation,
        name="preprocess", **resize, metadata={
            "family": family.name, "source_file": os.path.basename(path),
            "source_sha256": sha256(path), "architecture": family.arch,
            **arch, "embedding_dim": int(backbone.output_shape[-1]),
            "input_resolution": resolution})
    return teachers.assemble(backbone, preprocess,
                             name=f"{family.name}_{family.arch}")
