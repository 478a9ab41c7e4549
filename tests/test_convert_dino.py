"""DINOv2 and DINOv3 teachers: the publisher's hub files (written from the
PyTorch references in tools/reference, random weights, the publisher's key
names) and Hugging Face folders (written by ``transformers``'
``save_pretrained``), converted from the command line and compared with
the reference network at the teacher's input size and at the file's own."""

import json
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from absl.testing import parameterized

from ega_tf import teachers
from ega_tf.core.constants import IMAGENET_MEAN, IMAGENET_STD
from ega_tf.core.errors import ConversionError, UserError
from ega_tf.teachers import convert, dinov2, position_tables
from tests import checkpoints
from tests.checkpoints_ssl import (WIDTH, write_convnext, write_dinov2,
                                   write_dinov3, write_hf)
from tests.test_case import TestCase
from tools.reference.pil_pipeline import torchvision_eval

def torch_forward(fn, x):
    with torch.no_grad():
        return fn(torch.tensor(x).permute(0, 3, 1, 2)).numpy()


class PositionTablesTest(TestCase):

    def test_each_rule_is_pytorchs_interpolate(self):
        rng = np.random.default_rng(0)
        for n, out in ((37, 16), (37, 32), (5, 16), (16, 37)):
            table = rng.normal(size=(1, 1 + n * n, 8)).astype(np.float32)
            grid = torch.tensor(table[:, 1:]).reshape(1, n, n, 8).permute(
                0, 3, 1, 2)
            for rule, kw in (
                    ("scale", {"scale_factor": ((out + 0.1) / n,) * 2}),
                    ("size", {"size": (out, out)}),
                    ("antialias", {"size": (out, out), "antialias": True})):
                want = F.interpolate(grid, mode="bicubic", **kw).permute(
                    0, 2, 3, 1).reshape(1, -1, 8).numpy()
                got = position_tables.resize(table, out, rule, offset=0.1)
                np.testing.assert_array_equal(got[:, :1], table[:, :1])
                # PyTorch's float32 coordinates move its weights by ~2e-6.
                self.assertAllClose(got[:, 1:], want, atol=3e-5,
                                    msg=f"{rule} {n}->{out}")
        # The three rules are three functions (37 -> 16, N(0, 1) values).
        table = rng.normal(size=(1, 1 + 37 * 37, 8))
        resized = [position_tables.resize(table, 16, r, 0.1)
                   for r in position_tables.RULES]
        self.assertGreater(np.abs(resized[0] - resized[1]).max(), 0.1)
        self.assertGreater(np.abs(resized[1] - resized[2]).max(), 0.1)


