"""Published self-supervised checkpoints -> ``.keras`` teachers.

One shape for every family (see ../shared/reference/ssl_checkpoints.md):
read the file, find the state dict, detect the family from its keys (or take
``--format``), keep the backbone's keys under the family's prefix, drop
heads only by named patterns, port every tensor through one strict porter,
and wrap the network with the family's preprocessing and metadata.

Families supported here: torchvision-layout ResNets, i.e. ``torchvision``,
``moco`` (v1/v2), ``mocov3`` (ResNet-50), ``swav``, ``barlow_twins``,
``vicreg`` and ``dino`` (ResNet-50); and ``clip``, OpenAI CLIP's
ModifiedResNet (RN50, RN101, ...) from its TorchScript ``.pt`` file or a
state dict. ViTs (CLIP, DINO, MoCo v3), SimCLR TF1 and BYOL checkpoints are
recognised and refused with a message until their converters exist.
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


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    prefix: str               # backbone keys start with this; it is stripped
    outside: Tuple[str, ...]  # keys outside the prefix that may be dropped
    inside: Tuple[str, ...]   # stripped keys that may be dropped (heads)
    std: Tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    arch: str = "resnet"      # ega_tf.teachers module that builds and ports
    mean: Tuple[float, ...] = IMAGENET_MEAN
    resize_shorter: Optional[int] = 256  # None: the network's resolution


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
    Family("dino", "", (), ("head.*",), interpolation="bicubic"),
    Family("clip", "visual.",
           ("transformer.*", "token_embedding.*", "positional_embedding",
            "ln_final.*", "text_projection", "logit_scale",
            "input_resolution", "context_length", "vocab_size"), (),
           std=CLIP_STD, mean=CLIP_MEAN, interpolation="bicubic",
           arch="clip_resnet", resize_shorter=None),
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
    archives (OpenAI CLIP's ``.pt`` files) give their ``state_dict()``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
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


def _to_numpy(obj):
    if hasattr(obj, "detach") and hasattr(obj, "numpy"):
        return obj.detach().cpu().float().numpy() if obj.is_floating_point() \
            else obj.detach().cpu().numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    return obj


def find_state_dict(obj):
    """The tensor dict inside a checkpoint: ``state_dict``, DINO's
    ``teacher`` (its ``module.``/``backbone.`` prefixes stripped), or the
    object itself."""
    if not isinstance(obj, dict):
        raise ConversionError("The checkpoint is not a dict of tensors.")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):
        return obj["state_dict"], None
    if "teacher" in obj and isinstance(obj["teacher"], dict):
        return {_strip_dino(k): v for k, v in obj["teacher"].items()}, "dino"
    tensors = {k: v for k, v in obj.items() if isinstance(v, np.ndarray)}
    if not tensors:
        raise ConversionError("No tensors found in the checkpoint (keys: "
                              + ", ".join(list(obj)[:10]) + ").")
    return obj, None


def _strip_dino(key):
    for p in ("module.", "backbone."):
        if key.startswith(p):
            key = key[len(p):]
    return key


_REFUSED = {
    "visual.class_embedding": "CLIP ViT",
    "module.base_encoder.patch_embed": "MoCo v3 ViT",
    "patch_embed.proj.weight": "DINO / timm ViT",
    "base_model/": "SimCLR (TF1)",
}


def detect_family(keys, hint=None) -> Family:
    """The family whose layout ``keys`` follow (``hint`` from the wrapper)."""
    keys = list(keys)
    for marker, what in _REFUSED.items():
        if any(k.startswith(marker) for k in keys):
            raise ConversionError(
                f"This looks like a {what} checkpoint; its converter is not "
                f"available yet. Supported: {', '.join(FAMILIES)}.")
    if hint:
        return FAMILIES[hint]
    if "visual.attnpool.positional_embedding" in keys:
        return FAMILIES["clip"]
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


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(path, fmt: Optional[str] = None, allow_pickle=False,
            log: Callable[[str], None] = print):
    """Converts checkpoint ``path``; returns the teacher ``keras.Model``."""
    import importlib

    from ega_tf import teachers
    from ega_tf.registry import check_choice

    if fmt is not None:
        check_choice("checkpoint format", fmt, list(FAMILIES))
    state, hint = find_state_dict(read_checkpoint(path, allow_pickle))
    family = detect_family(state.keys(), fmt or hint)
    kept = backbone_state(state, family)
    module = importlib.import_module(f"ega_tf.teachers.{family.arch}")
    arch = module.infer_arch(kept)
    backbone = module.build(arch)
    used = module.port(backbone, kept, ignore=family.inside)
    log(f"{family.name}: ported {len(used)} tensors into {family.arch} "
        f"{arch}")
    resolution = arch.get("resolution", 224)
    preprocess = teachers.TeacherPreprocess(
        family.mean, family.std,
        resize_shorter=family.resize_shorter or resolution,
        crop_size=resolution, interpolation=family.interpolation,
        antialias=True, name="preprocess", metadata={
            "family": family.name, "source_file": os.path.basename(path),
            "source_sha256": sha256(path), "architecture": family.arch,
            **arch, "embedding_dim": int(backbone.output_shape[-1]),
            "input_resolution": resolution})
    return teachers.assemble(backbone, preprocess,
                             name=f"{family.name}_{family.arch}")
