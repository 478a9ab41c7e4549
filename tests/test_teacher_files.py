"""Teacher files read by a process other than the one that wrote them.

Each architecture's converted file (every family's, slow; and the locally
pretrained and user-wrapped kinds) is loaded by Keras's own loader and run
in a fresh process that only imported ``ega_tf``, and must give the
in-process outputs; ``import ega_tf`` must register every Keras class the
project defines; a teacher trained at one image size serves another;
BUILD.md's convert -> train commands run as written, each in its own
process; and a checkpoint passed straight to ``train`` is converted once,
then read from the cache by the next process.
"""

import ast
import json
import os
import shlex

import keras
import numpy as np
import pytest

from ega_tf import teachers
from ega_tf.teachers import checkpoint_io, convert, teacher_file
from ega_tf.teachers.families import FAMILIES
from tests import checkpoints
from tests.test_case import ROOT, TestCase, history_rows
from tools.synthetic import write_image_folder

# A fresh process that imports the package and nothing else of it, then
# reads every teacher file with Keras's own loader: which classes
# ``import ega_tf`` registered, and every teacher's output.
_FRESH_PROCESS = """
import json, sys
import keras
import numpy as np
import ega_tf
registered = sorted(k for k in keras.saving.get_custom_objects()
                    if k.startswith("ega_tf>"))
images = np.load(sys.argv[1])
outputs = {}
for name, path in json.loads(sys.argv[2]).items():
    teacher = keras.saving.load_model(path)
    outputs[name] = np.asarray(teacher(images))
    if "classifier" in [layer.name for layer in teacher.layers]:
        outputs[name + ":classifier"] = np.asarray(
            teacher.get_layer("classifier")(outputs[name]))
np.savez(sys.argv[3], **outputs)
print(json.dumps(registered))
"""


def registered_in_source():
    """The classes the package's source registers with Keras."""
    names = set()
    for path in (ROOT / "ega_tf").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                    "register_keras_serializable" in ast.unparse(d)
                    for d in node.decorator_list):
                names.add(f"ega_tf>{node.name}")
    return names


def uint8_images(seed=0, n=3, size=40):
    return np.clip(checkpoints.random_pixels(seed, n, size) * 50 + 128, 0,
                   255).astype(np.uint8)


def local_teachers(directory):
    """A SimCLR-style local teacher (with its standardisation) and a user's
    encoder wrapped with declared preprocessing, as .keras files."""
    from ega_tf import students
    from ega_tf.teachers.user_model import wrap
    backbone = students.create("resnet8")
    backbone.name = "backbone"
    local = teachers.assemble(
        backbone, teachers.TeacherPreprocess(input_size=32),
        standardize=teachers.FeatureStandardize(np.arange(64) / 64,
                                                np.ones(64) * 2))
    inputs = keras.Input((None, None, 3))
    x = keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(6, 3, activation="relu")(inputs))
    keras.Model(inputs, x).save(directory / "encoder.keras")
    user = wrap(str(directory / "encoder.keras"), input_size=24,
                crop_pct=0.875, interpolation="pil_bicubic")
    return {"simclr_local": local, "user": user}


# Read in the slow tier only: their layers' classes are read in the fast
# tier in another architecture's file (keras-hub's DINO backbones and
# TokenPool in dinov2's; Conv2D and ega_tf's BatchNorm in every ResNet's).
SLOW_ONLY = ("dinov3", "haiku_resnet")


def one_family_per_architecture():
    """The first family of each architecture module: families that share
    one differ only in their checkpoints' key names, which test_convert and
    test_convert_vit convert for each."""
    first = {}
    for name, family in FAMILIES.items():
        if family.architecture not in SLOW_ONLY:
            first.setdefault(family.architecture, name)
    return tuple(first.values())