class Dinov2Test(TestCase):

    def convert_cli(self, path, *flags):
        out = self.tmp_path() / "teacher.keras"
        self.assertSucceeded(self.run_cli(
            "convert_teacher", f"--checkpoint={path}", f"--out={out}",
            *flags))
        return teachers.load(str(out))

    def test_file_stored_at_518_matches_the_publisher_at_224_and_518(self):
        path, model = write_dinov2(self.tmp_path())
        teacher = self.convert_cli(path)
        meta = teachers.metadata(teacher)
        self.assertEqual(
            (meta["family"], meta["network"], meta["heads"],
             meta["stored_resolution"], meta["input_resolution"],
             meta["positions"], meta["embedding_dim"]),
            ("dinov2", "vit_d128_p14", 2, 518, 224, "scale", WIDTH))
        for size, net in ((224, teacher.get_layer("backbone")),
                          (518, self.convert_cli(path, "--input_size=518")
                           .get_layer("backbone"))):
            x = checkpoints.random_pixels(1, n=2, size=size)
            self.assertParity(np.asarray(net(x)), torch_forward(model, x),
                              1e-4, f"dinov2 at {size}")
        # The table resized another way (Hugging Face's rule: the output
        # size, not the scale factor) is another function.
        other = teacher.get_layer("backbone")
        dinov2.set_positions(other.get_layer("dinov2"),
                             model.pos_embed.detach().numpy(), "size")
        x = checkpoints.random_pixels(2, n=2, size=224)
        self.assertGreater(self.rel_err(other(x), torch_forward(model, x)),
                           1e-3)

    def test_the_head_count_is_the_familys(self):
        """Heads are not in the weights: DINOv2's width / 64 (2 here);
        64 / 2 = 4 heads of 32 reads the same file as another function."""
        path, model = write_dinov2(self.tmp_path())
        family, arch, kept = convert.load_backbone(str(path))
        arch["heads"] = 4
        other = dinov2.build(arch)
        dinov2.port(other, kept)
        x = checkpoints.random_pixels(2, n=2, size=224)
        self.assertGreater(self.rel_err(other(x), torch_forward(model, x)),
                           1e-3)

    def test_registers_swiglu_and_the_linear_evaluation_feature(self):
        path, model = write_dinov2(self.tmp_path(), registers=4,
                                   swiglu=True)
        teacher = self.convert_cli(path, "--feature=cls_patchmean",
                                   "--input_size=112")
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["registers"], meta["swiglu"],
                          meta["positions"], meta["embedding_dim"]),
                         (4, True, "antialias", 2 * WIDTH))
        x = checkpoints.random_pixels(3, n=2, size=112)
        self.assertParity(np.asarray(teacher.get_layer("backbone")(x)),
                          torch_forward(model.linear_feature, x), 1e-4,
                          "dinov2 reg4 swiglu cls_patchmean")

    def test_preprocessing_is_the_publishers_evaluation_transform(self):
        path, _ = write_dinov2(self.tmp_path())
        teacher = convert.convert(str(path), log=lambda s: None)
        images = np.clip(checkpoints.random_pixels(4, n=2, size=40) * 60
                         + 128, 0, 255).astype(np.uint8)[:, :, 4:]
        want = torchvision_eval(images, 256, 224, "bicubic", IMAGENET_MEAN,
                                IMAGENET_STD)
        self.assertPixelsMatch(teacher.get_layer("preprocess")(images), want,
                               IMAGENET_STD, "dinov2 vs PIL")

    @pytest.mark.slow  # three programs' worth; the tool's logic is tested
    # fast on a CLIP file (tests/test_convert_vit.py)
    def test_parity_tool_on_a_dino_file_and_an_image(self):
        """tools/parity.py loads the file strictly into the PyTorch
        reference and compares on a photo-sized image."""
        from tests.test_convert_vit import run_parity_tool_here
        for writer, name in ((write_dinov2, "dinov2"),
                             (write_dinov3, "dinov3"),
                             (write_convnext, "dinov3_convnext")):
            tmp = self.tmp_path()
            path, _ = writer(tmp)
            out, net, pre = run_parity_tool_here(path, tmp, (60, 80, 3))
            self.assertIn(f"family {name}", out)
            self.assertLessEqual(net, 1e-4)
            self.assertLessEqual(pre, 1 / 255 / min(IMAGENET_STD) * 1.001)

    def test_bad_options_are_refused(self):
        path, _ = write_dinov2(self.tmp_path())
        with self.assertRaisesRegex(UserError, "multiple of the patch size"):
            convert.convert(str(path), input_size=100)
        with self.assertRaisesRegex(UserError, "cls, cls_patchmean"):
            convert.convert(str(path), feature="patches")
        resnet = checkpoints.write_resnet("torchvision", self.tmp_path())
        with self.assertRaisesRegex(UserError, "applies to: dinov2, dinov3"):
            convert.convert(str(resnet.path), input_size=224)


class Dinov3Test(TestCase):

    @parameterized.parameters(False, True)
    def test_hub_file_matches_the_publisher(self, swiglu):
        path, model = write_dinov3(self.tmp_path(), swiglu=swiglu)
        for size, feature in ((224, "cls"), (112, "cls_patchmean")):
            teacher = convert.convert(str(path), input_size=size,
                                      feature=feature, log=lambda s: None)
            meta = teachers.metadata(teacher)
            self.assertEqual((meta["family"], meta["gated"], meta["key_bias"],
                              meta["registers"]), ("dinov3", swiglu, False, 4))
            fn = model if feature == "cls" else model.linear_feature
            x = checkpoints.random_pixels(5, n=2, size=size)
            self.assertParity(np.asarray(teacher.get_layer("backbone")(x)),
                              torch_forward(fn, x), 1e-4,
                              f"dinov3 at {size}, {feature}")


