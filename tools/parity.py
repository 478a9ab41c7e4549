#!/usr/bin/env python
"""Checks a converted teacher against its source framework on your image.

    python tools/parity.py --checkpoint=moco_v2_800ep_pretrain.pth.tar --image=cat.jpg
    python tools/parity.py --checkpoint=ViT-B-32.pt --image=cat.jpg
    python tools/parity.py --checkpoint=r50_1x_sk0/model.ckpt-250228 --image=cat.jpg

It converts the checkpoint as ``python -m ega_tf.convert_teacher`` does,
loads the same tensors strictly into the reference implementation of the
family in its own framework (``ega_tf.teachers.reference``: PyTorch for the
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
    """The family's PyTorch reference with ``state`` loaded strictly."""
    import torch
    from ega_tf.teachers.reference import torch_clip, torch_resnet, \
        torch_vit
    tensors = {k: torch.tensor(np.asarray(v)) for k, v in state.items()}
    if family.arch == "resnet":
        model = torch_resnet.ResNet(tuple(arch["blocks"]),
                                    arch["bottleneck"], arch["filters"][0])
        forward = model.features
        tensors = {k: v for k, v in tensors.items()
                   if not k.startswith("fc.")}
        model.fc = torch.nn.Identity()
    elif family.arch == "clip_resnet":
        model = torch_clip.ModifiedResNet(
            tuple(arch["blocks"]), arch["output_dim"], arch["width"],
            arch["resolution"])
        forward = model
    elif family.arch == "clip_vit":
        model = torch_vit.CLIPViT(arch["resolution"], arch["patch"],
                                  arch["width"], arch["depth"],
                                  arch["output_dim"],
                                  arch["activation"] == "quick_gelu")
        forward = model
    elif family.arch == "vit":
        model = torch_vit.TimmViT(arch["resolution"], arch["patch"],
                                  arch["width"], arch["depth"],
                                  arch["heads"],
                                  arch["mlp_dim"] / arch["width"])
        forward = model
        tensors = {k: v for k, v in tensors.items()
                   if not k.startswith("head.")}
    else:
        raise ValueError(f"No PyTorch reference for {family.name}.")
    tensors = {k: v for k, v in tensors.items()
               if not k.endswith("num_batches_tracked")}
    model.load_state_dict(tensors, strict=False)
    missing = set(model.state_dict()) - set(tensors)
    missing = {k for k in missing if not k.endswith("num_batches_tracked")}
    if missing:
        raise SystemExit(f"Reference is missing tensors: {sorted(missing)}")
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

    import tensorflow as tf
    from ega_tf import teachers
    from ega_tf.teachers import convert
    from ega_tf.teachers.reference import tf_simclr
    from ega_tf.teachers.reference.pil_pipeline import torchvision_eval

    teacher = convert.convert(args.checkpoint, args.format,
                              args.allow_pickle)
    meta = teachers.metadata(teacher)
    family = convert.FAMILIES[meta["family"]]
    state, hint = convert.find_state_dict(convert.read_checkpoint(
        args.checkpoint, args.allow_pickle))
    kept = convert.backbone_state(state, family)
    arch = {k: meta[k] for k in meta if k not in (
        "family", "source_file", "source_sha256", "architecture")}
    image = tf.io.decode_image(tf.io.read_file(args.image), channels=3,
                               expand_animations=False).numpy()

    if family.arch == "simclr":
        ref_pixels = tf_simclr.eval_preprocess(image,
                                               meta["input_resolution"],
                                               family.crop_fraction)
        weights = {f"base_model/{k}": v for k, v in kept.items()}

        def reference(x):
            return tf_simclr.forward(weights, x, tuple(meta["blocks"]),
                                     meta["width"])
    else:
        res = meta["input_resolution"]
        ref_pixels = torchvision_eval(
            image[None], family.resize_shorter or res, res,
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
