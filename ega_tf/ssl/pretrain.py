"""SimCLR pretraining of a teacher, as a library (``python -m
ega_tf.pretrain`` is its command line).

The backbone (any student-zoo network) is trained with SimCLR on the
training images only; labels are never read during training. It is then
frozen and measured by weighted k-NN on the test split with the training
split as the memory bank, and the same backbone untrained gives the floor
SimCLR must beat. The teacher file carries its preprocessing and the k-NN
result in its metadata.
"""

from __future__ import annotations


def pretrain(dataset, *, arch, epochs, batch_size, lr=2e-3,
             weight_decay=1e-4, temperature=0.5, crop_scale=0.3, flip=True,
             jitter=0.4, blur=False, knn_k=20, seed=0, standardize=True,
             verbose=2):
    """Runs SimCLR; returns (teacher, k-NN test top-1, the same for the
    untrained backbone)."""
    import keras
    import numpy as np
    import tensorflow as tf

    from ega_tf import students
    from ega_tf.core.constants import CLIP_MEAN, CLIP_STD
    from ega_tf.core.errors import UserError
    from ega_tf.ssl.augment import simclr_augment
    from ega_tf.ssl.simclr import SimCLR, embed, knn_accuracy
    from ega_tf.teachers import FeatureStandardize, TeacherPreprocess
    from ega_tf.teachers.teacher_file import assemble

    images = dataset.train.images
    steps = len(images) // batch_size
    if steps == 0:
        raise UserError(f"batch_size {batch_size} exceeds the {len(images)} "
                        "training images; lower it.")
    size = dataset.image_size
    backbone = students.create(arch, input_shape=(*size, 3))
    backbone.name = "backbone"
    # The network is built for the training images' size; the teacher
    # resizes any other size to it, as a converted teacher does to 224.
    preprocess = TeacherPreprocess(
        CLIP_MEAN, CLIP_STD, input_size=size[0], crop_mode="squash",
        name="preprocess",
        metadata={"family": "simclr_local", "arch": arch,
                  "dataset": dataset.name, "image_size": list(size)})
    model = SimCLR(backbone, preprocess, temperature=temperature,
                   augment=simclr_augment((crop_scale, 1.0), flip=flip,
                                          jitter=jitter, blur=blur,
                                          seed=seed))
    knn_random = knn_accuracy(
        embed(model, images), dataset.train.labels,
        embed(model, dataset.test.images), dataset.test.labels, k=knn_k)
    schedule = keras.optimizers.schedules.CosineDecay(
        lr, decay_steps=epochs * steps, warmup_target=None)
    model.compile(optimizer=keras.optimizers.AdamW(schedule,
                                                   weight_decay=weight_decay))
    ds = (tf.data.Dataset.from_tensor_slices(images)
          .shuffle(len(images), seed=seed).batch(batch_size, drop_remainder=True)
          .prefetch(tf.data.AUTOTUNE))
    model.fit(ds, epochs=epochs, verbose=verbose, shuffle=False)

    raw = assemble(backbone, preprocess, name=f"simclr_{arch}")
    train_emb = embed(raw, images)
    test_emb = embed(raw, dataset.test.images)
    acc = knn_accuracy(train_emb, dataset.train.labels, test_emb,
                       dataset.test.labels, k=knn_k)
    teacher = raw
    if standardize:  # statistics of the unlabeled training images
        std = FeatureStandardize(train_emb.mean(0),
                                 np.maximum(train_emb.std(0), 1e-6),
                                 name="standardize")
        teacher = assemble(backbone, preprocess, name=f"simclr_{arch}",
                           standardize=std)
    preprocess.metadata.update(
        {"knn_top1": acc, "knn_top1_random_init": knn_random,
         "knn_k": knn_k, "ssl_epochs": epochs})
    return teacher, acc, knn_random
