r"""Pretrains a self-supervised teacher with SimCLR, without labels.

    python -m ega_tf.pretrain --dataset=digits --arch=resnet20 --epochs=60 \
        --out=teacher.keras

Trains ``--arch`` (a student-zoo network) with SimCLR on the training images
only (labels are never read during training), then freezes it and reports its
weighted k-NN top-1 on the test split, using the training split as the memory
bank. The teacher file carries its preprocessing and the k-NN result in its
metadata.
"""

from __future__ import annotations

import json
import time

from absl import app, flags, logging

from ega_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("dataset", "digits", "Dataset name (see ega_tf.data).")
flags.DEFINE_string("data_dir", None, "TFDS data directory.")
flags.DEFINE_string("arch", "resnet20", "Backbone from the student zoo.")
flags.DEFINE_integer("epochs", 60, "Pretraining epochs.")
flags.DEFINE_integer("batch_size", 256, "Images per batch (2x views).")
flags.DEFINE_float("lr", 2e-3, "Peak AdamW learning rate (cosine decay).")
flags.DEFINE_float("weight_decay", 1e-4, "AdamW weight decay.")
flags.DEFINE_float("temperature", 0.5, "NT-Xent temperature.")
flags.DEFINE_float("crop_scale", 0.3, "Smallest area fraction of a crop.")
flags.DEFINE_bool("flip", True, "Random horizontal flips.")
flags.DEFINE_float("jitter", 0.4, "Colour-jitter strength (0: off).")
flags.DEFINE_bool("blur", False, "Random Gaussian blur.")
flags.DEFINE_integer("knn_k", 20, "Neighbours for the k-NN evaluation.")
flags.DEFINE_bool("standardize", True, "Append fixed per-feature "
                  "standardisation (training-image statistics) to the "
                  "teacher's output.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("out", "teacher.keras", "Where to write the teacher.")
flags.DEFINE_enum("precision", "float32", list(cli.PRECISIONS),
                  "Keras dtype policy during pretraining.")


def pretrain(dataset, arch, epochs, batch_size, lr=2e-3, weight_decay=1e-4,
             temperature=0.5, crop_scale=0.3, flip=True, jitter=0.4,
             blur=False, knn_k=20, seed=0, standardize=True, verbose=2):
    """Runs SimCLR; returns (teacher, k-NN test top-1, the same for the
    untrained backbone)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from ega_tf import students, teachers
    from ega_tf.distiller import CLIP_MEAN, CLIP_STD
    from ega_tf.ssl import SimCLR, knn_accuracy
    from ega_tf.ssl.augment import simclr_augment
    from ega_tf.ssl.simclr import embed

    size = dataset.image_size
    backbone = students.create(arch, input_shape=(*size, 3))
    backbone.name = "backbone"
    preprocess = teachers.TeacherPreprocess(
        CLIP_MEAN, CLIP_STD, name="preprocess",
        metadata={"family": "simclr_local", "arch": arch,
                  "dataset": dataset.name, "image_size": list(size)})
    model = SimCLR(backbone, preprocess, temperature=temperature,
                   augment=simclr_augment((crop_scale, 1.0), flip=flip,
                                          jitter=jitter, blur=blur,
                                          seed=seed))
    images = dataset.train.images
    # The same backbone untrained: the floor that SimCLR must beat.
    knn_random = knn_accuracy(
        embed(model, images), dataset.train.labels,
        embed(model, dataset.test.images), dataset.test.labels, k=knn_k)
    steps = len(images) // batch_size
    if steps == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {len(images)} "
                         "training images.")
    schedule = keras.optimizers.schedules.CosineDecay(
        lr, decay_steps=epochs * steps, warmup_target=None)
    model.compile(optimizer=keras.optimizers.AdamW(schedule,
                                                   weight_decay=weight_decay))
    ds = (tf.data.Dataset.from_tensor_slices(images)
          .shuffle(len(images), seed=seed).batch(batch_size, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))
    model.fit(ds, epochs=epochs, verbose=verbose, shuffle=False)

    raw = teachers.assemble(backbone, preprocess, name=f"simclr_{arch}")
    train_emb = embed(raw, images)
    test_emb = embed(raw, dataset.test.images)
    acc = knn_accuracy(train_emb, dataset.train.labels, test_emb,
                       dataset.test.labels, k=knn_k)
    if standardize:  # statistics of the unlabeled training images
        std = teachers.FeatureStandardize(
            train_emb.mean(0), np.maximum(train_emb.std(0), 1e-6),
            name="standardize")
        teacher = teachers.assemble(backbone, preprocess,
                                    name=f"simclr_{arch}", standardize=std)
    else:
        teacher = raw
    preprocess.metadata.update(
        {"knn_top1": acc, "knn_top1_random_init": knn_random,
         "knn_k": knn_k, "ssl_epochs": epochs})
    return teacher, acc, knn_random


@cli.friendly_errors
def main(argv):
    del argv
    from ega_tf import data, teachers
    cli.set_seed(FLAGS.seed)
    cli.set_precision(FLAGS.precision)
    dataset = data.load(FLAGS.dataset, FLAGS.data_dir)
    logging.info("%s", dataset.describe())
    start = time.time()
    teacher, acc, knn_random = pretrain(
        dataset, FLAGS.arch, FLAGS.epochs, FLAGS.batch_size, FLAGS.lr,
        FLAGS.weight_decay, FLAGS.temperature, FLAGS.crop_scale, FLAGS.flip,
        FLAGS.jitter, FLAGS.blur, FLAGS.knn_k, FLAGS.seed, FLAGS.standardize)
    teachers.save(teacher, FLAGS.out)
    summary = {"teacher": FLAGS.out, "arch": FLAGS.arch,
               "knn_top1": acc, "knn_top1_random_init": knn_random,
               "knn_k": FLAGS.knn_k,
               "chance": 1.0 / dataset.num_classes,
               "wall_time_s": round(time.time() - start, 1)}
    print(f"SimCLR teacher {FLAGS.arch} on {dataset.name}: k-NN top-1 "
          f"{100 * acc:.2f}% (untrained: {100 * knn_random:.2f}%, chance "
          f"{100 / dataset.num_classes:.1f}%), "
          f"written to {FLAGS.out}")
    print(json.dumps(summary))


if __name__ == "__main__":
    cli.quiet_tensorflow()
    app.run(main)