class ConvNeXtTest(TestCase):

    def test_hub_file_matches_the_publisher(self):
        path, model = write_convnext(self.tmp_path())
        self.assertIn("norms.3.weight", model.state_dict())
        teacher = convert.convert(str(path), log=lambda s: None)
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["family"], meta["depths"], meta["dims"],
                          meta["input_resolution"]),
                         ("dinov3_convnext", [1, 1, 2, 1], [16, 32, 64, 128],
                          224))
        for size in (224, 64):
            x = checkpoints.random_pixels(7, n=2, size=size)
            self.assertParity(np.asarray(teacher.get_layer("backbone")(x)),
                              torch_forward(model, x), 1e-4,
                              f"DINOv3 ConvNeXt at {size}")


class HuggingFaceFolderTest(TestCase):

    @parameterized.parameters("dinov2", "dinov2_with_registers",
                              "dinov3_vit")
    def test_folder_matches_transformers(self, model_type):
        path, model = write_hf(self.tmp_path(), model_type)
        own = 518 if model_type != "dinov3_vit" else 224
        for size in sorted({224, own}):
            teacher = convert.convert(str(path), input_size=size,
                                      log=lambda s: None)
            x = checkpoints.random_pixels(6, n=2, size=size)
            want = torch_forward(lambda t: model(pixel_values=t)
                                 .pooler_output, x)
            self.assertParity(np.asarray(teacher.get_layer("backbone")(x)),
                              want, 1e-4, f"{model_type} at {size}")
        self.assertEqual(teachers.metadata(teacher)["family"],
                         f"hf_{model_type}")

    @parameterized.parameters("dinov2", "dinov3_vit")
    def test_folder_with_its_image_processor_end_to_end(self, model_type):
        """The folder's preprocessor_config.json (as the hub's folders
        carry it) decides the preprocessing: the teacher's pixels against
        the image processor's (transformers' Pillow backend; within one
        grey level, Pillow's fixed-point rounding), and the network on the
        processor's pixels against the model."""
        import transformers as tr
        path, model = write_hf(self.tmp_path(), model_type)
        imagenet = dict(image_mean=list(IMAGENET_MEAN),
                        image_std=list(IMAGENET_STD))
        processor = (tr.BitImageProcessorPil(
            size={"shortest_edge": 256}, resample=3,
            crop_size={"height": 224, "width": 224}, **imagenet)
            if model_type == "dinov2" else tr.ViTImageProcessorPil(
                size={"height": 224, "width": 224}, resample=2, **imagenet))
        processor.save_pretrained(path)
        teacher = convert.convert(str(path), log=lambda s: None)
        self.assertEqual(teachers.metadata(teacher)["preprocessing"],
                         "preprocessor_config.json")
        images = np.clip(checkpoints.random_pixels(4, n=2, size=40) * 60
                         + 128, 0, 255).astype(np.uint8)[:, :, 3:]
        pixels = processor(list(images), return_tensors="np")[
            "pixel_values"].transpose(0, 2, 3, 1)
        self.assertPixelsMatch(teacher.get_layer("preprocess")(images),
                               pixels, IMAGENET_STD, model_type)
        self.assertParity(teacher.get_layer("backbone")(pixels).numpy(),
                          torch_forward(lambda t: model(
                              pixel_values=t).pooler_output, pixels), 1e-4,
                          f"{model_type} on its processor's pixels")

    def test_vit_encoder_folder_matches_transformers(self):
        self.check_fixed_size_vit("vit")

    @pytest.mark.slow  # the same converter: a prefix, one more token
    def test_vit_classifier_and_deit_folders_match_transformers(self):
        for kind in ("vit_classifier", "deit"):
            self.check_fixed_size_vit(kind)

    def check_fixed_size_vit(self, kind):
        path, model = write_hf(self.tmp_path(), kind)
        teacher = convert.convert(str(path), log=lambda s: None)
        encoder = getattr(model, "vit", model)
        x = checkpoints.random_pixels(7, n=2, size=32)
        self.assertParity(np.asarray(teacher.get_layer("backbone")(x)),
                          torch_forward(lambda t: encoder(pixel_values=t)
                                        .last_hidden_state[:, 0], x), 1e-4,
                          f"{kind} folder")
        with self.assertRaisesRegex(UserError, "takes 32-px images"):
            convert.convert(str(path), input_size=64)

    @pytest.mark.slow  # keras-hub's own loader, as for the DINO folders
    def test_pooled_and_projected_folders_match_transformers(self):
        for kind in ("swin", "metaclip_2"):
            self.check_pooled_or_projected(kind)

    def check_pooled_or_projected(self, kind):
        """Swin: the mean of the final tokens (``pooler_output``); MetaCLIP
        2: the projected image embedding (``get_image_features``), the text
        tower left out of the file."""
        path, model = write_hf(self.tmp_path(), kind)
        teacher = convert.convert(str(path), log=lambda s: None)
        if kind == "swin":
            fn = lambda t: model(pixel_values=t).pooler_output  # noqa: E731
        else:
            def fn(t):
                out = model.get_image_features(pixel_values=t)
                return getattr(out, "pooler_output", out)
        x = checkpoints.random_pixels(8, n=2, size=32)
        self.assertParity(np.asarray(teacher.get_layer("backbone")(x)),
                          torch_forward(fn, x), 1e-4, f"{kind} folder")
        images = np.random.default_rng(0).integers(0, 256, (2, 40, 40, 3),
                                                   dtype=np.uint8)
        self.run_model_saving_test(teacher, images, teachers.save,
                                   teachers.load,
                                   str(self.tmp_path() / f"{kind}.keras"),
                                   atol=1e-5)
        with self.assertRaisesRegex(UserError, "feature is fixed"):
            convert.convert(str(path), feature="cls")

    def test_other_model_types_are_listed(self):
        path = self.tmp_path() / "bert"
        path.mkdir()
        (path / "config.json").write_text(json.dumps({"model_type": "bert"}))
        with self.assertRaisesRegex(ConversionError,
                                    "deit, dinov2, dinov2_with_registers, "
                                    "dinov3_vit, metaclip_2, swin, vit"):
            convert.convert(str(path))
        (path / "config.json").write_text(json.dumps(
            {"model_type": "dinov2"}))
        with self.assertRaisesRegex(UserError, "no model.safetensors"):
            convert.convert(str(path))


