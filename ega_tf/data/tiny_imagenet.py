"""A TFDS builder for Tiny ImageNet (TFDS ships none).

It reads the published ``tiny-imagenet-200.zip`` (http://cs231n.stanford.edu/
tiny-imagenet-200.zip, 248 MB) from the TFDS manual directory,
``<data_dir>/downloads/manual/``, without unpacking it:

    tiny-imagenet-200/wnids.txt                   the 200 class ids
    tiny-imagenet-200/words.txt                   id <TAB> words (all ImageNet)
    tiny-imagenet-200/train/<wnid>/images/*.JPEG  500 per class
    tiny-imagenet-200/val/images/*.JPEG           10,000
    tiny-imagenet-200/val/val_annotations.txt     file <TAB> wnid <TAB> box
    tiny-imagenet-200/test/images/*.JPEG          10,000, unlabeled

Splits: ``train`` (100,000), ``validation`` (10,000, labels from
val_annotations.txt; the split papers report on) and ``test`` (10,000,
label -1). Class ids are sorted, as a torchvision ``ImageFolder`` over
``train/`` orders them; their words are in ``info.metadata["words"]``. The
JPEG bytes are stored as published (a few are greyscale and decode to RGB).

Importing this module registers the builder as ``tiny_imagenet``.
"""

from __future__ import annotations

import posixpath
import zipfile

import tensorflow_datasets as tfds

ARCHIVE = "tiny-imagenet-200.zip"
URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


def _read_index(zf):
    """(root prefix, sorted wnids, {wnid: words}, {val file: wnid})."""
    names = zf.namelist()
    wnid_files = [n for n in names if posixpath.basename(n) == "wnids.txt"]
    if not wnid_files:
        raise ValueError(f"{ARCHIVE} has no wnids.txt: not the published "
                         "Tiny ImageNet archive.")
    root = posixpath.dirname(wnid_files[0])
    join = lambda *p: posixpath.join(root, *p)  # noqa: E731
    wnids = sorted(zf.read(join("wnids.txt")).decode().split())
    words = {}
    if join("words.txt") in names:
        for line in zf.read(join("words.txt")).decode().splitlines():
            wnid, _, text = line.partition("\t")
            if wnid in wnids:
                words[wnid] = text.strip()
    val = {}
    for line in zf.read(join("val", "val_annotations.txt")).decode(
    ).splitlines():
        if line.strip():
            fields = line.split("\t")
            val[fields[0]] = fields[1]
    return root, wnids, words, val


class TinyImagenet(tfds.core.GeneratorBasedBuilder):
    """Tiny ImageNet: 64x64 RGB, 200 classes, from the published zip."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Read from the published zip (ega_tf)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        f"Download {URL} and put {ARCHIVE} in the manual directory "
        "(<data_dir>/downloads/manual/). Do not unpack it.")

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(64, 64, 3),
                                             encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(),
                "id": tfds.features.Text(),
            }),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        archive = dl_manager.manual_dir / ARCHIVE
        with zipfile.ZipFile(archive) as zf:
            _, wnids, words, _ = _read_index(zf)
        self.info.features["label"].names = wnids
        self.info.metadata["words"] = {w: words.get(w, w) for w in wnids}
        return {split: self._generate_examples(archive, split)
                for split in ("train", "validation", "test")}

    def _generate_examples(self, archive, split):
        with zipfile.ZipFile(archive) as zf:
            root, wnids, _, val = _read_index(zf)
            known = set(wnids)
            folder = {"train": "train", "validation": "val",
                      "test": "test"}[split]
            prefix = posixpath.join(root, folder) + "/"
            for name in sorted(zf.namelist()):
                if not (name.startswith(prefix) and
                        name.lower().endswith(".jpeg")):
                    continue
                base = posixpath.basename(name)
                if split == "train":
                    label = name[len(prefix):].split("/")[0]
                elif split == "validation":
                    if base not in val:
                        raise ValueError(f"{name} is not in "
                                         "val_annotations.txt.")
                    label = val[base]
                else:
                    label = -1
                if label != -1 and label not in known:
                    raise ValueError(f"{name}: class {label!r} is not in "
                                     "wnids.txt.")
                yield base, {"image": zf.read(name), "label": label,
                             "id": base}
