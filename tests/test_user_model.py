"""A user's own .keras model or SavedModel as a teacher, with declared
preprocessing."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from ega_tf import teachers
from ega_tf.teachers.user_model import wrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(12)(x), name="mine")
    d = tmp_path_factory.mktemp("user")
    model.save(d / "mine.keras")
    model.export(str(d / "mine_savedmodel"), verbose=False)
    return model, d


def expected(model, images, mean, std):
    """Resize shorter side to 40 (bilinear), centre crop 32, normalise."""
    x = tf.image.resize(images.astype(np.float32), (40, 50),
                        antialias=True)[:, 4:36, 9:41] / 255.0
    return model((x - mean) / std).numpy()


@pytest.mark.parametrize("kind", ["mine.keras", "mine_savedmodel"])
def test_user_model_with_declared_preprocessing(encoder, kind, tmp_path):
    model, d = encoder
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    teacher = wrap(str(d / kind), resize_shorter=40, crop_size=32,
                   mean=mean, std=std)
    images = np.random.default_rng(1).integers(0, 256, (2, 48, 60, 3),
                                               np.uint8)
    want = expected(model, images, np.array(mean), np.array(std))
    np.testing.assert_allclose(teacher(images).numpy(), want, rtol=1e-5,
                               atol=1e-5)
    assert teachers.metadata(teacher)["embedding_dim"] == 12
    out = str(tmp_path / "t.keras")
    teachers.save(teacher, out)
    if kind == "mine_savedmodel":
        with pytest.raises(ValueError, match="--trust_saved_model"):
            teachers.load(out)
    loaded = teachers.load(out, trust_saved_model=kind == "mine_savedmodel")
    np.testing.assert_allclose(loaded(images).numpy(), want, rtol=1e-5,
                               atol=1e-5)
    assert loaded.get_layer("backbone").output_shape == (None, 12)


def test_user_model_errors(encoder, tmp_path):
    model, d = encoder
    with pytest.raises(ValueError, match="Declare the model's input"):
        wrap(str(d / "mine.keras"))
    with pytest.raises(FileNotFoundError, match="neither a .keras file"):
        wrap(str(tmp_path), image_size=32)
    fmap = keras.Model(model.input, model.layers[1].output)
    fmap.save(tmp_path / "fmap.keras")
    with pytest.raises(ValueError, match="a teacher needs"):
        wrap(str(tmp_path / "fmap.keras"), image_size=32)


def test_convert_teacher_cli_with_model(encoder, tmp_path):
    _, d = encoder
    out = tmp_path / "t.keras"
    r = subprocess.run(
        [sys.executable, "-m", "ega_tf.convert_teacher",
         f"--model={d / 'mine.keras'}", "--image_size=32",
         "--interpolation=pil_bicubic", "--mean=0.5,0.5,0.5",
         "--std=0.25,0.25,0.25", f"--out={out}"], cwd=ROOT,
        capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    pre = teachers.load(str(out)).get_layer("preprocess")
    assert pre.interpolation == "pil_bicubic" and pre.mean == (0.5,) * 3
