"""Small data sets in the real on-disk formats, made from nothing.

Used by the tests and by ``benchmarks/input_pipeline.py``: a
``tiny-imagenet-200.zip`` in the published layout and an image folder of
PNG/JPEG files of varied sizes (TFDS ``ImageFolder`` layout). Nothing here is
needed to train.
"""

from __future__ import annotations

import zipfile

import numpy as np
import tensorflow as tf

WNIDS = ("n02124075", "n01443537", "n04067472")  # wnids.txt order, unsorted


def jpeg(rng, channels=3, size=64):
    img = rng.integers(0, 256, (size, size, channels), dtype=np.uint8)
    return tf.io.encode_jpeg(img, quality=100).numpy()


def make_tiny_imagenet_zip(path, per_class=4, n_val=7, n_test=3):
    """A small tiny-imagenet-200.zip in the published layout. Returns
    {val file name: wnid}. The first training image of each class is a
    greyscale JPEG, as a few published ones are."""
    rng = np.random.default_rng(0)
    r = "tiny-imagenet-200/"
    val = {}
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(r + "wnids.txt", "\n".join(WNIDS) + "\n")
        z.writestr(r + "words.txt", "n00001740\tentity\n" + "".join(
            f"{w}\tthing {i}, other name\n" for i, w in enumerate(WNIDS)))
        for w in WNIDS:
            z.writestr(r + f"train/{w}/{w}_boxes.txt", "")
            for i in range(per_class):
                z.writestr(r + f"train/{w}/images/{w}_{i}.JPEG",
                           jpeg(rng, 1 if i == 0 else 3))
        lines = []
        for i in range(n_val):
            name, wnid = f"val_{i}.JPEG", WNIDS[(i * 2) % 3]
            z.writestr(r + "val/images/" + name, jpeg(rng))
            lines.append(f"{name}\t{wnid}\t0\t0\t63\t63")
            val[name] = wnid
        z.writestr(r + "val/val_annotations.txt", "\n".join(lines) + "\n")
        for i in range(n_test):
            z.writestr(r + f"test/images/test_{i}.JPEG", jpeg(rng))
    return val


def write_image_folder(root, per_class_train, per_class_test, seed=0,
                       source=None):
    """PATH/<split>/<class>/<image> with PNG and JPEG files of varied sizes.
    ``source``: a Dataset whose images (upsampled) fill the classes."""
    rng = np.random.default_rng(seed)
    count = 0
    classes = source.class_names if source else ["cat", "dog", "eel"]
    for split, split_src, n in (("train", source and source.train,
                                 per_class_train),
                                ("test", source and source.test,
                                 per_class_test)):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            pool = (split_src.images[split_src.labels == c] if source
                    else None)
            for i in range(n):
                h, w = rng.integers(32, 49, 2)
                if pool is not None:
                    img = tf.image.resize(pool[i % len(pool)], (h, w))
                    img = tf.cast(tf.round(img), tf.uint8)
                else:
                    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                if i % 2:
                    blob, ext = tf.io.encode_png(img).numpy(), "png"
                else:
                    blob, ext = tf.io.encode_jpeg(img, quality=95).numpy(), \
                        "jpg"
                (folder / f"{i:05d}.{ext}").write_bytes(blob)
                count += 1
    return count
