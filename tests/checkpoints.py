"""Checkpoint files in each family's published layout (test support).

Each writer builds the family's network with the reference implementation
(``tools/reference``) and random weights with non-trivial normalisation
statistics, and saves it the way the publisher's training code does: which
object is saved, wrapped in what (DistributedDataParallel's ``module.``,
DINO's ``teacher``/``student`` pair), with the heads, momentum encoders,
queues, optimizer state and arguments the published files carry.
``write(family, directory)`` returns a ``Published`` record: the file, the
``--format`` and ``--allow_pickle`` it needs, and the reference forward pass
(normalised float NHWC -> embedding) to compare against.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from typing import Callable, Optional

import numpy as np


@dataclasses.dataclass
class Published:
    family: str
    path: pathlib.Path
    reference: Callable  # float NHWC (normalised) -> numpy embedding
    resolution: int      # the network's input side
    fmt: Optional[str] = None
    allow_pickle: bool = False
    # The same network in float64, where the source framework can run it:
    # what both float32 implementations are measured against.
    reference64: Optional[Callable] = None

    def convert_args(self):
        return dict(fmt=self.fmt, allow_pickle=self.allow_pickle)

    def cli_flags(self):
        flags = [f"--checkpoint={self.path}"]
        if self.fmt:
            flags.append(f"--format={self.fmt}")
        if self.allow_pickle:
            flags.append("--allow_pickle")
        return flags


def _torch_forward(fn, dtype=None):
    import torch

    def run(x):
        with torch.no_grad():
            t = torch.tensor(np.asarray(x, np.float32)).permute(0, 3, 1, 2)
            return fn(t.to(dtype or torch.float32)).numpy()
    return run


def _torch_references(model, method=None):
    """(float32 forward, float64 forward) of a PyTorch ``model``."""
    import copy

    import torch
    double = copy.deepcopy(model).double()
    fn32 = getattr(model, method) if method else model
    fn64 = getattr(double, method) if method else double
    return _torch_forward(fn32), _torch_forward(fn64, torch.float64)


def _optimizer_state(n=4):
    """What ``torch.optim.SGD(...).state_dict()`` holds."""
    return {"state": {}, "param_groups": [{
        "lr": 0.03, "momentum": 0.9, "dampening": 0, "weight_decay": 1e-4,
        "nesterov": False, "params": list(range(n))}]}


def _scaler_state():
    return {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5,
            "growth_interval": 2000, "_growth_tracker": 0}


def _mlp(prefix, dims, bn=False):
    """Random Linear (and BN) tensors named as nn.Sequential numbers them."""
    import torch
    out, i = {}, 0
    for a, b in zip(dims[:-1], dims[1:]):
        out[f"{prefix}.{i}.weight"] = torch.randn(b, a)
        if not bn:
            out[f"{prefix}.{i}.bias"] = torch.randn(b)
        if bn:
            i += 1
            for name, value in (("weight", torch.ones(b)),
                                ("bias", torch.zeros(b)),
                                ("running_mean", torch.zeros(b)),
                                ("running_var", torch.ones(b)),
                                ("num_batches_tracked",
                                 torch.tensor(5, dtype=torch.long))):
                out[f"{prefix}.{i}.{name}"] = value
        i += 2  # the activation between
    return out


def trained_like(model, size, forward=None, branch_gain=0.3):
    """A random network with the statistics training leaves: each residual
    branch's last BatchNorm scaled down (trained ResNets add small
    corrections to their shortcut), then every BatchNorm's running
    statistics measured on images (``calibrated``). Random statistics let a
    constant component grow until the embedding is nearly the same for every
    image; full-gain random branches make the network chaotic, amplifying
    float32 rounding. This one varies with the image and is well
    conditioned, so a parity test checks what matters."""
    import torch
    from torch import nn
    with torch.no_grad():
        for name, m in model.named_modules():
            last = name.endswith(".bn3") or (
                name.endswith(".bn2") and not hasattr(
                    model.get_submodule(name.rsplit(".", 1)[0]), "bn3"))
            if isinstance(m, nn.BatchNorm2d) and last and "layer" in name:
                m.weight.mul_(branch_gain)
    return calibrated(model, size, forward=forward)


def calibrated(model, size, seed=100, forward=None):
    """Sets every BatchNorm's running statistics to those of a batch of
    images (one pass in training mode), so the activations stay
    standardised."""
    import torch
    from torch import nn
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative: exactly this batch's statistics
    x = torch.tensor(random_pixels(seed, n=8, size=size)).permute(0, 3, 1, 2)
    model.train()
    with torch.no_grad():
        (forward or model)(x)
    return model.eval()


def resnet(seed=1, size=64, **kw):
    import torch
    from tools.reference.torch_resnet import ResNet, randomized
    torch.manual_seed(seed)
    model = randomized(ResNet(**{"num_classes": 10, **kw}), seed=seed)
    return trained_like(model, size, forward=model.features)


def small_resnet(seed=1, **kw):
    return resnet(seed, blocks=(1, 1, 1, 1), **kw)


def resnet_layout(family, model):
    """The file each torchvision-layout family publishes for ``model``."""
    import torch
    sd = dict(model.state_dict())
    backbone = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    width = sd["fc.weight"].shape[1]
    if family == "torchvision":
        return sd
    if family in ("barlow_twins", "vicreg"):  # the backbone alone, no fc
        return backbone
    if family == "moco":
        # moco's main_moco.py: the DDP-wrapped MoCo model; encoder fc is
        # the v2 MLP; the queue is a buffer of the wrapped module.
        q = {**backbone, **_mlp("fc", (width, 32, 16))}
        return {"epoch": 200, "arch": "resnet50", "state_dict": {
            **{f"module.encoder_q.{k}": v for k, v in q.items()},
            **{f"module.encoder_k.{k}": v.clone() for k, v in q.items()},
            "module.queue": torch.randn(16, 64),
            "module.queue_ptr": torch.zeros(1, dtype=torch.long)},
            "optimizer": _optimizer_state()}
    if family == "mocov3":
        # moco-v3's main_moco.py: DDP(MoCo_ResNet); fc is the projector.
        enc = {**backbone, **_mlp("fc", (width, 32, 16), bn=True)}
        return {"epoch": 100, "arch": "resnet50", "state_dict": {
            **{f"module.base_encoder.{k}": v for k, v in enc.items()},
            **{f"module.momentum_encoder.{k}": v.clone()
               for k, v in enc.items()},
            **{f"module.{k}": v for k, v in _mlp("predictor", (16, 32, 16),
                                                  bn=True).items()}},
            "optimizer": _optimizer_state(), "scaler": _scaler_state()}
    if family == "swav":
        # swav's released files: the DDP model's flat state dict.
        return {**{f"module.{k}": v for k, v in backbone.items()},
                **{f"module.{k}": v for k, v in _mlp(
                    "projection_head", (width, 32, 16)).items()},
                "module.prototypes.weight": torch.randn(30, 16)}
    if family == "dino":
        # dino's main_dino.py: {student, teacher, optimizer, epoch, args,
        # dino_loss}; a ResNet teacher is DDP-wrapped (it has BatchNorm).
        head = {**_mlp("head.mlp", (width, 32, 16)),
                "head.last_layer.weight_g": torch.ones(40, 1),
                "head.last_layer.weight_v": torch.randn(40, 16)}
        net = {**{f"backbone.{k}": v for k, v in backbone.items()}, **head}
        return {"student": {f"module.{k}": v.clone() for k, v in net.items()},
                "teacher": {f"module.{k}": v for k, v in net.items()},
                "optimizer": _optimizer_state(), "epoch": 100,
                "args": argparse.Namespace(arch="resnet50", out_dim=40),
                "dino_loss": {"center": torch.zeros(1, 40)}}
    raise KeyError(family)


# Written by tests/checkpoints_ssl.py.
SSL_FAMILIES = ("dinov2", "dinov3", "dinov3_convnext", "lightning",
                "lightning_cifar", "mmselfsup", "mmselfsup_backbone",
                "byol_deepmind")
RESNET_FAMILIES = ("torchvision", "barlow_twins", "vicreg", "moco",
                   "mocov3", "swav", "dino")


def write_resnet(family, directory, model=None, seed=1):
    import torch
    model = model if model is not None else small_resnet(seed)
    path = pathlib.Path(directory) / f"{family}.pth.tar"
    torch.save(resnet_layout(family, model), path)
    ref32, ref64 = _torch_references(model, "features")
    return Published(family, path, ref32, 64,
                     fmt=family if family in ("barlow_twins", "vicreg")
                     else None, allow_pickle=family == "dino",
                     reference64=ref64)


def clip_resnet(seed=5, resolution=224, **kw):
    import torch
    from tools.reference.torch_clip import ModifiedResNet
    from tools.reference.torch_resnet import randomized
    torch.manual_seed(seed)
    return trained_like(randomized(ModifiedResNet(resolution=resolution,
                                                  **kw), seed=seed),
                        resolution)


def _trace(model, size):
    """``model`` traced to TorchScript on one ``size`` x ``size`` image, as
    OpenAI's files were. ``check_trace`` (running the traced and the eager
    model again to compare them) is off: the tests compare the conversion
    with the eager model itself."""
    import torch
    return torch.jit.trace(model, torch.zeros(1, 3, size, size),
                           check_trace=False)


def write_clip_resnet(directory, visual=None, torchscript=True, name="RN50"):
    """OpenAI's file: a TorchScript archive of the whole CLIP model (or its
    state dict), visual tower plus text tower and the three scalars."""
    import torch
    from tools.reference.torch_clip import CLIPStandIn
    visual = visual if visual is not None else clip_resnet(
        layers=(1, 1, 1, 1))
    model = CLIPStandIn(visual).eval()
    path = pathlib.Path(directory) / f"{name}.pt"
    res = visual.attnpool.positional_embedding.shape[0]
    res = 32 * int(round((res - 1) ** 0.5))
    if torchscript:
        torch.jit.save(_trace(model, res), path)
    else:
        torch.save(model.state_dict(), path)
    ref32, ref64 = _torch_references(visual)
    return Published("clip", path, ref32, res, reference64=ref64)


def clip_vit(seed=4, quick_gelu=True, image=224, **kw):
    import torch
    from tools.reference.torch_vit import CLIPViT, randomize_norms
    torch.manual_seed(seed)
    return randomize_norms(CLIPViT(image=image, quick_gelu=quick_gelu,
                                   **{"width": 128, "layers": 2,
                                      "out_dim": 64, **kw}), seed=seed + 1)


def write_clip_vit(directory, visual=None, image=224):
    import torch
    from tools.reference.torch_clip import CLIPStandIn
    visual = visual if visual is not None else clip_vit(image=image)
    path = pathlib.Path(directory) / "ViT-B-32.pt"
    torch.jit.save(_trace(CLIPStandIn(visual).eval(), image), path)
    ref32, ref64 = _torch_references(visual)
    return Published("clip_vit", path, ref32, image, reference64=ref64)


def write_open_clip(directory, visual=None, image=224):
    """open_clip's Hugging Face file: a safetensors state dict without
    OpenAI's scalars; the GELU needs --format."""
    from safetensors.torch import save_file
    from tools.reference.torch_clip import CLIPStandIn
    visual = visual if visual is not None else clip_vit(
        seed=6, quick_gelu=False, image=image)
    sd = {k: v.contiguous() for k, v in CLIPStandIn(visual).state_dict()
          .items() if k not in ("input_resolution", "context_length",
                                "vocab_size")}
    path = pathlib.Path(directory) / "open_clip_model.safetensors"
    save_file(sd, str(path))
    ref32, ref64 = _torch_references(visual)
    return Published("open_clip_gelu", path, ref32, image,
                     fmt="open_clip_gelu", reference64=ref64)


