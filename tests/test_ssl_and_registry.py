"""SimCLR pieces against references; the EGA Keras DistillationLoss inside
keras.distillation.Distiller; registries."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from ega_tf import losses
from ega_tf.registry import Registry
from ega_tf.ssl import knn_accuracy, nt_xent
from ega_tf.ssl.augment import RandomResizedCrop, simclr_augment
from tests.test_losses import np_ega


def np_nt_xent(z1, z2, t):
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        j = (i + b) % n
        logits = np.array([z[i] @ z[k] / t for k in range(n) if k != i])
        pos = z[i] @ z[j] / t
        total += np.log(np.exp(logits).sum()) - pos
    return total / n


def test_nt_xent_matches_reference():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 6, 5)).astype(np.float32)
    np.testing.assert_allclose(float(nt_xent(z1, z2, 0.5)),
                               np_nt_xent(z1, z2, 0.5), rtol=1e-5)
    # Identical, well separated views give a lower loss than random pairs.
    assert float(nt_xent(z1, z1, 0.1)) < float(nt_xent(z1, z2, 0.1))


def test_knn_accuracy_known_answer():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    labels = np.array([0, 0, 1, 1])
    test = np.array([[1, 0.05], [0.05, 1], [1, 0.2]])
    assert knn_accuracy(train, labels, test, [0, 1, 0], k=2) == 1.0
    assert knn_accuracy(train, labels, test, [1, 1, 1], k=2) == \
        pytest.approx(1 / 3)


def test_augment_is_per_image_inside_a_compiled_step():
    aug = simclr_augment(seed=3)
    images = tf.constant(np.tile(
        np.linspace(0, 255, 16 * 16 * 3, dtype=np.float32).reshape(
            1, 16, 16, 3), (8, 1, 1, 1)))
    out = tf.function(lambda x: aug(x, training=True))(images).numpy()
    diffs = [np.abs(out[i] - out[0]).mean() for i in range(1, 8)]
    assert min(diffs) > 0.5  # every image got its own crop / colours
    assert out.shape == (8, 16, 16, 3)
    np.testing.assert_array_equal(
        RandomResizedCrop()(images, training=False).numpy(), images.numpy())


def test_random_resized_crop_full_box_is_identity():
    img = tf.random.uniform((2, 8, 8, 3), 0, 255)
    crop = RandomResizedCrop(scale=(1.0, 1.0), ratio=(1.0, 1.0))
    np.testing.assert_allclose(crop(img, training=True).numpy(), img.numpy(),
                               atol=1e-3)


def _tiny(name, width):
    inp = keras.Input((4,))
    h = keras.layers.Dense(width, name="embedding")(inp)
    return keras.Model(inp, keras.layers.Dense(3, name="logits")(h),
                       name=name)


def test_ega_distillation_loss_in_keras_distiller():
    keras.utils.set_random_seed(0)
    teacher, student = _tiny("t", 6), _tiny("s", 6)
    ega = losses.EGADistillationLoss(teacher_layer_name="embedding",
                                     student_layer_name="embedding")
    dist = keras.distillation.Distiller(teacher, student, ega,
                                        student_loss_weight=0.5)
    dist.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    t_emb = keras.Model(teacher.input,
                        teacher.get_layer("embedding").output)(x).numpy()
    s_emb = keras.Model(student.input,
                        student.get_layer("embedding").output)(x).numpy()
    want = np_ega(t_emb, s_emb)[0]
    got = ega.compute_loss(tf.constant(t_emb), tf.constant(s_emb))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    hist = dist.fit(x, np.arange(10) % 3, epochs=1, verbose=0)
    assert np.isfinite(hist.history["loss"][0])
    with pytest.raises(ValueError, match="equal width"):
        ega.validate_outputs(tf.zeros((2, 3)), tf.zeros((2, 4)))
    edge_only = losses.EGADistillationLoss(node_weight=0.0)
    edge_only.validate_outputs(tf.zeros((2, 3)), tf.zeros((2, 4)))
    np.testing.assert_allclose(
        float(edge_only.compute_loss(tf.constant(t_emb), tf.constant(s_emb))),
        0.24 * np_ega(t_emb, s_emb)[2], rtol=1e-5)


def test_registry_rejects_duplicates_and_lists_names():
    reg = Registry("widget")
    reg.register("a", 1)
    reg.register("b")(2)
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a", 3)
    with pytest.raises(KeyError, match="Valid names: a, b"):
        reg.get("c")
    assert reg("b") == 2 and "a" in reg
