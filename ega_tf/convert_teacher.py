r"""Converts a published self-supervised checkpoint into a ``.keras`` teacher.

    python -m ega_tf.convert_teacher --checkpoint=moco_v2_800ep_pretrain.pth.tar \
        --out=moco_v2.keras
    python -m ega_tf.convert_teacher --checkpoint=RN50.pt --out=clip_rn50.keras

The family is detected from the checkpoint's keys; ``--format`` overrides it.
The output is written atomically: a failed conversion leaves no file behind.
"""

from __future__ import annotations

from absl import app, flags

from ega_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint file to convert.")
flags.DEFINE_string("format", None, "Family, when detection is not enough "
                    "(torchvision, barlow_twins, vicreg, moco, mocov3, swav, "
                    "dino, clip).")
flags.DEFINE_string("out", None, "Output .keras file.")
flags.DEFINE_bool("allow_pickle", False, "Allow checkpoints that hold Python "
                  "objects besides tensors (only for files you trust).")


@cli.friendly_errors
def main(argv):
    del argv
    if not FLAGS.checkpoint or not FLAGS.out:
        raise ValueError("usage: python -m ega_tf.convert_teacher "
                         "--checkpoint=FILE --out=teacher.keras")
    from ega_tf import teachers
    from ega_tf.teachers.convert import convert
    teacher = convert(FLAGS.checkpoint, FLAGS.format, FLAGS.allow_pickle)
    teachers.save(teacher, FLAGS.out)
    print(f"{teachers.describe(teacher)}\nwritten to {FLAGS.out}")


if __name__ == "__main__":
    cli.quiet_tensorflow()
    app.run(main)
