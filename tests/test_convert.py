"""Checkpoint conversion: every torchvision-ResNet family in its published
file layout, converted and compared with PyTorch on the same images."""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ega_tf import teachers  # noqa: E402
from ega_tf.teachers import convert  # noqa: E402
from ega_tf.teachers.porting import ConversionError  # noqa: E402
from ega_tf.teachers.reference.pil_pipeline import torchvision_eval  # noqa: E402,E501
from ega_tf.teachers.reference.torch_resnet import ResNet, randomized  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def pil_preprocess(images_uint8, mean, std, shorter=256, crop=224,
                   resample="bilinear"):
    """torchvision's evaluation transform on PIL images, as NCHW torch."""
    return torch.tensor(torchvision_eval(images_uint8, shorter, crop,
                                         resample, mean, std)).permute(
        0, 3, 1, 2)


def layouts(model):
    """The published file layouts, with their heads and extras."""
    sd = {k: v for k, v in model.state_dict().items()}
    no_fc = {k: v for k, v in sd.items() if not k.startswith("fc.")}
    head = {"weight": torch.randn(8, 16), "bias": torch.randn(8)}
    return {
        "torchvision": sd,
        "barlow_twins": no_fc,
        "vicreg": no_fc,
        "moco": {"epoch": 200, "arch": "resnet50", "state_dict": {
            **{f"module.encoder_q.{k}": v for k, v in sd.items()},
            **{f"module.encoder_k.{k}": v.clone() for k, v in sd.items()},
            "queue": torch.randn(128, 64),
            "queue_ptr": torch.zeros(1, dtype=torch.long)}},
        "mocov3": {"state_dict": {
            **{f"module.base_encoder.{k}": v for k, v in sd.items()},
            **{f"module.momentum_encoder.{k}": v.clone()
               for k, v in sd.items()},
            "module.predictor.0.weight": torch.randn(8, 8)}},
        "swav": {**{f"module.{k}": v for k, v in no_fc.items()},
                 "module.projection_head.0.weight": head["weight"],
                 "module.prototypes.weight": torch.randn(30, 8)},
        "dino": {"teacher": {
            **{f"backbone.{k}": v for k, v in no_fc.items()},
            "head.mlp.0.weight": head["weight"]},
            "student": {}, "epoch": 3},
    }


@pytest.fixture(scope="module")
def small_resnet():
    return randomized(ResNet(blocks=(1, 1, 1, 1), num_classes=10), seed=1)


RESNET_FAMILIES = [n for n, f in convert.FAMILIES.items() if f.arch == "resnet"]


@pytest.mark.parametrize("family", RESNET_FAMILIES)
def test_each_family_layout_converts_with_parity(family, small_resnet,
                                                 tmp_path):
    path = tmp_path / f"{family}.pth"
    torch.save(layouts(small_resnet)[family], path)
    teacher = convert.convert(str(path), family if family in (
        "barlow_twins", "vicreg") else None, log=lambda s: None)
    meta = teachers.metadata(teacher)
    assert meta["family"] == family and meta["embedding_dim"] == 2048
    x = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(
        np.float32)
    with torch.no_grad():
        want = small_resnet.features(
            torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    got = teacher.get_layer("backbone")(x).numpy()
    assert rel_err(got, want) <= 1e-4


def test_resnet50_parity_with_preprocessing(tmp_path):
    """Full ResNet-50 in the MoCo v2 layout; preprocessing and network
    differences measured separately, then end to end."""
    model = randomized(ResNet(), seed=2)
    path = tmp_path / "moco_v2.pth.tar"
    torch.save(layouts(model)["moco"], path)
    teacher = convert.convert(str(path), log=lambda s: None)
    images = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3),
                                               dtype=np.uint8)
    ref_pixels = pil_preprocess(images, convert.IMAGENET_MEAN,
                                convert.IMAGENET_STD)
    ours_pixels = teacher.get_layer("preprocess")(images).numpy()
    pre_diff = np.abs(ours_pixels - ref_pixels.permute(0, 2, 3, 1).numpy())
    one_level = 1 / 255 / min(convert.IMAGENET_STD)
    print(f"preprocessing vs PIL: max abs diff {pre_diff.max():.2e} "
          f"({pre_diff.max() / one_level:.2f} grey levels), "
          f"{(pre_diff < 1e-5).mean():.4%} of values exact")
    assert pre_diff.max() <= one_level * 1.001
    assert (pre_diff < 1e-5).mean() > 0.99
    with torch.no_grad():
        want = model.features(ref_pixels).numpy()
    model_err = rel_err(teacher.get_layer("backbone")(
        ref_pixels.permute(0, 2, 3, 1).numpy()).numpy(), want)
    total_err = rel_err(teacher(images).numpy(), want)
    print(f"model rel err {model_err:.2e}, end to end {total_err:.2e}")
    assert model_err <= 1e-4 and total_err <= 1e-4
    # The .keras file reloads to the same function.
    out = str(tmp_path / "moco.keras")
    teachers.save(teacher, out)
    np.testing.assert_allclose(teachers.load(out)(images).numpy(),
                               teacher(images).numpy(), rtol=1e-5, atol=1e-6)


