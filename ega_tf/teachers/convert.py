"""Published self-supervised checkpoints -> ``.keras`` teachers.

One shape for every family: read the file (``checkpoint_io``), find the
state dict, detect the family from its keys (or take ``--format``), keep the
backbone's keys under the family's prefix, drop heads only by named
patterns, port every tensor through one strict porter (the family's
architecture module), and wrap the network with the family's preprocessing
and metadata. docs/checkpoints.md lists the families, their files and the
parity measured against each publisher's framework.
"""

from __future__ import annotations

import fnmatch
import os
from typing import Callable, Optional

import numpy as np

from ega_tf.core.errors import ConversionError, UserError
from ega_tf.teachers import checkpoint_io, families
from ega_tf.teachers.families import FAMILIES, OPENAI_MARKERS, Family


def _cifar_stem(state, prefix):
    """Whether the ResNet under ``prefix`` has a 3x3 first convolution."""
    w = state.get(prefix + "conv1.weight")
    return w is not None and np.shape(w)[-1] == 3


def detect_family(state, hint=None) -> Family:
    """The family whose layout the state dict follows (``hint`` from the
    wrapper or ``--format``)."""
    keys = list(state)
    vit = any(k.startswith(("patch_embed.", "module.base_encoder.patch_embed",
                            "visual.class_embedding")) for k in keys)
    if hint:
        if vit and hint in ("dino", "mocov3"):
            hint += "_vit"  # the ResNet name given for a ViT file
        if hint == "lightning" and _cifar_stem(state, "backbone."):
            hint = "lightning_cifar"
        return families.get(hint)
    if "visual.attnpool.positional_embedding" in keys:
        return FAMILIES["clip"]
    if "visual.class_embedding" in keys:
        if any(k in keys for k in OPENAI_MARKERS):
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
    if any("/~/initial_conv/w" in k for k in keys):
        return FAMILIES["byol_deepmind"]
    if "downsample_layers.0.0.weight" in keys:
        return FAMILIES["dinov3_convnext"]
    if "storage_tokens" in keys:
        return FAMILIES["dinov3"]
    if "patch_embed.proj.weight" in keys and (
            "blocks.0.ls1.gamma" in keys or "register_tokens" in keys):
        return FAMILIES["dinov2"]  # LayerScale: DINO v1 has none
    if "patch_embed.proj.weight" in keys:
        return FAMILIES["dino_vit"]
    if "backbone.conv1.weight" in keys:
        if any(k.startswith(("neck.", "target_net.")) for k in keys):
            return FAMILIES["mmselfsup"]
        if any(fnmatch.fnmatchcase(k, p) for k in keys
               for p in families.LIGHTNING_HEADS):
            return FAMILIES["lightning_cifar" if _cifar_stem(state, "backbone.")
                            else "lightning"]
    if any(k.startswith("module.encoder_q.") for k in keys):
        return FAMILIES["moco"]
    if any(k.startswith("module.base_encoder.") for k in keys):
        return FAMILIES["mocov3"]
    if any(k.startswith(("module.prototypes", "module.projection_head"))
           for k in keys) or "module.conv1.weight" in keys:
        return FAMILIES["swav"]
    if "block0.0.weight" in keys or "block1.layer.0.conv1.weight" in keys \
            or ("layer1.0.conv1.weight" in keys and "layer4.0.conv1.weight"
                not in keys) or "linear.weight" in keys:
        return FAMILIES["repdistiller"]  # its CIFAR nets, as a bare dict
    if "conv1.weight" in keys:
        return FAMILIES["torchvision" if "fc.weight" in keys
                        else "barlow_twins"]
    raise ConversionError(
        "Could not recognise the checkpoint's layout (first keys: "
        + ", ".join(keys[:8]) + "). Pass --format with one of: "
        + ", ".join(FAMILIES) + ".")


