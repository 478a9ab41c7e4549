"""A run's workdir: what belongs to it, and writing its files safely.

A workdir belongs to one run: its ``config.json`` says which. Running again
with the same config resumes it (or, if it finished, reports its results
without rewriting them); a config that differs in any field that changes the
numbers is refused, naming the fields, before anything in the workdir is
touched. ``--config.resume=false`` starts over in it. Fields that do not
change the numbers (where data lives, caching, the number of devices, how
often to checkpoint) may differ.

Files are replaced atomically (written beside, then renamed), so a crash
never leaves a half-written one.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

from absl import logging

from ega_tf.core.errors import UserError
from ega_tf.core.io_utils import atomic_output

CONFIG = "config.json"
HISTORY = "history.csv"
RESULTS = "results.json"
CHECKPOINTS = "checkpoints"
LOGS = "logs"
SAVED_MODEL = "saved_model"
# Test embeddings kept for ega_tf.compare (ega_tf/training/probe.py).
PROBE = "probe.npz"
FEATURE_SPLITS = ("train", "val", "test")


def features_file(split):
    """The teacher-feature cache of one split (ega_tf/teachers/
    feature_cache.py)."""
    return f"teacher_features_{split}.npz"


FEATURES = tuple(features_file(s) for s in FEATURE_SPLITS)
RUN_FILES = (CONFIG, HISTORY, RESULTS, CHECKPOINTS, LOGS, SAVED_MODEL,
             PROBE, *FEATURES)

# Fields that may change between the runs of one workdir: they do not
# change what is computed.
OPERATIONAL = ("data_dir", "download", "trust_saved_model", "allow_pickle",
               "resume", "export", "checkpoint_every", "checkpoint_every_steps",
               "jit_compile", "distribute.strategy", "distribute.cpu_replicas",
               "input.cache", "input.cache_limit_gb", "teacher_cache",
               "teacher_store_dir", "terms_jit_compile")


def _flatten(tree, prefix=""):
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_fields(old, new):
    """[(field, old value, new value)] where two configs (dicts) differ in
    a field that changes the numbers."""
    a, b = (_flatten(c) for c in (old, new))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in OPERATIONAL and a.get(k) != b.get(k)]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def write_json(path, obj):
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")


def config_record(config):
    """The config's fields as plain JSON values, as ``config.json`` holds
    them: without the method class that ``config.resolve`` derives."""
    out = json.loads(config.to_json())
    out.pop("method", None)
    return out


def claim(workdir, config):
    """Whether ``workdir`` is new, to be resumed, or holds the finished (or
    diverged) run of ``config``: ``("new" | "resume" | "done", results)``.
    Raises UserError if it belongs to another run."""
    path = os.path.join(workdir, CONFIG)
    stale = remove_temporaries(workdir)
    if stale:
        logging.info("Removed %s, left by a process killed while writing.",
                     ", ".join(stale))
    if not config.resume:
        start_over(workdir)
        return "new", None
    if not os.path.exists(path):
        leftovers = [f for f in RUN_FILES if os.path.exists(
            os.path.join(workdir, f))]
        if leftovers:
            raise UserError(
                f"{workdir} holds {', '.join(leftovers)} but no {CONFIG}: "
                "it is not a run this version can resume. Use another "
                "--workdir, or --config.resume=false to start over in it.")
        return "new", None
    differ = differing_fields(read_json(path), config_record(config))
    if differ:
        shown = "; ".join(f"{k}: {a!r} in the workdir, {b!r} now"
                          for k, a, b in differ[:6])
        more = f" (and {len(differ) - 6} more)" if len(differ) > 6 else ""
        raise UserError(
            f"{workdir} belongs to another run: {shown}{more}. Use another "
            "--workdir, or --config.resume=false to start over in this one.")
    results = os.path.join(workdir, RESULTS)
    if os.path.exists(results):
        return "done", read_json(results)
    return "resume", None


def remove_temporaries(workdir):
    """Removes what a process killed while writing left behind: the
    temporary siblings (``.saved_model.XXXX``, ``.history.csv.XXXX``, ...)
    that atomic writes rename into place. A workdir has one writer, so any
    such sibling at the start of a run is stale."""
    if not os.path.isdir(workdir):
        return []
    stale = [n for n in os.listdir(workdir)
             if any(n.startswith(f".{f}.") for f in RUN_FILES)]
    for name in stale:
        path = os.path.join(workdir, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    return stale


def start_over(workdir):
    """Removes a previous run's files (only those) from ``workdir``."""
    for name in RUN_FILES:
        path = os.path.join(workdir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def read_history(path):
    """The rows of history.csv as dicts of floats."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()}
                for row in csv.DictReader(f)]


def write_history(path, rows):
    """The whole history, atomically; columns in first-seen order."""
    names = []
    for row in rows:
        names += [k for k in row if k not in names]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (int(v) if k == "epoch" else repr(float(v)))
                         for k, v in row.items()})
    with atomic_output(path) as tmp:
        with open(tmp, "w", newline="") as f:
            f.write(text.getvalue())


def link_or_copy(source, target):
    """Puts ``source`` at ``target`` (atomically): a hard link where the
    file system allows one (no second copy on disk), else a copy."""
    if os.path.exists(target) and os.path.samefile(source, target):
        return
    with atomic_output(target, suffix=os.path.splitext(target)[1]) as tmp:
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)