def keras_hub_dinov2(path, size=56):
    """A keras-hub DINOv2 backbone (random, 2 registers) saved as .keras:
    a model whose output is the token sequence."""
    import keras_hub
    net = keras_hub.models.DINOV2Backbone(
        patch_size=14, num_layers=2, hidden_dim=32, num_heads=2,
        intermediate_dim=64, num_register_tokens=2,
        image_shape=(size, size, 3), position_embedding_shape=(size, size, 3))
    net.save(path)
    return net


class UserTokenModelTest(TestCase):

    def test_a_token_sequence_model_is_pooled_as_asked(self):
        tmp = self.tmp_path()
        net = keras_hub_dinov2(tmp / "dinov2_backbone.keras")
        args = ["convert_teacher", f"--model={tmp / 'dinov2_backbone.keras'}",
                "--input_size=56", f"--out={tmp / 'teacher.keras'}"]
        result = self.run_cli(*args)
        self.assertOneLineError(result, "--pool=cls")
        self.assertSucceeded(self.run_cli(*args, "--pool=cls_mean"))
        teacher = teachers.load(str(tmp / "teacher.keras"))
        meta = teachers.metadata(teacher)
        self.assertEqual((meta["pool"], meta["prefix_tokens"],
                          meta["embedding_dim"]), ("cls_mean", 3, 64))
        x = np.random.default_rng(0).normal(size=(2, 56, 56, 3)).astype(
            np.float32)
        tokens = np.asarray(net({"images": x}))
        want = np.concatenate([tokens[:, 0], tokens[:, 3:].mean(1)], -1)
        self.assertAllClose(teacher.get_layer("backbone")(x), want,
                            atol=1e-5)
        self.assertOneLineError(self.run_cli(
            "convert_teacher", f"--checkpoint={tmp / 'x.pth'}", "--pool=cls",
            f"--out={tmp / 'b.keras'}"), "--pool applies to --model")


