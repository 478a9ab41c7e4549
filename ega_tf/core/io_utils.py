"""Atomic writes: a file or directory appears complete or not at all."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile


@contextlib.contextmanager
def atomic_output(path, suffix=""):
    """Yields a temporary path beside ``path``; moves it into place on success.

    Works for files and directories. On error the temporary output is removed
    and an existing ``path`` is left untouched. ``suffix`` is appended to the
    temporary name for writers that insist on an extension (e.g. ``.keras``).
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", dir=parent)
    tmp = os.path.join(tmp_dir, "out" + suffix)
    try:
        yield tmp
        if os.path.isdir(tmp) and os.path.isdir(path):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.old.",
                                   dir=parent)
            os.rename(path, os.path.join(old, "x"))
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