def timm_vit(seed=0, image=224, **kw):
    import torch
    from tools.reference.torch_vit import TimmViT, randomize_norms
    torch.manual_seed(seed)
    return randomize_norms(TimmViT(image=image, **{"dim": 128, "depth": 2,
                                                   "heads": 2, **kw}),
                           seed=seed + 1)


def write_dino_vit(directory, model=None, full=True, image=224):
    """DINO's full checkpoint (the ViT teacher is not DDP-wrapped: no
    BatchNorm), or its backbone-only file."""
    import torch
    model = model if model is not None else timm_vit(image=image)
    sd = dict(model.state_dict())
    dim = sd["cls_token"].shape[-1]
    path = pathlib.Path(directory) / ("dino_full.pth" if full
                                      else "dino_deitsmall16_pretrain.pth")
    if full:
        head = {**_mlp("head.mlp", (dim, 32, 16)),
                "head.last_layer.weight_g": torch.ones(40, 1),
                "head.last_layer.weight_v": torch.randn(40, 16)}
        net = {**{f"backbone.{k}": v for k, v in sd.items()}, **head}
        torch.save({"student": {f"module.{k}": v.clone()
                                for k, v in net.items()},
                    "teacher": net, "optimizer": _optimizer_state(),
                    "epoch": 100, "args": argparse.Namespace(arch="vit_small"),
                    "dino_loss": {"center": torch.zeros(1, 40)}}, path)
    else:
        torch.save(sd, path)
    ref32, ref64 = _torch_references(model)
    return Published("dino_vit", path, ref32, image, allow_pickle=full,
                     reference64=ref64)