@pytest.mark.slow  # the published sizes (22 to 29 M parameters)
class PublishedSizeTest(TestCase):
    """ViT-S/14 (DINOv2, with and without registers), ViT-S/16 and
    ViT-S+/16 (DINOv3) and ConvNeXt-T at their real sizes, at 224 px; the
    DINOv2 file stored at 518 px, as published."""

    def check(self, path, fn, label, sizes=(224,)):
        for size in sizes:
            teacher = convert.convert(str(path), input_size=None if size == 224
                                      else size, log=lambda s: None)
            x = checkpoints.random_pixels(8, n=2, size=size)
            self.assertParity(np.asarray(teacher.get_layer("backbone")(x)),
                              torch_forward(fn, x), 1e-4, f"{label} at {size}")

    def test_published_sizes(self):
        tmp = self.tmp_path()
        vits14 = dict(dim=384, depth=12, heads=6)
        for registers in (0, 4):
            path, model = write_dinov2(tmp, registers=registers, **vits14)
            self.check(path, model, f"DINOv2 ViT-S/14 reg{registers}",
                       sizes=(224, 518))
        for swiglu in (False, True):
            path, model = write_dinov3(tmp, swiglu=swiglu, dim=384,
                                       depth=12, heads=6)
            self.check(path, model, f"DINOv3 ViT-S{'+' if swiglu else ''}/16")
        path, model = write_convnext(tmp, depths=(3, 3, 9, 3),
                                     dims=(96, 192, 384, 768))
        self.check(path, model, "DINOv3 ConvNeXt-T")


@pytest.mark.slow  # a program of its own per teacher
class FreshProcessTest(TestCase):

    def test_converted_teachers_train_a_student_in_a_fresh_process(self):
        tmp = self.tmp_path()
        convnext = write_convnext(tmp, depths=(1, 1, 1, 1),
                                  dims=(8, 16, 32, 64))[0]
        sources = {"dinov2": write_dinov2(tmp)[0], "convnext": convnext,
                   "dinov3": write_dinov3(tmp, swiglu=True)[0],
                   "hf": write_hf(tmp, "dinov2_with_registers")[0],
                   "hf3": write_hf(tmp, "dinov3_vit")[0]}
        keras_hub_dinov2(tmp / "user_backbone.keras")
        self.assertSucceeded(self.run_subprocess([
            "-m", "ega_tf.convert_teacher",
            f"--model={tmp / 'user_backbone.keras'}", "--input_size=56",
            "--pool=cls", f"--out={tmp / 'user.keras'}"]))
        self.assertSucceeded(self.run_subprocess([
            "-m", "ega_tf.train", "--dataset=digits",
            f"--teacher={tmp / 'user.keras'}", f"--workdir={tmp / 'user'}",
            "--config.epochs=1", "--config.data.image_size=16"]))
        for name, source in sources.items():
            out = tmp / f"{name}.keras"
            self.assertSucceeded(self.run_subprocess([
                "-m", "ega_tf.convert_teacher", f"--checkpoint={source}",
                f"--out={out}"] + ([] if name == "convnext"
                                   else ["--input_size=112"])))
            self.assertSucceeded(self.run_subprocess([
                "-m", "ega_tf.train", "--dataset=digits", f"--teacher={out}",
                f"--workdir={tmp / name}", "--config.epochs=1",
                "--config.data.image_size=16"]))
