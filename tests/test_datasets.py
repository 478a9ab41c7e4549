"""The dataset readers on data in their real formats, with no network:
TFDS's mock data for cifar100 and stl10, a Tiny ImageNet zip in the
published layout run through the real builder, and image folders of PNG and
JPEG files; each reaching `python -m ega_tf.train`."""

import json
import os
import re
import subprocess
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ega_tf import data, teachers, train
from ega_tf.config import default_config
from ega_tf.data import augment, pipeline
from ega_tf.data.synthetic import (WNIDS, jpeg, make_tiny_imagenet_zip,
                                   write_image_folder)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def run_cli(args):
    return subprocess.run([sys.executable, "-m", "ega_tf.train", *args],
                          cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=900)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("tfds")
    manual = root / "downloads" / "manual"
    manual.mkdir(parents=True)
    val = make_tiny_imagenet_zip(manual / "tiny-imagenet-200.zip")
    return root, val


def test_tiny_imagenet_builder_reads_the_published_zip(tiny_dir):
    root, val = tiny_dir
    ds = data.load("tiny_imagenet", data_dir=str(root))
    assert ds.num_classes == 3 and ds.image_size == (64, 64)
    assert len(ds.train) == 12 and len(ds.test) == 7
    assert ds.class_names == [f"{w}: thing {WNIDS.index(w)}, other name"
                              for w in sorted(WNIDS)]
    assert np.bincount(ds.train.labels).tolist() == [4, 4, 4]
    # Labels of the validation split come from val_annotations.txt.
    builder = tfds.builder("tiny_imagenet", data_dir=str(root))
    names = builder.info.features["label"].names
    assert names == sorted(WNIDS)
    for ex in tfds.as_numpy(builder.as_dataset(split="validation",
                                               shuffle_files=False)):
        assert names[ex["label"]] == val[ex["id"].decode()]
    test = list(tfds.as_numpy(builder.as_dataset(split="test")))
    assert len(test) == 3 and all(ex["label"] == -1 for ex in test)
    # Train labels follow the class folders; greyscale JPEGs decode to RGB.
    greys = 0
    for ex in tfds.as_numpy(builder.as_dataset(split="train")):
        assert ex["image"].shape == (64, 64, 3)
        assert ex["id"].decode().startswith(names[ex["label"]])
        if ex["id"].decode().endswith("_0.JPEG"):
            greys += 1
            assert np.array_equal(ex["image"][..., 0], ex["image"][..., 2])
    assert greys == 3
    # The streamed Split gives images in the order of its labels.
    images = ds.test.images
    by_order = list(tfds.as_numpy(builder.as_dataset(
        split="validation", shuffle_files=False)))
    np.testing.assert_array_equal(images, [e["image"] for e in by_order])
    np.testing.assert_array_equal(ds.test.labels,
                                  [e["label"] for e in by_order])