class FreshProcessTest(TestCase):
    """One family of each architecture's file (and the local kinds), written
    here, read by one fresh process."""

    families = one_family_per_architecture()

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        tmp = cls.class_tempdir()
        images = uint8_images()
        made = {}
        for family in cls.families:
            directory = tmp / family
            directory.mkdir()
            published = checkpoints.write(family, directory, small=True)
            made[family] = convert.convert(str(published.path),
                                           log=lambda s: None,
                                           **published.convert_args())
        made.update(local_teachers(tmp))
        paths, cls.want = {}, {}
        for name, teacher in made.items():
            paths[name] = str(tmp / f"{name}.keras")
            teachers.save(teacher, paths[name])
            cls.want[name] = teacher(images).numpy()
            own = teacher_file.classifier(teacher)  # RepDistiller's
            if own is not None:
                cls.want[name + ":classifier"] = own(cls.want[name]).numpy()
        np.save(tmp / "images.npy", images)
        cls.result = cls.run_subprocess(
            ["-c", _FRESH_PROCESS, tmp / "images.npy", json.dumps(paths),
                  tmp / "out.npz"])
        cls.outputs = (np.load(tmp / "out.npz")
                       if cls.result.returncode == 0 else None)

    def test_import_ega_tf_registers_every_class_the_project_defines(self):
        self.assertSucceeded(self.result)
        found = set(json.loads(self.result.stdout.strip().splitlines()[-1]))
        want = registered_in_source()
        self.assertGreaterEqual(len(want), 8)
        self.assertEqual(found, want)

    def test_every_family_loads_and_runs_in_a_fresh_process(self):
        """Each teacher's features, and a supervised teacher's logits from
        its own classifier, as in the process that converted it."""
        self.assertSucceeded(self.result)
        self.assertIn("repdistiller:classifier", self.want)
        self.assertCountEqual(self.outputs.files, list(self.want))
        for name, want in self.want.items():
            with self.subTest(family=name):
                np.testing.assert_allclose(self.outputs[name], want,
                                           rtol=1e-5,
                                           atol=1e-5 * np.abs(want).max())


@pytest.mark.slow
class EveryFamilyFreshProcessTest(FreshProcessTest):
    """Every family's file read by one fresh process."""

    families = tuple(FAMILIES)


def build_md_commands():
    """BUILD.md's convert -> train block: [(convert line, train line)]."""
    text = (ROOT / "BUILD.md").read_text()
    block = text.split("<!-- convert-then-train: begin -->")[1].split(
        "<!-- convert-then-train: end -->")[0]
    lines = [line.strip() for line in block.splitlines()
             if line.strip().startswith("python -m ega_tf.")]
    return list(zip(lines[::2], lines[1::2]))


def _checkpoint_of(command):
    return shlex.split(command)[3].split("=", 1)[1]


# The files BUILD.md's commands name, written small in published layouts;
# the teachers take 64-px images so one epoch on digits takes seconds.
_FIXTURES = {
    "RN50.pt": lambda d: checkpoints.write_clip_resnet(
        d, checkpoints.clip_resnet(layers=(1, 1, 1, 1), resolution=64)),
    "dino_deitsmall16_full.pth": lambda d: checkpoints.write_dino_vit(
        d, checkpoints.timm_vit(image=64)),
    "moco_v2_800ep_pretrain.pth.tar": lambda d: checkpoints.write_resnet(
        "moco", d),
}


class ConvertThenTrainTest(TestCase):
    """Separate programs: convert_teacher writes the file, train reads it."""

    def run_pair(self, convert_line, train_line, tmp, rename=None):
        """Runs the two command lines as written, in ``tmp``."""
        for line in (convert_line, train_line):
            args = shlex.split(line)
            self.assertEqual(args[0], "python")
            r = self.run_subprocess(args[1:], cwd=tmp, timeout=1200)
            self.assertSucceeded(r)
            # Our INFO lines, not TensorFlow's (one per checkpoint saved).
            self.assertNotIn("functional_saver.py", r.stderr)
        workdir = [a for a in shlex.split(train_line)
                   if a.startswith("--workdir=")][0].split("=", 1)[1]
        res = json.loads((tmp / workdir / "results.json").read_text())
        self.assertEqual(res["epochs"], 1)
        self.assertIsNotNone(res["teacher_head_top1_last"])
        return res

    def write_fixture(self, name, tmp):
        published = _FIXTURES[name](tmp)
        published.path.rename(tmp / name)

    def test_build_md_lists_a_clip_a_vit_and_a_resnet_family(self):
        names = [_checkpoint_of(c) for c, _ in build_md_commands()]
        self.assertEqual(names, list(_FIXTURES))

    @pytest.mark.slow  # two programs, a 224-px teacher over digits
    def test_build_md_clip_commands_as_written(self):
        tmp = self.tmp_path()
        convert_line, train_line = build_md_commands()[0]
        self.write_fixture(_checkpoint_of(convert_line), tmp)
        self.run_pair(convert_line, train_line, tmp)

    @pytest.mark.slow
    def test_build_md_vit_and_resnet_commands_as_written(self):
        for convert_line, train_line in build_md_commands()[1:]:
            tmp = self.tmp_path()
            self.write_fixture(_checkpoint_of(convert_line), tmp)
            self.run_pair(convert_line, train_line, tmp)

    @pytest.mark.slow
    def test_clip_vit_and_mocov3_vit_files(self):
        for family, writer in (
                ("clip_vit", lambda d: checkpoints.write_clip_vit(
                    d, image=64)),
                ("mocov3_vit", lambda d: checkpoints.write_mocov3_vit(
                    d, checkpoints.timm_vit(seed=1, image=64, dim=96,
                                            heads=12)))):
            tmp = self.tmp_path()
            name = writer(tmp).path.name
            self.run_pair(
                f"python -m ega_tf.convert_teacher --checkpoint={name} "
                f"--out={family}.keras",
                f"python -m ega_tf.train --dataset=digits --student=resnet8 "
                f"--teacher={family}.keras --epochs=1 --labeled_fraction=0.1"
                f" --workdir=runs/{family}", tmp)


