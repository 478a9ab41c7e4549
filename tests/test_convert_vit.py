"""ViT teachers: DINO and MoCo v3 (timm layout) and CLIP / open_clip ViTs,
each saved in its published file layout from a PyTorch reference with random
weights, converted, and compared on the same images."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ega_tf import teachers  # noqa: E402
from ega_tf.teachers import convert  # noqa: E402
from ega_tf.teachers.porting import ConversionError  # noqa: E402
from ega_tf.teachers.reference.torch_clip import CLIPStandIn  # noqa: E402
from ega_tf.teachers.reference.torch_vit import CLIPViT, TimmViT, randomize_norms  # noqa: E402


def rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def pixels(seed, n=2, size=224):
    """Normalised float NHWC images, and the same as a torch NCHW tensor."""
    x = np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(
        np.float32)
    return x, torch.tensor(x).permute(0, 3, 1, 2)


def network_error(teacher, reference, seed=0):
    x, xt = pixels(seed)
    with torch.no_grad():
        want = reference(xt).numpy()
    return rel_err(teacher.get_layer("backbone")(x).numpy(), want)


def quiet(path, fmt=None):
    return convert.convert(str(path), fmt, log=lambda s: None)


@pytest.fixture(scope="module")
def dino_vit():
    torch.manual_seed(0)
    return randomize_norms(TimmViT(dim=128, depth=2, heads=2), seed=1)


def test_dino_vit_full_checkpoint_and_backbone_file(dino_vit, tmp_path):
    sd = dino_vit.state_dict()
    full = {"teacher": {**{f"backbone.{k}": v for k, v in sd.items()},
                        "head.mlp.0.weight": torch.randn(16, 128),
                        "head.last_layer.weight_g": torch.randn(32, 1)},
            "student": {}, "epoch": 100}
    torch.save(full, tmp_path / "dino_full.pth")
    torch.save(sd, tmp_path / "dino_vits16_pretrain.pth")
    for name in ("dino_full.pth", "dino_vits16_pretrain.pth"):
        teacher = quiet(tmp_path / name)
        meta = teachers.metadata(teacher)
        assert meta["family"] == "dino_vit" and meta["heads"] == 2
        assert meta["embedding_dim"] == 128 and meta["resolution"] == 224
        assert teacher.get_layer("preprocess").interpolation == "pil_bicubic"
        err = network_error(teacher, dino_vit)
        print(f"DINO ViT ({name}) model rel err {err:.2e}")
        assert err <= 1e-4
    # The .keras file reloads to the same function (keras-hub layers).
    out = str(tmp_path / "dino.keras")
    teachers.save(teacher, out)
    images = np.random.default_rng(2).integers(0, 256, (2, 40, 40, 3),
                                               dtype=np.uint8)
    np.testing.assert_allclose(teachers.load(out)(images).numpy(),
                               teacher(images).numpy(), rtol=1e-5, atol=1e-5)
    assert teachers.load(out).get_layer("backbone").output_shape == (None, 128)


def test_mocov3_vit_uses_twelve_heads(tmp_path):
    torch.manual_seed(1)
    model = randomize_norms(TimmViT(dim=96, depth=2, heads=12), seed=2)
    sd = model.state_dict()
    ckpt = {"epoch": 300, "arch": "vit_small", "state_dict": {
        **{f"module.base_encoder.{k}": v for k, v in sd.items()},
        "module.base_encoder.head.0.weight": torch.randn(32, 96),
        "module.base_encoder.head.1.running_mean": torch.randn(32),
        **{f"module.momentum_encoder.{k}": v.clone() for k, v in sd.items()},
        "module.predictor.0.weight": torch.randn(32, 32)}}
    torch.save(ckpt, tmp_path / "vit-s-300ep.pth.tar")
    teacher = quiet(tmp_path / "vit-s-300ep.pth.tar")
    meta = teachers.metadata(teacher)
    assert meta["family"] == "mocov3_vit" and meta["heads"] == 12
    assert teacher.get_layer("preprocess").interpolation == "pil_bilinear"
    err = network_error(teacher, model)
    print(f"MoCo v3 ViT model rel err {err:.2e}")
    assert err <= 1e-4
    # The head count matters and is not in the weights: DINO's rule
    # (width / 64) gives 1 head here, and a different function.
    torch.save(sd, tmp_path / "as_dino.pth")
    wrong = quiet(tmp_path / "as_dino.pth", "dino_vit")
    assert teachers.metadata(wrong)["heads"] == 1
    assert network_error(wrong, model) > 1e-2


@pytest.fixture(scope="module")
def clip_vit():
    torch.manual_seed(3)
    return randomize_norms(CLIPViT(width=128, layers=2, out_dim=64), seed=4)


def test_clip_vit_torchscript_file_parity(clip_vit, tmp_path):
    """OpenAI's ViT-B/32 layout (smaller) as a TorchScript archive."""
    model = CLIPStandIn(clip_vit).eval()
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 224, 224)), path)
    teacher = quiet(path)
    meta = teachers.metadata(teacher)
    assert meta["family"] == "clip_vit" and meta["activation"] == "quick_gelu"
    assert meta["embedding_dim"] == 64 and meta["patch"] == 32
    assert meta["heads"] == 2 and meta["resolution"] == 224
    err = network_error(teacher, clip_vit)
    print(f"CLIP ViT model rel err {err:.2e}")
    assert err <= 1e-4
    out = str(tmp_path / "clip_vit.keras")
    teachers.save(teacher, out)
    x, _ = pixels(5)
    np.testing.assert_allclose(
        teachers.load(out).get_layer("backbone")(x).numpy(),
        teacher.get_layer("backbone")(x).numpy(), rtol=1e-5, atol=1e-5)