def test_tiny_imagenet_absent_or_broken_leaves_nothing_behind(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load("tiny_imagenet", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "tiny-imagenet-200.zip" in msg
    assert str(tmp_path / "downloads" / "manual") in msg
    assert "--download" not in msg  # nothing to download it from
    # A zip whose annotations name an unknown class fails mid-preparation...
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    zpath = manual / "tiny-imagenet-200.zip"
    make_tiny_imagenet_zip(zpath)
    with zipfile.ZipFile(zpath, "a") as z:
        z.writestr("tiny-imagenet-200/val/images/val_99.JPEG",
                   jpeg(np.random.default_rng(1)))
    with pytest.raises(Exception, match="val_99.JPEG"):
        data.load("tiny_imagenet", data_dir=str(tmp_path))
    # ... and leaves no prepared (or half-prepared) version behind.
    version_dir = tmp_path / "tiny_imagenet"
    left = [p.name for p in version_dir.iterdir()] if version_dir.exists() \
        else []
    assert left == []
    assert not tfds.builder("tiny_imagenet",
                            data_dir=str(tmp_path)).is_prepared()


def test_image_folder_any_size_png_and_jpeg(tmp_path):
    root = tmp_path / "pets"
    write_image_folder(root, 5, 2)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    ds = data.load(f"folder:{root}", image_size=24)
    assert ds.class_names == ["cat", "dog", "eel"] and ds.num_classes == 3
    assert ds.image_size == (24, 24)
    assert len(ds.train) == 15 and len(ds.test) == 6
    assert np.bincount(ds.train.labels).tolist() == [5, 5, 5]
    images = ds.train.images
    assert images.shape == (15, 24, 24, 3) and images.dtype == np.uint8
    # Each image is its file, resized and centre-cropped, in label order.
    builder = tfds.ImageFolder(str(root))
    files = list(tfds.as_numpy(builder.as_dataset(split="train",
                                                  shuffle_files=False)))
    for ex, img, label in zip(files, images, ds.train.labels):
        assert ex["label"] == label
        ref = augment.resize_center_crop(tf.constant(ex["image"]), 24)
        np.testing.assert_array_equal(img, ref.numpy())
    # Default size: the shorter side of the first training image.
    first = files[0]["image"]
    assert data.load(f"folder:{root}").image_size == (min(first.shape[:2]),) * 2
    # The test split may be called val.
    (root / "test").rename(root / "val")
    assert len(data.load(f"folder:{root}", image_size=24).test) == 6


@pytest.mark.parametrize("setup,message", [
    ("missing", "does not exist"),
    ("no_test", "needs train/ and one of test/"),
])
def test_image_folder_errors(tmp_path, setup, message):
    root = tmp_path / "imgs"
    if setup == "no_test":
        write_image_folder(root, 2, 1)
        import shutil
        shutil.rmtree(root / "test")
    with pytest.raises(FileNotFoundError, match=message):
        data.load(f"folder:{root}")


def test_bad_dataset_names_and_options():
    with pytest.raises(ValueError, match="Replace PATH"):
        data.load("folder:PATH")
    with pytest.raises(KeyError, match="folder:PATH, stl10, tiny_imagenet"):
        data.load("stl-10")
    with pytest.raises(ValueError, match="no unlabeled split"):
        data.load("digits", unlabeled_split=True)


@pytest.mark.parametrize("name,size,classes", [("cifar100", 32, 100),
                                               ("stl10", 96, 10)])
def test_tfds_datasets_with_mock_data(name, size, classes):
    with tfds.testing.mock_data(num_examples=24):
        ds = data.load(name, download=True)
        assert (ds.num_classes, ds.image_size) == (classes, (size, size))
        assert len(ds.train) == 24 and ds.train.num_labeled == 24
        x, y = next(iter(pipeline.train_dataset(ds.train, 8, seed=0)))
        assert x["student"].shape == (8, size, size, 3)
        assert x["student"].dtype == tf.uint8
        assert set(y.numpy()) <= set(range(classes))
        # Streamed images come out in the order of the labels.
        pairs = list(ds.train.dataset().as_numpy_iterator())
        np.testing.assert_array_equal([p[1] for p in pairs], ds.train.labels)
        if name == "stl10":
            both = data.load(name, download=True, unlabeled_split=True)
            assert len(both.train) == 48 and both.train.num_labeled == 24
            assert (both.train.labels[24:] == -1).all()
            labels = np.concatenate([b[1].numpy() for b in
                                     pipeline.train_dataset(both.train, 8)])
            assert (labels == -1).sum() == 24  # drawn from both splits


def test_tfds_absent_datasets_say_what_to_put_where(tmp_path):
    for name, archive in (("cifar100", "cifar-100-binary.tar.gz"),
                          ("stl10", "stl10_binary.tar.gz")):
        with pytest.raises(FileNotFoundError) as e:
            data.load(name, data_dir=str(tmp_path))
        assert archive in str(e.value) and "--download" in str(e.value)
        assert str(tmp_path / "downloads" / "manual") in str(e.value)


def _tiny_config(dataset, **kw):
    c = default_config()
    c.dataset, c.distill, c.student = dataset, "none", "resnet8"
    c.epochs, c.batch_size, c.eval_batch_size = 1, 8, 16
    c.export = False
    for k, v in kw.items():
        setattr(c, k, v)
    return train.resolve_config(c, {})


@pytest.mark.parametrize("name", ["cifar100", "stl10"])
def test_train_reaches_training_on_mocked_tfds(name, tmp_path):
    with tfds.testing.mock_data(num_examples=16):
        res = train.run(_tiny_config(name, download=True,
                                     unlabeled_split=name == "stl10"),
                        str(tmp_path), verbose=0)
    assert res["epochs"] == 1 and 0 <= res["test_top1_last"] <= 100
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["dataset"] == name


def test_train_cli_tiny_imagenet_and_folder(tiny_dir, tmp_path):
    root, _ = tiny_dir
    common = ["--distill=none", "--student=resnet8", "--epochs=1",
              "--batch_size=4", "--config.eval_batch_size=8",
              "--config.export=false"]
    r = run_cli([*common, "--dataset=tiny_imagenet", f"--data_dir={root}",
                 f"--workdir={tmp_path}/ti"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tiny_imagenet: 3 classes, 64x64 RGB, train 12" in r.stderr
    res = json.loads((tmp_path / "ti" / "results.json").read_text())
    assert res["epochs"] == 1
    write_image_folder(tmp_path / "imgs", 4, 2)
    r = run_cli([*common, f"--dataset=folder:{tmp_path}/imgs",
                 f"--workdir={tmp_path}/f"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert re.search(r"imgs: 3 classes, (\d+)x\1 RGB, train 12 \(12 labeled,"
                     r" 0 unlabeled\), test 6", r.stderr)
    r = run_cli([*common, "--dataset=stl10", f"--data_dir={tmp_path}/no",
                 f"--workdir={tmp_path}/s"])
    assert r.returncode == 2 and "stl10_binary.tar.gz" in r.stderr
    assert "Traceback" not in r.stderr


def test_folder_of_thousands_trains_with_ega_and_exports(tmp_path):
    """~3,100 PNG/JPEG files of varied sizes -> EGA -> SavedModel."""
    digits = data.load("digits")
    n = write_image_folder(tmp_path / "digits", 270, 45, source=digits)
    assert n == 3150
    # A teacher that knows something with no training: 8x8 average-pooled
    # pixels (a k-NN on them separates digits well), standardised per
    # feature as ega_tf.pretrain does.
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.AveragePooling2D(4)(inputs)
    backbone = keras.Model(inputs, keras.layers.Flatten()(x), name="backbone")
    preprocess = teachers.TeacherPreprocess(
        mean=(0.5,) * 3, std=(0.25,) * 3, image_size=(32, 32))
    feats = backbone(preprocess(digits.train.images)).numpy()
    teacher = teachers.assemble(backbone, preprocess,
                                standardize=teachers.FeatureStandardize(
                                    feats.mean(0), feats.std(0) + 1e-3))
    teachers.save(teacher, str(tmp_path / "t.keras"))
    c = _tiny_config(f"folder:{tmp_path / 'digits'}", distill="ega",
                     teacher=str(tmp_path / "t.keras"), epochs=3,
                     batch_size=64, export=True)
    res = train.run(c, str(tmp_path / "run"), verbose=0)
    assert res["epochs"] == 3
    # Measured here: 41.6 (chance 10); the teacher head reads 81.6.
    assert res["test_top1_best"] > 25
    assert res["teacher_head_top1_last"] > 50
    served = tf.saved_model.load(res["saved_model"])
    ds = data.load(f"folder:{tmp_path / 'digits'}")
    out = served.signatures["serving_default"](
        images=tf.constant(ds.test.images[:64]))
    pred = np.argmax(out["probabilities"].numpy(), -1)
    assert (pred == ds.test.labels[:64]).mean() > 0.2
    names = json.loads((tmp_path / "run" / "saved_model" /
                        "class_names.json").read_text())
    assert names == [str(i) for i in range(10)]
