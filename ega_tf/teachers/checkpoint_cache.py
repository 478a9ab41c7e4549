"""Published checkpoints passed straight to ``train --teacher``: converted
once, cached by the SHA-256 of their bytes under ``$EGA_TF_CACHE`` (default
``~/.cache/ega_tf/teachers``), and read from the cache afterwards."""

from __future__ import annotations

import os

from absl import logging

from ega_tf.core.errors import UserError
from ega_tf.teachers import checkpoint_io, teacher_file


def cache_dir():
    return os.path.expanduser(os.environ.get(
        "EGA_TF_CACHE", os.path.join("~", ".cache", "ega_tf", "teachers")))


def cached_path(path):
    """Where the converted teacher of checkpoint ``path`` is cached."""
    return os.path.join(cache_dir(), f"{checkpoint_io.sha256(path)}.keras")


def load_or_convert(path, fmt=None, allow_pickle=False,
                    trust_saved_model=False):
    """A ``.keras`` teacher as is; any other file is treated as a published
    checkpoint, converted once and cached."""
    if str(path).endswith(".keras"):
        return teacher_file.load(path, trust_saved_model)
    from ega_tf.teachers import convert
    if not checkpoint_io.source_files(path):
        raise UserError(f"Teacher checkpoint {path!r} does not exist.")
    cached = cached_path(path)
    if os.path.exists(cached):
        logging.info("Teacher %s: using the cached conversion %s", path,
                     cached)
    else:
        teacher_file.save(convert.convert(path, fmt, allow_pickle,
                                          log=logging.info), cached)
        logging.info("Teacher %s converted and cached as %s", path, cached)
    return teacher_file.load(cached)
