"""SavedModel export served from a fresh TensorFlow-only process; the train,
pretrain and predict command lines end to end on digits; bad input."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from ega_tf import export, students, teachers
from ega_tf.distiller import build_student

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}


def run(args, **kw):
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=900, **kw)


def test_export_serves_in_fresh_process_without_ega_tf(tmp_path):
    keras.utils.set_random_seed(1)
    student = build_student(students.create("resnet8"), 10, 32)
    # Non-trivial BN statistics, so inference mode matters.
    for layer in student.get_layer("resnet8").layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.rand(*layer.moving_mean.shape))
            layer.moving_variance.assign(
                1 + np.random.rand(*layer.moving_variance.shape))
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3),
                                               dtype=np.uint8)
    want = student(images, training=False)["logits"].numpy()
    path = str(tmp_path / "saved_model")
    export.export_student(student, path, [f"c{i}" for i in range(10)])
    np.save(tmp_path / "images.npy", images)
    code = (
        "import sys, numpy as np, tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "f = m.signatures['serving_default']\n"
        "out = f(images=tf.constant(np.load(sys.argv[2])))\n"
        "np.save(sys.argv[3], out['logits'].numpy())\n"
        "np.save(sys.argv[4], out['probabilities'].numpy())\n"
        "assert 'ega_tf' not in sys.modules and 'keras' not in "
        "[k.split('.')[0] for k in sys.modules if k.startswith('ega')]\n")
    r = subprocess.run([sys.executable, "-c", code, path,
                        str(tmp_path / "images.npy"), str(tmp_path / "l.npy"),
                        str(tmp_path / "p.npy")], env=ENV, cwd=str(tmp_path),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    got = np.load(tmp_path / "l.npy")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    probs = np.load(tmp_path / "p.npy")
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert export.load_class_names(path)[3] == "c3"
    # Re-export over an existing one replaces it whole, leaves no temp dirs.
    export.export_student(student, path)
    assert sorted(os.listdir(tmp_path)) == ["images.npy", "l.npy", "p.npy",
                                            "saved_model"]


def test_teacher_file_roundtrip_and_errors(tmp_path):
    backbone = students.create("resnet8")
    backbone.name = "backbone"
    pre = teachers.TeacherPreprocess((0.5,) * 3, (0.25,) * 3,
                                     metadata={"family": "test"})
    teacher = teachers.assemble(backbone, pre)
    x = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    path = str(tmp_path / "t.keras")
    teachers.save(teacher, path)
    again = teachers.load(path)
    np.testing.assert_allclose(again(x).numpy(), teacher(x).numpy(),
                               rtol=1e-6)
    assert teachers.metadata(again) == {"family": "test"}
    assert again.get_layer("backbone").output_shape == (None, 64)
    with pytest.raises(FileNotFoundError, match="ega_tf.pretrain"):
        teachers.load(str(tmp_path / "missing.keras"))
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="Could not read teacher file"):
        teachers.load(str(bad))


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "teacher.keras"
    r = run(["-m", "ega_tf.pretrain", "--dataset=digits", "--arch=resnet8",
             "--epochs=2", "--batch_size=128", f"--out={out}"])
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["knn_top1"] > 0.5  # chance is 0.1
    return str(out)


def test_train_ega_cli_end_to_end_and_resume(teacher_file, tmp_path):
    work = tmp_path / "run"
    args = ["-m", "ega_tf.train", "--dataset=digits", "--student=resnet8",
            f"--teacher={teacher_file}", "--epochs=2", "--batch_size=64",
            "--labeled_fraction=0.5", f"--workdir={work}",
            "--config.optim.lr=0.01"]
    r = run(args)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((work / "results.json").read_text())
    assert res["epochs"] == 2 and 0 <= res["test_top1_last"] <= 100
    assert res["test_top1_best"] >= res["test_top1_last"]
    assert res["teacher_head_top1_last"] is not None
    cfg = json.loads((work / "config.json").read_text())
    assert cfg["optim"]["lr"] == 0.01 and cfg["labeled_fraction"] == 0.5
    assert (work / "saved_model" / "saved_model.pb").exists()
    header = (work / "history.csv").read_text().splitlines()[0]
    for name in ("ce", "node", "edge", "top1", "top5", "teacher_top1",
                 "val_top1"):
        assert name in header.split(",")
    # Resume: 3 epochs in the same workdir trains one more epoch only.
    r = run(args[:-4] + ["--epochs=3"] + args[-3:])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Resumed from" in r.stderr
    assert json.loads((work / "results.json").read_text())["epochs"] == 3
    # predict with the exported student on PNG files.
    import tensorflow as tf
    from ega_tf import data
    digits = data.load("digits")
    paths = []
    for i in range(3):
        p = tmp_path / f"d{i}.png"
        p.write_bytes(tf.io.encode_png(digits.test.images[i]).numpy())
        paths.append(str(p))
    r = run(["-m", "ega_tf.predict", f"--model={work / 'saved_model'}",
             "--top_k=2", *paths])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3 and all("%" in l for l in lines)


@pytest.mark.parametrize("args,message", [
    (["--dataset=digits", "--student=resnet9", "--distill=none"],
     "Valid names: MobileNetV2"),
    (["--dataset=digits"], "--distill=ega needs a teacher"),
    (["--dataset=digits", "--teacher=/nonexistent.keras"],
     "does not exist"),
    (["--dataset=digits", "--distill=none", "--config.precision=fp8"],
     "Valid values: float32"),
])
def test_train_bad_input_one_clear_line(args, message, tmp_path):
    r = run(["-m", "ega_tf.train", f"--workdir={tmp_path}/w", *args])
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr
