r"""Classifies image files with an exported student.

    python -m ega_tf.predict --model=runs/x/saved_model a.png b.jpg --top_k=3

Images (PNG, JPEG, BMP, GIF) are decoded to RGB and resized to the model's
input size; the model needs TensorFlow only.
"""

from __future__ import annotations

from ega_tf import cli
from ega_tf.core.errors import UserError


def define_flags(flag_values):
    cli.define("string", "model", None, "SavedModel directory from "
               "ega_tf.train (its saved_model/).", flag_values)
    cli.define("integer", "top_k", 5, "Classes to print per image.",
               flag_values)


def main(argv, flag_values):
    from ega_tf.deploy.serving import predict_files
    paths = argv[1:]
    if not flag_values.model or not paths:
        raise UserError("usage: python -m ega_tf.predict --model=DIR "
                        "IMAGE [IMAGE ...]")
    if flag_values.top_k < 1:
        raise UserError(f"--top_k must be at least 1; got "
                        f"{flag_values.top_k}.")
    for path, top in zip(paths, predict_files(flag_values.model, paths,
                                              flag_values.top_k)):
        print(path + ": " + ", ".join(f"{n} {100 * p:.1f}%" for n, p in top))


if __name__ == "__main__":
    cli.run(define_flags, main)