class ConversionCacheTest(TestCase):

    def test_train_with_a_checkpoint_twice_converts_once(self):
        """Two runs on a tiny image folder with the smallest family's
        checkpoint (what is tested is the teacher's conversion and cache,
        not the training, nor a family)."""
        tmp = self.tmp_path()
        cache = tmp / "cache"
        published = checkpoints.write_repdistiller(tmp)
        write_image_folder(tmp / "images", 4, 2)
        os.environ["EGA_TF_CACHE"] = str(cache)
        try:
            logs = []
            for run in ("run1", "run2"):
                r = self.run_cli(
                    "train", f"--dataset=folder:{tmp / 'images'}",
                    "--student=resnet8", f"--teacher={published.path}",
                    "--epochs=1", "--batch_size=6", "--config.export=false",
                    f"--workdir={tmp / run}")
                self.assertSucceeded(r)
                logs.append(r.stderr)
                if run == "run1":
                    cached = cache / (checkpoint_io.sha256(published.path)
                                      + ".keras")
                    self.assertEqual(list(cache.iterdir()), [cached])
                    stamp = cached.stat().st_mtime_ns
        finally:
            del os.environ["EGA_TF_CACHE"]
        self.assertIn("converted and cached", logs[0])
        self.assertIn("using the cached conversion", logs[1])
        self.assertNotIn("converted and cached", logs[1])
        self.assertEqual(cached.stat().st_mtime_ns, stamp)  # not redone
        self.assertEqual(list(cache.iterdir()), [cached])


class TeacherSizeTest(TestCase):
    """A teacher pretrained at one image size trains students at another:
    its file resizes to the size its network was built for; a teacher
    that cannot take the images is refused in one line before training."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        from ega_tf import data
        from ega_tf.ssl.pretrain import pretrain
        cls.dir = cls.class_tempdir()
        write_image_folder(cls.dir / "images", 6, 2)
        cls.folder = f"folder:{cls.dir / 'images'}"
        at_28 = data.load(cls.folder, image_size=28)
        teacher, _, _ = pretrain(at_28, arch="resnet8", epochs=1,
                                 batch_size=6, verbose=0)
        cls.teacher = str(cls.dir / "t28.keras")
        teachers.save(teacher, cls.teacher)

    def train(self, teacher, workdir, *extra):
        return self.run_cli(
            "train", f"--dataset={self.folder}", "--student=resnet8",
            f"--teacher={teacher}", "--epochs=1", "--batch_size=6",
            "--config.data.image_size=32", "--config.export=false",
            f"--workdir={workdir}", *extra)

    def test_a_28_px_teacher_trains_32_px_students_both_views(self):
        loaded = teachers.load(self.teacher)
        pre = teacher_file.preprocess_layer(loaded)
        self.assertEqual((pre.input_size, pre.crop_mode), (28, "squash"))
        tmp = self.tmp_path()
        for view in ("independent", "clean"):  # the step; the feature cache
            with self.subTest(view=view):
                r = self.train(self.teacher, tmp / view,
                               f"--config.teacher_view={view}")
                self.assertSucceeded(r)
                self.assertNotIn("Traceback", r.stderr)
                self.assertLen(history_rows(tmp / view), 1)
        # At its own size the resize is skipped: the same numbers as the
        # network on the normalised images.
        images = uint8_images(size=28)
        x = (images / 255.0 - np.array(pre.mean)) / np.array(pre.std)
        want = loaded.get_layer("standardize")(
            loaded.get_layer("backbone")(x.astype(np.float32)))
        self.assertLessEqual(self.rel_err(loaded(images), want), 1e-5)

    def test_a_teacher_that_cannot_take_the_images_says_which_it_takes(self):
        inputs = keras.Input((24, 28, 3))
        backbone = keras.Model(inputs, keras.layers.Flatten()(inputs),
                               name="backbone")
        path = self.tmp_path() / "fixed.keras"
        teachers.save(teachers.assemble(
            backbone, teachers.TeacherPreprocess(name="preprocess")), path)
        work = self.tmp_path() / "w"
        r = self.train(path, work)
        self.assertOneLineError(r, "cannot run on the data set's 32x32 "
                                "images: its network takes 24x28 images")
        self.assertFalse(work.exists())
