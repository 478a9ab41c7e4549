#!/usr/bin/env python
"""Checks a converted teacher against its source framework on your image.

    python tools/parity.py --checkpoint=moco_v2_800ep_pretrain.pth.tar --image=cat.jpg
    python tools/parity.py --checkpoint=ViT-B-32.pt --image=cat.jpg
    python tools/parity.py --checkpoint=r50_1x_sk0/model.ckpt-250228 --image=cat.jpg
    python tools/parity.py --checkpoint=dinov2_vits14_pretrain.pth --image=cat.jpg

It converts the checkpoint as ``python -m ega_tf.convert_teacher`` does,
loads the same tensors strictly into the reference implementation of the
family in its own framework (``tools/reference``: PyTorch for the
PyTorch families, raw ``tf.nn`` ops for SimCLR), and prints two differences
separately, then end to end:

- preprocessing: the teacher's resize/crop/normalise against the family's
  published pipeline on the image (PIL resizing and torchvision's crop
  rounding for the PyTorch families; SimCLR's crop-then-bicubic in TF);
- network: the Keras backbone against the reference on the reference's
  pixels (relative error, max |diff| / max |reference|).

Needs the ``[convert]`` extra (PyTorch, Pillow) for PyTorch checkpoints.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def torch_reference(family, arch, state):
    """The family's PyTorch reference with ``state`` loaded strictly: every
    tensor of the file's backbone is used, except those the family's own
    head patterns drop (the Keras port drops the same), and the reference
    has no parameter the file lacks (BatchNorm's batch counters aside)."""
    import fnmatch

    import torch

    from tools.reference import (torch_clip, torch_dinov2, torch_dinov3,
                                 torch_repdistiller, torch_resnet, torch_vit)
    tensors = {k: torch.tensor(np.asarray(v)) for k, v in state.items()
               if not any(fnmatch.fnmatchcase(k, p)
                          for p in (*family.drop_heads, "local_cls_norm.*"))}
    linear = arch.get("feature") == "cls_patchmean"
    if family.architecture == "resnet":
        model = torch_resnet.ResNet(
            tuple(arch["blocks"]), arch["bottleneck"], arch["filters"][0],
            cifar_stem_padding=arch.get("cifar_stem_padding"))
        model.fc = torch.nn.Identity()
        forward = model.features
    elif family.architecture == "dinov2":
        model = torch_dinov2.DinoV2(
            arch["stored_resolution"], arch["patch"], arch["width"],
            arch["depth"], arch["heads"], arch["mlp_dim"] / arch["width"],
            arch["swiglu"], arch["registers"], arch["positions_offset"],
            arch["positions"] == "antialias")
        forward = model.linear_feature if linear else model
    elif family.architecture == "dinov3":
        model = torch_dinov3.DinoV3ViT(
            arch["patch"], arch["width"], arch["depth"], arch["heads"],
            swiglu=arch["gated"], storage=arch["registers"],
            qkv_bias=arch["qkv_bias"], hidden=arch["mlp_dim"])
        forward = model.linear_feature if linear else model
    elif family.architecture == "convnext":
        model = torch_dinov3.DinoV3ConvNeXt(arch["depths"], arch["dims"])
        forward = model
    elif family.architecture == "clip_resnet":
        model = torch_clip.ModifiedResNet(
            tuple(arch["blocks"]), arch["output_dim"], arch["width"],
            arch["resolution"])
        forward = model
    elif family.architecture == "clip_vit":
        model = torch_vit.CLIPViT(arch["resolution"], arch["patch"],
                                  arch["width"], arch["depth"],
                                  arch["output_dim"],
                                  arch["activation"] == "quick_gelu")
        forward = model
    elif family.architecture == "vit":
        model = torch_vit.TimmViT(arch["resolution"], arch["patch"],
                                  arch["width"], arch["depth"],
                                  arch["heads"],
                                  arch["mlp_dim"] / arch["width"])
        model.head = torch.nn.Identity()
        forward = model
    elif family.architecture == "repdistiller":
        model = torch_repdistiller.create(arch["network"], arch["num_classes"])
        forward = model.features
    else:
        raise SystemExit(f"No PyTorch reference for {family.name}.")
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in tensors:
            tensors[key] = value  # counters only; not used in eval mode
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise SystemExit(f"The reference does not hold the file strictly: "
                         f"{str(e).splitlines()[0]}")
    model.eval()

    def run(x):
        with torch.no_grad():
            return forward(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    return run


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--image", required=True, help="an RGB image file")
    p.add_argument("--format", default=None)
    p.add_argument("--allow_pickle", action="store_true")
    args = p.parse_args()

    from ega_tf.core import runtime
    from ega_tf.core.errors import UserError
    tf = runtime.import_tensorflow()
    from ega_tf import teachers
    from ega_tf.teachers import convert
    from tools.reference import tf_simclr
    from tools.reference.pil_pipeline import torchvision_eval

    try:
        family, arch, kept = convert.load_backbone(
            args.checkpoint, args.format, args.allow_pickle)
        teacher = convert.build_teacher(args.checkpoint, family, arch, kept,
                                        log=lambda _: None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    meta = teachers.metadata(teacher)
    image = tf.io.decode_image(tf.io.read_file(args.image), channels=3,
                               expand_animations=False).numpy()

    if family.crop_mode == "squash":
        # CIFAR networks (RepDistiller's, solo-learn's): images normalised
        # as they are; another size squashed to 32 by PIL bilinear first.
        from PIL import Image
        res = meta["input_resolution"]
        pixels = np.asarray(Image.fromarray(image).resize(
            (res, res), Image.BILINEAR), np.float32) / 255.0
        ref_pixels = ((pixels - np.array(family.mean)) / np.array(
            family.std))[None].astype(np.float32)
        reference = torch_reference(family, arch, kept)
    elif family.architecture == "simclr":
        ref_pixels = tf_simclr.eval_preprocess(image,
                                               meta["input_resolution"],
                                               family.crop_pct)
        weights = {f"base_model/{k}": v for k, v in kept.items()}

        def reference(x):
            return tf_simclr.forward(weights, x, tuple(meta["blocks"]),
                                     meta["width"])
    else:
        res = meta["input_resolution"]
        ref_pixels = torchvision_eval(
            image[None], int(res / family.crop_pct + 1e-6), res,
            "bicubic" if "bicubic" in family.interpolation else "bilinear",
            family.mean, family.std)
        reference = torch_reference(family, arch, kept)

    ours_pixels = teacher.get_layer("preprocess")(image[None]).numpy()
    pre = np.abs(ours_pixels - ref_pixels)
    want = reference(ref_pixels)
    net = teacher.get_layer("backbone")(ref_pixels).numpy()
    end = teacher(image[None]).numpy()
    scale = np.abs(want).max()
    print(f"family {meta['family']}, embedding {want.shape[-1]}, "
          f"input {image.shape[1]}x{image.shape[0]} -> "
          f"{ref_pixels.shape[2]}x{ref_pixels.shape[1]}")
    print(f"preprocessing: max abs {pre.max():.3g}, mean abs {pre.mean():.3g}"
          " (normalised pixel units)")
    print(f"network:       rel err {np.abs(net - want).max() / scale:.3g}")
    print(f"end to end:    rel err {np.abs(end - want).max() / scale:.3g}, "
          f"cosine {float(np.sum(end * want) / np.linalg.norm(end) / np.linalg.norm(want)):.6f}")


if __name__ == "__main__":
    main()
