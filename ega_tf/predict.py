r"""Classifies image files with an exported student.

    python -m ega_tf.predict --model=runs/x/saved_model a.png b.jpg --top_k=3

Images (PNG, JPEG, BMP, GIF) are decoded to RGB and resized to the model's
input size; the model needs TensorFlow only.
"""

from __future__ import annotations

from absl import app, flags

from ega_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "SavedModel directory from ega_tf.train.")
flags.DEFINE_integer("top_k", 5, "Classes to print per image.")


def load_images(paths, size):
    import tensorflow as tf
    out = []
    for p in paths:
        if not tf.io.gfile.exists(p):
            raise FileNotFoundError(f"Image {p!r} does not exist.")
        img = tf.io.decode_image(tf.io.read_file(p), channels=3,
                                 expand_animations=False)
        img = tf.image.resize(img, size, antialias=True)
        out.append(tf.cast(tf.clip_by_value(tf.round(img), 0, 255), tf.uint8))
    return tf.stack(out)


def predict(model_dir, paths, top_k=5):
    """Returns, per image, a list of (class name, probability)."""
    import os
    import tensorflow as tf
    from ega_tf.export import load_class_names
    if not os.path.isfile(os.path.join(model_dir, "saved_model.pb")):
        raise FileNotFoundError(
            f"{model_dir!r} is not a SavedModel directory (no "
            "saved_model.pb); pass the saved_model/ folder of a training run.")
    serve = tf.saved_model.load(model_dir).signatures["serving_default"]
    size = serve.structured_input_signature[1]["images"].shape[1:3]
    probs = serve(images=load_images(paths, size))["probabilities"].numpy()
    names = load_class_names(model_dir)
    top_k = min(top_k, probs.shape[1])
    results = []
    for p in probs:
        order = p.argsort()[::-1][:top_k]
        results.append([(names[i] if names else str(i), float(p[i]))
                        for i in order])
    return results


@cli.friendly_errors
def main(argv):
    paths = argv[1:]
    if not FLAGS.model or not paths:
        raise ValueError("usage: python -m ega_tf.predict --model=DIR "
                         "IMAGE [IMAGE ...]")
    for path, top in zip(paths, predict(FLAGS.model, paths, FLAGS.top_k)):
        print(path + ": " + ", ".join(f"{n} {100 * p:.1f}%" for n, p in top))


if __name__ == "__main__":
    cli.quiet_tensorflow()
    app.run(main)
