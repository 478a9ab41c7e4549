"""Checkpoint families: how each published file is laid out, which network
holds it, and how its images are preprocessed.

A family names the key prefix of the backbone, the keys it may drop (heads,
momentum encoders, queues, text towers; each by an explicit pattern, so a
stray key stops the conversion), the architecture module that builds and
fills the Keras network, and the evaluation transform in timm's vocabulary.
docs/checkpoints.md describes every family's published layout.

Every architecture module offers the same three functions::

    infer_arch(state, **family.arch_options) -> dict   # sizes read off the file
    build(arch) -> keras.Model named "backbone"          # float NHWC -> [N, F]
    port(model, state, ignore=patterns) -> [keys used]   # strict copy
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType
from typing import Dict, Tuple

from ega_tf.core.constants import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN,
                                   CIFAR100_STD, CLIP_MEAN,
                                   CLIP_STD, IMAGENET_MEAN, IMAGENET_STD,
                                   SWAV_STD)

# The modules that build and port each architecture, imported when a
# family's is first needed (they import Keras; the family table is read by
# --help, which must not start TensorFlow).
ARCHITECTURES: Dict[str, str] = {
    "resnet": "resnet",            # torchvision-layout ResNets (keras-hub)
    "clip_resnet": "clip_resnet",  # OpenAI CLIP's ModifiedResNet
    "vit": "vit",                  # timm-layout ViTs (keras-hub)
    "dinov2": "dinov2",            # DINOv2 ViTs (keras-hub DINOV2Backbone)
    "dinov3": "dinov3",            # DINOv3 ViTs (keras-hub DINOV3Backbone)
    "convnext": "convnext",        # DINOv3 ConvNeXts (keras.applications)
    "haiku_resnet": "byol",        # DeepMind BYOL's Haiku ResNets
    "clip_vit": "clip_vit",        # CLIP / open_clip ViTs (keras-hub)
    "simclr": "simclr",            # SimCLR v1/v2 TF1 ResNets
    "repdistiller": "repdistiller",  # RepDistiller's CIFAR networks (zoo)
}

# CLIP's text tower and the scalars OpenAI's TorchScript files carry.
CLIP_TEXT_TOWER = ("transformer.*", "token_embedding.*",
                   "positional_embedding", "ln_final.*", "text_projection",
                   "logit_scale", "logit_bias", "attn_mask",
                   "input_resolution", "context_length", "vocab_size")
OPENAI_MARKERS = ("input_resolution", "context_length", "vocab_size")


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    # Keys of the backbone start with this; it is stripped before porting.
    backbone_prefix: str
    # Keys outside the prefix that may be dropped (momentum encoders, ...).
    drop_outside: Tuple[str, ...]
    # Keys inside the prefix (stripped) that may be dropped (heads).
    drop_heads: Tuple[str, ...]
    # The module in ARCHITECTURES that builds and ports the network.
    architecture: str = "resnet"
    # Keyword arguments for that module's infer_arch.
    arch_options: Tuple[Tuple[str, object], ...] = ()
    # The evaluation transform (timm's PretrainedCfg vocabulary).
    crop_pct: float = 0.875            # 224 / 256
    crop_mode: str = "center"
    interpolation: str = "pil_bilinear"  # torchvision's Resize on PIL
    mean: Tuple[float, ...] = IMAGENET_MEAN
    std: Tuple[float, ...] = IMAGENET_STD
    clip: bool = False
    antialias: bool = True  # tf.image.resize methods only; PIL's always is
    # Conversion options (--input_size, --feature) its infer_arch takes.
    options: Tuple[str, ...] = ()
    # A supervised network whose classifier the teacher file keeps (layer
    # "classifier"; the architecture module builds and ports it).
    classifier: bool = False

    @property
    def module(self) -> ModuleType:
        """The architecture's module, imported when a conversion needs it:
        it imports Keras, and ``convert_teacher --help`` lists this table
        without starting TensorFlow."""
        return importlib.import_module(
            f"ega_tf.teachers.{ARCHITECTURES[self.architecture]}")

    def preprocessing(self, input_size) -> dict:
        """Keyword arguments of ``TeacherPreprocess`` for this family."""
        return dict(input_size=input_size, crop_pct=self.crop_pct,
                    crop_mode=self.crop_mode,
                    interpolation=self.interpolation, mean=self.mean,
                    std=self.std, clip=self.clip, antialias=self.antialias)


# PyTorch Lightning checkpoints of solo-learn and LightlySSL: the
# backbone under ``backbone.`` (solo-learn before December 2021:
# ``encoder.``, renamed on reading), every other module of the method by
# name.
LIGHTNING_HEADS = (
    "projector.*", "predictor.*", "classifier.*", "prototypes.*", "queue",
    "queue_ptr", "momentum_backbone.*", "momentum_projector.*",
    "momentum_classifier.*",  # solo-learn
    "projection_head.*", "prediction_head.*", "online_classifier.*",
    "teacher_backbone.*", "teacher_projection_head.*", "student_backbone.*",
    "student_projection_head.*", "student_prediction_head.*",
    "key_backbone.*", "key_projection_head.*", "query_backbone.*",
    "query_projection_head.*", "backbone_momentum.*",
    "projection_head_momentum.*")  # LightlySSL's benchmarks
# mmselfsup / mmpretrain full models: backbone, neck, head, the EMA target
# (1.x: target_net.module.*; 0.x: target_net.N.* beside online_net.N.*,
# which repeats backbone and neck).
MM_HEADS = ("neck.*", "head.*", "target_net.*", "online_net.*")

_CLIP = dict(backbone_prefix="visual.", drop_outside=CLIP_TEXT_TOWER,
             drop_heads=(), mean=CLIP_MEAN, std=CLIP_STD, crop_pct=1.0,
             interpolation="pil_bicubic")

FAMILIES: Dict[str, Family] = {f.name: f for f in [
    Family("torchvision", "", (), ("fc.*",)),
    Family("barlow_twins", "", (), ()),
    Family("vicreg", "", (), ()),
    # Saved from a DistributedDataParallel model: every key, the queue
    # included, starts with "module.".
    Family("moco", "module.encoder_q.",
           ("module.encoder_k.*", "module.queue", "module.queue_ptr"),
           ("fc.*",)),
    Family("mocov3", "module.base_encoder.",
           ("module.momentum_encoder.*", "module.predictor.*"), ("fc.*",)),
    Family("swav", "module.", (), ("projection_head.*", "prototypes.*"),
           std=SWAV_STD),
    Family("dino", "", (), ("head.*",), interpolation="pil_bicubic"),
    Family("lightning", "backbone.", LIGHTNING_HEADS, ("fc.*",)),
    # solo-learn's CIFAR networks: a 3x3 stride-1 stem with padding 2 (not
    # in the weights) and no max-pool; evaluated on the 32-px images with
    # the CIFAR-10 statistics its linear evaluation uses for both CIFARs.
    Family("lightning_cifar", "backbone.", LIGHTNING_HEADS, ("fc.*",),
           arch_options=(("cifar_stem_padding", 2),), crop_pct=1.0,
           crop_mode="squash", interpolation="bilinear", mean=CIFAR10_MEAN,
           std=CIFAR10_STD),
    # Evaluated resized to 256 (Pillow bilinear), cropped to 224.
    Family("mmselfsup", "backbone.", MM_HEADS, ()),
    Family("mmselfsup_backbone", "", (), ()),
    # DeepMind's BYOL release (a pickle, read by ega_tf/teachers/byol.py):
    # evaluated on a centre crop of int(0.875 * shorter side), resized
    # bicubically by tf.image.resize to 224, clipped to [0, 1], then
    # normalised with ImageNet's statistics.
    Family("byol_deepmind", "", (), ("projector/*", "predictor/*",
                                     "classifier/*"),
           architecture="haiku_resnet", crop_mode="crop_first_floor",
           interpolation="bicubic", antialias=False, clip=True),
    Family("simclr", "base_model/",
           ("head_supervised/*", "head_contrastive/*", "global_step",
            "ema_model/*", "*/Momentum"), ("*/Momentum",),
           architecture="simclr", crop_mode="crop_first",
           interpolation="bicubic", antialias=False, mean=(0.0, 0.0, 0.0),
           std=(1.0, 1.0, 1.0), clip=True),
    Family("dino_vit", "", (), ("head.*",), architecture="vit",
           arch_options=(("head_dim", 64),), interpolation="pil_bicubic"),
    # The hub files (dinov2_vits14_pretrain.pth, ..._reg4_pretrain.pth):
    # the bare backbone, evaluated resized to 256 (bicubic), cropped to 224.
    Family("dinov2", "", (), (), architecture="dinov2",
           arch_options=(("head_dim", 64),), interpolation="pil_bicubic",
           options=("input_size", "feature")),
    # DINOv3's ViTs (dinov3_vits16_pretrain_lvd1689m-08c60483.pth, ...):
    # the bare backbone, evaluated as DINOv2's.
    Family("dinov3", "", (), (), architecture="dinov3",
           arch_options=(("head_dim", 64),), interpolation="pil_bicubic",
           options=("input_size", "feature")),
    Family("dinov3_convnext", "", (), (), architecture="convnext",
           interpolation="pil_bicubic"),
    Family("mocov3_vit", "module.base_encoder.",
           ("module.momentum_encoder.*", "module.predictor.*"), ("head.*",),
           architecture="vit", arch_options=(("num_heads", 12),)),
    Family("clip", architecture="clip_resnet", **_CLIP),
    Family("clip_vit", architecture="clip_vit",
           arch_options=(("activation", "quick_gelu"),), **_CLIP),
    Family("open_clip_gelu", architecture="clip_vit",
           arch_options=(("activation", "gelu"),), **_CLIP),
    # Supervised CIFAR teachers, ``{'model': state_dict, ...}``: the 32 px
    # images normalised as its training did, no resize at 32 px.
    Family("repdistiller", "", (), (), architecture="repdistiller",
           mean=CIFAR100_MEAN, std=CIFAR100_STD, crop_pct=1.0,
           crop_mode="squash", interpolation="bilinear", classifier=True),
]}


def get(name) -> Family:
    from ega_tf.core.registry import check_choice
    check_choice("checkpoint format", name, list(FAMILIES))
    return FAMILIES[name]


def default_input_size(arch: dict) -> int:
    """The network's resolution when the file fixes it, else 224."""
    return int(arch.get("resolution", 224))