def backbone_state(state, family: Family):
    """Keys under the family's prefix, stripped; everything else must match
    one of the family's drop patterns."""
    kept, stray = {}, []
    for k, v in state.items():
        if k.startswith(family.backbone_prefix):
            kept[k[len(family.backbone_prefix):]] = v
        elif not any(fnmatch.fnmatchcase(k, p) for p in family.drop_outside):
            stray.append(k)
    if stray:
        raise ConversionError(
            f"{len(stray)} key(s) outside the {family.name} backbone prefix "
            f"{family.backbone_prefix!r} and not known heads: "
            + ", ".join(stray[:20]))
    return kept


def check_options(family: Family, options):
    """Refuses conversion options (``--input_size``, ``--feature``) the
    family does not take."""
    extra = sorted(k for k, v in options.items()
                   if v is not None and k not in family.options)
    if extra:
        takes = [f.name for f in FAMILIES.values() if set(extra) <=
                 set(f.options)]
        raise UserError(
            f"--{extra[0]} does not apply to a {family.name} checkpoint "
            "(its input size is its publisher's evaluation size, its output "
            f"the family's); it applies to: {', '.join(takes) or 'none'} and"
            " Hugging Face folders.")
    return {k: v for k, v in options.items() if v is not None}


def load_backbone(path, fmt: Optional[str] = None, allow_pickle=False,
                  **options):
    """(family, arch dict, backbone state) of checkpoint ``path``;
    ``options`` (input_size, feature) for the families that take them."""
    if fmt is not None:
        families.get(fmt)
    state, hint = checkpoint_io.find_state_dict(
        checkpoint_io.read_checkpoint(path, allow_pickle))
    family = detect_family(state, fmt or hint)
    options = check_options(family, options)
    kept = backbone_state(state, family)
    arch = family.module.infer_arch(kept, **dict(family.arch_options),
                                    **options)
    return family, arch, kept


def convert(path, fmt: Optional[str] = None, allow_pickle=False,
            log: Callable[[str], None] = print, **options):
    """Converts checkpoint ``path``; returns the teacher ``keras.Model``.
    ``options``: ``input_size`` and ``feature``, for the families that take
    them (``Family.options``)."""
    path = os.fspath(path)
    from ega_tf.teachers import hf_folder
    if hf_folder.is_folder(path):
        if fmt is not None:
            raise UserError("--format names a checkpoint file's layout; a "
                            "Hugging Face folder says its own (config.json's"
                            " model_type): drop --format.")
        return hf_folder.convert(path, log=log, **options)
    family, arch, kept = load_backbone(path, fmt, allow_pickle, **options)
    return build_teacher(path, family, arch, kept, log)


def build_teacher(path, family, arch, kept, log=print):
    """The teacher of ``load_backbone``'s result: the family's network with
    the backbone state ported strictly, its preprocessing and metadata."""
    from ega_tf.teachers.preprocess import TeacherPreprocess
    from ega_tf.teachers.teacher_file import assemble

    backbone = family.module.build(arch)
    classifier = (family.module.build_classifier(
        arch, int(backbone.output_shape[-1])) if family.classifier else None)
    used = family.module.port(backbone, kept, ignore=family.drop_heads,
                              **({"classifier": classifier} if classifier
                                 else {}))
    log(f"{family.name}: ported {len(used)} tensors into "
        f"{family.architecture} {arch}")
    size = families.default_input_size(arch)
    preprocess = TeacherPreprocess(
        name="preprocess", **family.preprocessing(size), metadata={
            "family": family.name, "source_file": os.path.basename(path),
            "source_sha256": checkpoint_io.sha256(path),
            "architecture": family.architecture, **arch,
            "embedding_dim": int(backbone.output_shape[-1]),
            "input_resolution": size,
            **({"num_classes": int(classifier.units)} if classifier
               else {})})
    name = f"{family.name}_{arch.get('network', family.architecture)}"
    return assemble(backbone, preprocess, name=name, classifier=classifier)