def write_mocov3_vit(directory, model=None, image=224):
    """moco-v3's file: DDP(MoCo_ViT) with the projector as ``head``."""
    import torch
    model = model if model is not None else timm_vit(
        seed=1, image=image, dim=96, heads=12)
    sd = dict(model.state_dict())
    dim = sd["cls_token"].shape[-1]
    enc = {**sd, **_mlp("head", (dim, 32, 16), bn=True)}
    path = pathlib.Path(directory) / "vit-s-300ep.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": {
        **{f"module.base_encoder.{k}": v for k, v in enc.items()},
        **{f"module.momentum_encoder.{k}": v.clone() for k, v in enc.items()},
        **{f"module.{k}": v for k, v in _mlp("predictor", (16, 32, 16),
                                              bn=True).items()}},
        "optimizer": _optimizer_state(), "scaler": _scaler_state()}, path)
    ref32, ref64 = _torch_references(model)
    return Published("mocov3_vit", path, ref32, image, reference64=ref64)


def write_simclr(directory, seed=3):
    """SimCLR's TF1 checkpoint (with its heads, momentum slots and global
    step) and the ``checkpoint`` file beside it."""
    from tools.reference import tf_simclr
    weights = tf_simclr.variables(seed=seed)
    directory = pathlib.Path(directory)
    prefix = tf_simclr.save_tf1(weights, str(directory / "model.ckpt-250228"))
    (directory / "checkpoint").write_text(
        'model_checkpoint_path: "model.ckpt-250228"\n')
    return Published("simclr", pathlib.Path(prefix),
                     lambda x: tf_simclr.forward(weights, x), 224)


