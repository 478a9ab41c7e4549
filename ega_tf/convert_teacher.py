r"""Converts a published self-supervised checkpoint into a ``.keras`` teacher.

    python -m ega_tf.convert_teacher --checkpoint=moco_v2_800ep_pretrain.pth.tar \
        --out=moco_v2.keras
    python -m ega_tf.convert_teacher --checkpoint=RN50.pt --out=clip_rn50.keras

The family is detected from the checkpoint's keys; ``--format`` overrides it.

A model you already have (a ``.keras`` file or a SavedModel directory that
maps preprocessed float images to an ``[N, F]`` embedding) becomes a teacher
with the preprocessing you declare:

    python -m ega_tf.convert_teacher --model=my_encoder.keras \
        --resize_shorter=256 --crop_size=224 --interpolation=pil_bilinear \
        --mean=0.485,0.456,0.406 --std=0.229,0.224,0.225 --out=teacher.keras

The output is written atomically: a failed conversion leaves no file behind.
"""

from __future__ import annotations

from absl import app, flags

from ega_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint file to convert.")
flags.DEFINE_string("format", None, "Family, when detection is not enough "
                    "(torchvision, barlow_twins, vicreg, moco, mocov3, swav, "
                    "dino, simclr, dino_vit, mocov3_vit, clip, clip_vit, "
                    "open_clip_gelu).")
flags.DEFINE_string("model", None, "Instead of --checkpoint: a .keras file "
                    "or SavedModel directory mapping preprocessed float "
                    "images to [N, F]; declare its preprocessing below.")
flags.DEFINE_integer("image_size", None, "--model: resize to this square.")
flags.DEFINE_integer("resize_shorter", None, "--model: resize the shorter "
                     "side to this, then centre-crop --crop_size.")
flags.DEFINE_integer("crop_size", None, "--model: centre crop.")
flags.DEFINE_string("interpolation", "bilinear", "--model: a tf.image.resize"
                    " method, or pil_bilinear / pil_bicubic (Pillow's).")
flags.DEFINE_list("mean", ["0", "0", "0"], "--model: per-channel mean of "
                  "[0, 1] pixels.")
flags.DEFINE_list("std", ["1", "1", "1"], "--model: per-channel std.")
flags.DEFINE_string("output", None, "--model: the output holding the "
                    "embedding, when the model returns several.")
flags.DEFINE_string("out", None, "Output .keras file.")
flags.DEFINE_bool("allow_pickle", False, "Allow checkpoints that hold Python "
                  "objects besides tensors (only for files you trust).")


@cli.friendly_errors
def main(argv):
    del argv
    if bool(FLAGS.checkpoint) == bool(FLAGS.model) or not FLAGS.out:
        raise ValueError("usage: python -m ega_tf.convert_teacher "
                         "--checkpoint=FILE (or --model=FILE.keras|DIR with "
                         "its preprocessing) --out=teacher.keras")
    from ega_tf import teachers
    if FLAGS.model:
        from ega_tf.teachers.user_model import wrap
        teacher = wrap(FLAGS.model, image_size=FLAGS.image_size,
                       resize_shorter=FLAGS.resize_shorter,
                       crop_size=FLAGS.crop_size,
                       interpolation=FLAGS.interpolation,
                       mean=[float(v) for v in FLAGS.mean],
                       std=[float(v) for v in FLAGS.std],
                       output=FLAGS.output)
    else:
        from ega_tf.teachers.convert import convert
        teacher = convert(FLAGS.checkpoint, FLAGS.format, FLAGS.allow_pickle)
    teachers.save(teacher, FLAGS.out)
    print(f"{teachers.describe(teacher)}\nwritten to {FLAGS.out}")


if __name__ == "__main__":
    cli.quiet_tensorflow()
    app.run(main)
