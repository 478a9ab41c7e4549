r"""Converts a published self-supervised checkpoint into a ``.keras`` teacher.

    python -m ega_tf.convert_teacher --checkpoint=moco_v2_800ep_pretrain.pth.tar \
        --out=moco_v2.keras
    python -m ega_tf.convert_teacher --checkpoint=RN50.pt --out=clip_rn50.keras
    python -m ega_tf.convert_teacher --checkpoint=dinov2_vits14_pretrain.pth \
        --out=dinov2_s14.keras
    python -m ega_tf.convert_teacher --checkpoint=dinov2-small/ --out=dinov2.keras

The family is detected from the checkpoint's keys (a Hugging Face folder's
from its config.json); --format overrides it (BUILD.md lists the families
and their files).

A model you already have (a .keras file or a SavedModel directory that maps
preprocessed float RGB images to an [N, F] embedding) becomes a teacher with
the preprocessing you declare, in timm's terms:

    python -m ega_tf.convert_teacher --model=my_encoder.keras \
        --input_size=224 --crop_pct=0.875 --interpolation=pil_bilinear \
        --mean=0.485,0.456,0.406 --std=0.229,0.224,0.225 --out=teacher.keras

The output is written atomically: a failed conversion leaves no file behind.
"""

from __future__ import annotations

from ega_tf import cli
from ega_tf.core.errors import UserError


def define_flags(flag_values):
    from ega_tf.core.constants import CROP_MODES
    from ega_tf.teachers.families import FAMILIES
    d = lambda *a: cli.define(*a, flag_values)  # noqa: E731
    d("string", "checkpoint", None, "Checkpoint file (or TF checkpoint "
      "prefix/directory, or Hugging Face model folder) to convert.")
    d("string", "format", None, "Family, when detection is not enough: "
      + ", ".join(FAMILIES) + ".")
    d("bool", "allow_pickle", False, "Unpickle a checkpoint that stores "
      "Python objects besides tensors (e.g. DINO's full checkpoints). This "
      "RUNS CODE stored in the file: only for files from a source you "
      "trust.")
    d("string", "model", None, "Instead of --checkpoint: a .keras file or "
      "SavedModel directory mapping preprocessed float RGB images to [N, F];"
      " declare its preprocessing with the flags below.")
    d("integer", "input_size", None, "--model: side of the square images "
      "the model takes. --checkpoint of a ViT whose position table is "
      "resized (dinov2): the teacher's input side (default 224, the "
      "publisher's evaluation crop); a multiple of the patch size.")
    d("string", "feature", None, "--checkpoint of a DINOv2/DINOv3 ViT: "
      "cls (default: the class token after the final norm, what the "
      "publisher's model(x) returns) or cls_patchmean (the publisher's "
      "linear-evaluation input: the class token and the mean patch token, "
      "concatenated).")
    d("float", "crop_pct", 1.0, "--model: fraction of the resized image "
      "kept by the centre crop (0.875: resize the shorter side to "
      "input_size / 0.875, then crop input_size).")
    d("string", "crop_mode", "center", "--model: " + ", ".join(CROP_MODES)
      + " (squash: resize to the square, ignoring the aspect ratio).")
    d("string", "interpolation", "bilinear", "--model: a tf.image.resize "
      "method, or pil_bilinear / pil_bicubic (Pillow's, as torchvision).")
    d("list", "mean", ["0", "0", "0"], "--model: per-channel mean of [0, 1] "
      "pixels.")
    d("list", "std", ["1", "1", "1"], "--model: per-channel std.")
    d("string", "pool", None, "--model returning tokens [N, T, D] (e.g. a "
      "keras-hub ViT backbone saved as .keras): cls (the first token), mean"
      " (the mean of the tokens after --prefix_tokens) or cls_mean (both, "
      "concatenated).")
    d("integer", "prefix_tokens", None, "--pool: the tokens before the "
      "patches (class token, registers), left out of the mean; default: "
      "what a keras-hub DINOv2/DINOv3 backbone says (1 + registers), else "
      "1.")
    d("string", "output", None, "--model: the output holding the embedding,"
      " when the model returns several.")
    d("string", "out", None, "Output .keras file.")


def _floats(name, values):
    try:
        return [float(v) for v in values]
    except ValueError:
        raise UserError(f"--{name} takes numbers separated by commas; got "
                        f"{','.join(values)!r}.") from None


def main(argv, flag_values):
    from ega_tf.teachers import teacher_file
    f = flag_values
    if len(argv) > 1 or bool(f.checkpoint) == bool(f.model) or not f.out:
        raise UserError("usage: python -m ega_tf.convert_teacher "
                        "--checkpoint=FILE (or --model=FILE.keras|DIR with "
                        "its preprocessing) --out=teacher.keras")
    teacher_file.check_output_path(f.out)
    for flag, source, hint in (
            ("pool", "model", " (a published ViT's feature is chosen with "
             "--feature)"), ("prefix_tokens", "model", ""),
            ("feature", "checkpoint", " (a model's token output is pooled "
             "with --pool)")):
        if getattr(f, flag) is not None and not getattr(f, source):
            raise UserError(f"--{flag} applies to --{source}{hint}.")
    if f.model:
        from ega_tf.teachers.user_model import wrap
        teacher = wrap(f.model, input_size=f.input_size,
                       crop_pct=f.crop_pct, crop_mode=f.crop_mode,
                       interpolation=f.interpolation,
                       mean=_floats("mean", f.mean),
                       std=_floats("std", f.std), output=f.output,
                       pool=f.pool, prefix=f.prefix_tokens)
    else:
        from ega_tf.teachers.convert import convert
        teacher = convert(f.checkpoint, f.format, f.allow_pickle,
                          input_size=f.input_size, feature=f.feature)
    teacher_file.save(teacher, f.out)
    print(f"{teacher_file.describe(teacher)}\nwritten to {f.out}")


if __name__ == "__main__":
    cli.run(define_flags, main)