def write_repdistiller(directory, name="resnet8", num_classes=100, seed=0):
    """RepDistiller's ``ckpt_epoch_240.pth`` of network ``name``: its pooled
    feature is the teacher's embedding."""
    import torch

    from tools.reference import torch_repdistiller
    torch.manual_seed(seed)
    model = torch_repdistiller.randomized(
        torch_repdistiller.create(name, num_classes), seed)
    path = pathlib.Path(directory) / "ckpt_epoch_240.pth"
    torch.save({"epoch": 240, "model": model.state_dict(), "accuracy": 79.42,
                "optimizer": {"param_groups": []}}, path)
    fn32, fn64 = _torch_references(model, "features")
    return Published("repdistiller", path, fn32, 32, reference64=fn64)


def write(family, directory, small=False):
    """The family's published file, small, in ``directory``; ``small``
    makes the CLIP and ViT networks take 64-px images instead of 224, and
    CLIP's ResNet a quarter of RN50's width (8 heads, a 64-d embedding:
    1.3 M parameters instead of 23 M)."""
    directory = pathlib.Path(directory)
    if family in RESNET_FAMILIES:
        return write_resnet(family, directory)
    if family in SSL_FAMILIES:
        from tests import checkpoints_ssl
        return checkpoints_ssl.write(family, directory)
    if small and family == "clip":
        return write_clip_resnet(directory, clip_resnet(
            layers=(1, 1, 1, 1), resolution=64, width=16, out_dim=64))
    if small and family in ("clip_vit", "open_clip_gelu", "dino_vit",
                            "mocov3_vit"):
        return {"clip_vit": write_clip_vit, "open_clip_gelu": write_open_clip,
                "dino_vit": write_dino_vit,
                "mocov3_vit": write_mocov3_vit}[family](directory, image=64)
    return {"clip": write_clip_resnet, "clip_vit": write_clip_vit,
            "open_clip_gelu": write_open_clip, "dino_vit": write_dino_vit,
            "mocov3_vit": write_mocov3_vit, "simclr": write_simclr,
            "repdistiller": write_repdistiller}[family](directory)


def random_pixels(seed, n=4, size=224):
    """Normalised float NHWC images that differ as whole images do: each has
    its own brightness and contrast per channel and its own smooth pattern
    under the noise. (Images of i.i.d. noise alone look alike to a network
    after global pooling, so its output would hardly depend on them.)"""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    images = []
    for _ in range(n):
        fy, fx, phase = rng.uniform(0.5, 4, 2).tolist() + [rng.uniform(0, 6)]
        pattern = np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)
        offset = rng.normal(0, 1, 3)
        scale = rng.uniform(0.3, 1.5, 3)
        noise = rng.normal(size=(size, size, 3))
        images.append(offset + scale * (0.7 * pattern[..., None]
                                        + 0.5 * noise))
    return np.stack(images).astype(np.float32)