def test_open_clip_gelu_safetensors_needs_the_activation_named(tmp_path):
    from safetensors.torch import save_file
    torch.manual_seed(5)
    visual = randomize_norms(CLIPViT(width=128, layers=2, out_dim=64,
                                     quick_gelu=False), seed=6)
    sd = {k: v.contiguous() for k, v in CLIPStandIn(visual).state_dict()
          .items() if k not in ("input_resolution", "context_length",
                                "vocab_size")}
    path = tmp_path / "open_clip_model.safetensors"
    save_file(sd, str(path))
    with pytest.raises(ConversionError, match="--format=open_clip_gelu"):
        quiet(path)
    teacher = quiet(path, "open_clip_gelu")
    assert teachers.metadata(teacher)["activation"] == "gelu"
    err = network_error(teacher, visual)
    print(f"open_clip ViT (GELU) model rel err {err:.2e}")
    assert err <= 1e-4
    # QuickGELU on GELU weights converts without complaint and is wrong:
    # this is why the format must be named.
    assert network_error(quiet(path, "clip_vit"), visual) > 1e-3
    # A training checkpoint: {"state_dict": {"module.visual...": ...}}.
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v
                                            for k, v in sd.items()}},
               tmp_path / "epoch_32.pt")
    teacher = quiet(tmp_path / "epoch_32.pt", "open_clip_gelu")
    assert network_error(teacher, visual) <= 1e-4


def test_parity_tool_on_a_checkpoint_and_an_image(clip_vit, tmp_path):
    """tools/parity.py: a user's check of a real file on a real image."""
    from tests.parity_tool import run_parity_tool
    model = CLIPStandIn(clip_vit).eval()
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.trace(model, torch.zeros(1, 3, 224, 224)), path)
    out, net, pre = run_parity_tool(path, tmp_path, (60, 80, 3), seed=7)
    assert "family clip_vit, embedding 64, input 80x60 -> 224x224" in out
    assert net <= 1e-4
    assert pre <= 1 / 255 / min(convert.CLIP_STD) * 1.001  # one grey level