def test_wrong_architecture_lists_every_mismatch(small_resnet, tmp_path):
    sd = layouts(small_resnet)["torchvision"]
    sd["layer2.0.conv2.weight"] = torch.zeros(128, 128, 5, 5)
    sd["extra.thing"] = torch.zeros(3)
    del sd["layer3.0.bn1.running_var"]
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(ConversionError) as e:
        convert.convert(str(path), log=lambda s: None)
    msg = str(e.value)
    assert "layer2.0.conv2.weight" in msg and "(5, 5, 128, 128)" in msg
    assert "layer3.0.bn1.running_var" in msg and "extra.thing" in msg


def test_stray_keys_outside_the_prefix_are_refused(small_resnet, tmp_path):
    ck = layouts(small_resnet)["moco"]
    ck["state_dict"]["module.something_else.weight"] = torch.zeros(2)
    path = tmp_path / "m.pth.tar"
    torch.save(ck, path)
    with pytest.raises(ConversionError, match="something_else"):
        convert.convert(str(path), log=lambda s: None)


def run_cli(*args):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run([sys.executable, "-m", "ega_tf.convert_teacher",
                           *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def test_cli_converts_and_bad_files_leave_nothing(small_resnet, tmp_path):
    good = tmp_path / "swav.pth"
    torch.save(layouts(small_resnet)["swav"], good)
    out = tmp_path / "swav.keras"
    r = run_cli(f"--checkpoint={good}", f"--out={out}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert out.exists() and "swav" in r.stdout
    pre = teachers.load(str(out)).get_layer("preprocess")
    assert pre.std == convert.SWAV_STD  # SwAV's own normalisation

    not_ckpt = tmp_path / "notes.txt"
    not_ckpt.write_text("hello")
    truncated = tmp_path / "trunc.pth"
    truncated.write_bytes(good.read_bytes()[:1000])
    vit = tmp_path / "clip_vit.pt"
    torch.save({"visual.class_embedding": torch.zeros(8),
                "visual.conv1.weight": torch.zeros(8, 3, 32, 32)}, vit)
    unknown = tmp_path / "unknown.pth"
    torch.save({"encoder.weight": torch.zeros(2)}, unknown)
    cases = [(not_ckpt, "Could not read"), (truncated, "Could not read"),
             (vit, "--format=open_clip_gelu for the exact GELU"),
             (unknown, "Pass --format with one of"),
             (tmp_path / "absent.pth", "does not exist")]
    for path, message in cases:
        target = tmp_path / f"{path.stem}.keras"
        r = run_cli(f"--checkpoint={path}", f"--out={target}")
        assert r.returncode == 2, (path, r.stderr[-2000:])
        assert message in r.stderr and "Traceback" not in r.stderr
        assert not target.exists()
    r = run_cli(f"--checkpoint={good}", "--format=byol",
                f"--out={tmp_path / 'x.keras'}")
    assert r.returncode == 2 and "Valid values: torchvision" in r.stderr
    # A checkpoint of another architecture than the one named.
    r = run_cli(f"--checkpoint={good}", "--format=simclr",
                f"--out={tmp_path / 'x.keras'}")
    assert r.returncode == 2 and "outside the simclr backbone prefix" in \
        r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.keras").exists()


def test_python_objects_need_allow_pickle(small_resnet, tmp_path):
    import argparse
    ck = layouts(small_resnet)["dino"]
    ck["args"] = argparse.Namespace(arch="resnet50", epochs=3)  # as DINO
    path = tmp_path / "dino_full.pth"
    torch.save(ck, path)
    with pytest.raises(ConversionError, match="--allow_pickle"):
        convert.convert(str(path), log=lambda s: None)
    teacher = convert.convert(str(path), allow_pickle=True, log=lambda s: None)
    assert teachers.metadata(teacher)["family"] == "dino"


def test_raw_checkpoint_is_converted_once_and_cached(small_resnet, tmp_path,
                                                     monkeypatch):
    monkeypatch.setenv("EGA_TF_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "barlow.pth"
    torch.save(layouts(small_resnet)["moco"], path)
    first = teachers.load_or_convert(str(path))
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and cached[0].name == convert.sha256(path) + ".keras"
    stamp = cached[0].stat().st_mtime_ns
    again = teachers.load_or_convert(str(path))
    assert cached[0].stat().st_mtime_ns == stamp  # not converted again
    x = np.random.default_rng(3).integers(0, 256, (1, 32, 32, 3), np.uint8)
    np.testing.assert_allclose(again(x).numpy(), first(x).numpy(), rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["moco", "clip"])
def test_published_layout_checkpoint_trains_a_student(layout, tmp_path):
    """Done-when of the teachers issue: a MoCo-layout ResNet-50 file and a
    CLIP-layout RN50 TorchScript file, each passed straight to the training
    CLI (converted and cached on the way)."""
    import json
    if layout == "moco":
        path = tmp_path / "moco_v2.pth.tar"
        torch.save(layouts(randomized(ResNet(), seed=4))["moco"], path)
    else:
        from ega_tf.teachers.reference.torch_clip import CLIPStandIn, ModifiedResNet
        path = tmp_path / "RN50.pt"
        model = CLIPStandIn(randomized(ModifiedResNet(), seed=6)).eval()
        torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 224, 224)),
                       path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "EGA_TF_CACHE": str(tmp_path / "cache")}
    work = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "ega_tf.train", "--dataset=digits",
         "--student=resnet8", f"--teacher={path}", "--epochs=1",
         "--labeled_fraction=0.1", f"--workdir={work}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((work / "results.json").read_text())
    assert res["epochs"] == 1 and res["teacher_head_top1_last"] is not None


def test_clip_rn50_torchscript_file_parity(tmp_path):
    """OpenAI's RN50 layout as a TorchScript archive with a text tower."""
    from ega_tf.teachers.reference.torch_clip import CLIPStandIn, ModifiedResNet
    visual = randomized(ModifiedResNet(), seed=5)
    model = CLIPStandIn(visual).eval()
    path = tmp_path / "RN50.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 224, 224)), path)
    teacher = convert.convert(str(path), log=lambda s: None)
    meta = teachers.metadata(teacher)
    assert meta["family"] == "clip" and meta["embedding_dim"] == 1024
    assert meta["heads"] == 32 and meta["resolution"] == 224
    x = np.random.default_rng(4).normal(size=(2, 224, 224, 3)).astype(
        np.float32)
    with torch.no_grad():
        want = visual(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    err = rel_err(teacher.get_layer("backbone")(x).numpy(), want)
    print(f"CLIP RN50 model rel err {err:.2e}")
    assert err <= 1e-4
    # Preprocessing: Pillow's bicubic to 224 then CLIP's statistics, as
    # CLIP's own transform does on PIL images.
    img = np.random.default_rng(5).integers(0, 256, (2, 48, 40, 3), np.uint8)
    want = pil_preprocess(img, convert.CLIP_MEAN, convert.CLIP_STD, 224,
                          224, "bicubic").permute(0, 2, 3, 1).numpy()
    ours = teacher.get_layer("preprocess")(img).numpy()
    diff = np.abs(ours - want)
    one_level = 1 / 255 / min(convert.CLIP_STD)
    print(f"CLIP preprocessing vs PIL: max abs {diff.max():.4f} "
          f"({diff.max() / one_level:.2f} grey levels), "
          f"{(diff < 1e-5).mean():.4%} of values exact")
    assert diff.max() <= one_level * 1.001
    assert (diff < 1e-5).mean() > 0.99


def test_clip_state_dict_without_visual_parts_fails(tmp_path):
    from ega_tf.teachers.reference.torch_clip import CLIPStandIn, ModifiedResNet
    sd = CLIPStandIn(ModifiedResNet(layers=(1, 1, 1, 1))).state_dict()
    del sd["visual.attnpool.c_proj.bias"]
    sd["visual.extra.weight"] = torch.zeros(2)
    path = tmp_path / "clip_sd.pt"
    torch.save(sd, path)
    with pytest.raises(ConversionError) as e:
        convert.convert(str(path), log=lambda s: None)
    assert "attnpool.c_proj.bias" in str(e.value)
    assert "extra.weight" in str(e.value)


def test_wide_swav_resnet_converts_with_parity(tmp_path):
    """SwAV's wide ResNets (w2, w4, w5) scale every width; widths are read
    off the file, so a 2x-wide network converts like the 1x one."""
    model = randomized(ResNet(blocks=(1, 1, 1, 1), width=128), seed=7)
    path = tmp_path / "swav_RN50w2.pth.tar"
    torch.save(layouts(model)["swav"], path)
    teacher = convert.convert(str(path), log=lambda s: None)
    meta = teachers.metadata(teacher)
    assert meta["family"] == "swav" and meta["embedding_dim"] == 4096
    x = np.random.default_rng(3).normal(size=(2, 64, 64, 3)).astype(
        np.float32)
    with torch.no_grad():
        want = model.features(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    err = rel_err(teacher.get_layer("backbone")(x).numpy(), want)
    print(f"SwAV w2 model rel err {err:.2e}")
    assert err <= 1e-4


def test_clip_rn50x4_layout_converts_with_parity(tmp_path):
    """RN50x4's shape of network (width 80, 288 px, 40 heads, 640-d output)
    goes through the same code; fewer blocks keep the test small."""
    from ega_tf.teachers.reference.torch_clip import (CLIPStandIn,
                                                      ModifiedResNet)
    visual = randomized(ModifiedResNet(layers=(1, 1, 1, 1), out_dim=640,
                                       width=80, resolution=288), seed=8)
    sd = CLIPStandIn(visual).state_dict()
    torch.save(sd, tmp_path / "RN50x4_state_dict.pt")
    teacher = convert.convert(str(tmp_path / "RN50x4_state_dict.pt"),
                              log=lambda s: None)
    meta = teachers.metadata(teacher)
    assert (meta["width"], meta["heads"], meta["resolution"],
            meta["embedding_dim"]) == (80, 40, 288, 640)
    x = np.random.default_rng(6).normal(size=(2, 288, 288, 3)).astype(
        np.float32)
    with torch.no_grad():
        want = visual(torch.tensor(x).permute(0, 3, 1, 2)).numpy()
    err = rel_err(teacher.get_layer("backbone")(x).numpy(), want)
    print(f"CLIP RN50x4-shaped model rel err {err:.2e}")
    assert err <= 1e-4
