#!/usr/bin/env python
"""Checks the baselines' losses against their publishers' own code.

    git clone https://github.com/HobbitLong/RepDistiller
    git clone https://github.com/yccm/EGA
    git clone https://github.com/megvii-research/mdistiller
    git clone https://github.com/jacobswan1/SEED
    git clone https://github.com/UMBCvision/CompRess
    git clone https://github.com/hunto/image_classification_sota
    git clone https://github.com/Jin-Ying/Multi-Level-Logit-Distillation
    git clone https://github.com/sunshangquan/logit-standardization-KD
    python tools/publisher_parity.py --repdistiller=RepDistiller --ega=EGA \
        --mdistiller=mdistiller --seed_code=SEED --compress=CompRess \
        --dist=image_classification_sota \
        --mlkd=Multi-Level-Logit-Distillation \
        --logit_standardization=logit-standardization-KD

Loads each publisher's loss module from your checkout (their files, run
as they are: nothing of theirs is copied here), computes it with PyTorch
on random batches, computes ega_tf's version (from each method's file) on
the same numbers, and prints both with their relative difference, one line per
loss and batch. A difference far above float32 rounding (1e-6) is a
difference in what is computed.

Covered: RepDistiller's KD, FitNet (hint), RKD, PKT and SP
(``distiller_zoo/``); EGA's NCE and CCL (``distiller_zoo/``); mdistiller's
DKD (``mdistiller/distillers/DKD.py``'s ``dkd_loss``); SEED's
(``seed/builder.py``'s ``SEED`` module, its student and teacher encoders
replaced by the given embeddings, and ``soft_cross_entropy`` of
``tools/utils.py``); CompRess-1q's (``nn/compress_loss.py``: the
``Normalize``, ``SampleSimilarities`` and ``KLD`` that ``CompReSSA``
combines, called as it calls them; ``CompReSSA`` itself moves to CUDA
when made); DIST's (``lib/models/losses/dist_kd.py`` of the
classification code DIST_KD's README points to, at ``dist_t4``); MLKD's
(``KD_ours.forward_train`` of ``mdistiller/distillers/KD_ours.py``, with
networks that return the given logits for both of its views, so its weak
and strong images are one pair, as ega_tf reads them); and logit
standardization's KD, DKD and MLKD (``mdistiller/distillers/KD.py``,
``DKD.py``, ``MLKD.py`` of its repository, standardization on, at its
``--base-temp 2 --kd-weight 9``). The queue methods use one queue of 128 unit rows, the
queue's state before the batch is added. Fully labeled batches only: the
published NCE has no unlabeled examples (see docs/methods.md for how
ega_tf counts them). Needs PyTorch (the ``[convert]`` extra); SEED's
``tools/utils.py`` imports torchvision for its augmentations, and an
empty placeholder stands in when torchvision is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module(checkout, relative):
    """The publisher's module at ``checkout/relative``, imported from the
    file (its package's __init__ is not run: it imports the rest of the
    repository)."""
    path = os.path.join(checkout, relative)
    if not os.path.isfile(path):
        sys.exit(f"{path} does not exist: pass the repository's checkout "
                 "(the directory holding distiller_zoo/).")
    name = "publisher_" + relative.replace("/", "_").replace(".py", "")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _package_module(checkout, package, name):
    """``package.name`` of the publisher's checkout, imported with its
    package's relative imports working but its ``__init__`` not run."""
    import types
    directory = os.path.join(checkout, package)
    if not os.path.isdir(directory):
        sys.exit(f"{directory} does not exist: pass the repository's "
                 "checkout.")
    alias = f"publisher_{os.path.basename(os.path.normpath(checkout))}_" \
        + package.replace("/", "_")
    if alias not in sys.modules:
        parent = types.ModuleType(alias)
        parent.__path__ = [directory]
        sys.modules[alias] = parent
    return importlib.import_module(f"{alias}.{name}")


def _placeholder(name):
    """A module standing in for ``name`` (and its parents) when it is not
    installed: a publisher's file imports it for something the losses do
    not use. Any attribute is a class that accepts anything."""
    import importlib.util as util
    import types
    if util.find_spec(name.split(".")[0]) is not None:
        return

    class Anything:
        def __init__(self, *args, **kwargs):
            pass

    parent = None
    for i in range(1, len(name.split(".")) + 1):
        part = ".".join(name.split(".")[:i])
        module = sys.modules.setdefault(part, types.ModuleType(part))
        module.__getattr__ = lambda attribute: Anything
        if parent is not None:
            setattr(parent, part.rsplit(".", 1)[1], module)
        parent = module


def _batches(count, seed=0):
    """(teacher emb, student emb, teacher logits, student logits, labels)
    for fully labeled batches of 64 with 100, 10 and 3 classes."""
    import numpy as np
    rng = np.random.default_rng(seed)
    for i in range(count):
        classes = (100, 10, 3)[i % 3]
        t = rng.normal(size=(64, 256)).astype(np.float32)
        s = (0.5 * t + rng.normal(size=t.shape)).astype(np.float32)
        tl = (3 * rng.normal(size=(64, 100))).astype(np.float32)
        sl = (3 * rng.normal(size=(64, 100))).astype(np.float32)
        queue = rng.normal(size=(128, 256)).astype(np.float32)
        queue /= np.linalg.norm(queue, axis=1, keepdims=True)
        yield classes, t, s, tl, sl, rng.integers(0, classes, 64), queue


def _seed_theirs(checkout):
    """SEED's loss on (t, s) with queue q, through its own module: the
    student and teacher encoders return the given embeddings."""
    import torch
    _placeholder("torchvision.transforms")
    builder = _package_module(checkout, "seed", "builder")
    utils = _package_module(checkout, "tools", "utils")

    class Column(torch.nn.Module):  # image [N, 2, D] -> one embedding
        def __init__(self, which, **_):
            super().__init__()
            self.which = which

        def forward(self, x):
            return x[:, self.which]

    def loss(t, s, tl, sl, y, q):
        model = builder.SEED(lambda **kw: Column(0, **kw),
                             lambda **kw: Column(1, **kw), dim=t.shape[1],
                             K=q.shape[0], t=0.2, temp=1e-4, dist=False)
        model.queue.copy_(q.t())  # their queue is [D, K]
        student, teacher = model(torch.stack([s, t], 1))
        return utils.soft_cross_entropy(student, teacher)
    return loss


def _compress_theirs(checkout):
    """CompRess-1q's loss on (t, s) with queue q, as ``CompReSSA.forward``
    computes it (the queue's state before the batch is added)."""
    module = _package_module(checkout, "nn", "compress_loss")

    def loss(t, s, tl, sl, y, q):
        norm, kld = module.Normalize(2), module.KLD()
        similarities = module.SampleSimilarities(t.shape[1], q.shape[0],
                                                 0.04)
        similarities.memory.copy_(q)
        student = similarities(norm(s), update=False)
        teacher = similarities(norm(t), update=False)
        return kld(teacher, student)
    return loss


def _multi_level_theirs(checkout, module, cls, weight, temperature,
                        standardize=None):
    """MLKD's three losses (kd, cc, bc) through the publisher's
    ``forward_train``, its student and teacher returning the given logits
    for the weak and the strong image alike."""
    import types

    import torch
    try:
        import turtle  # noqa: F401 (the published file imports it unused)
    except ImportError:
        _placeholder("turtle")
    distiller = getattr(_package_module(checkout, "mdistiller/distillers",
                                        module), cls)

    class Given(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = None

        def forward(self, image):
            return self.logits, None

    cfg = types.SimpleNamespace(
        KD=types.SimpleNamespace(TEMPERATURE=temperature, LOSS=types.
                                 SimpleNamespace(CE_WEIGHT=0.1,
                                                 KD_WEIGHT=weight)),
        EXPERIMENT=types.SimpleNamespace(LOGIT_STAND=bool(standardize)))
    student, teacher = Given(), Given()
    model = distiller(student, teacher, cfg)

    def loss(t, s, tl, sl, y, q):
        student.logits, teacher.logits = sl, tl
        image = torch.zeros(len(sl), 3, 1, 1)
        _, parts = model.forward_train(image, image, y, epoch=1)
        return parts["loss_kd"] + parts["loss_cc"] + parts["loss_bc"]
    return loss


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repdistiller", help="a RepDistiller checkout")
    ap.add_argument("--ega", help="a checkout of EGA's published code")
    ap.add_argument("--mdistiller", help="an mdistiller checkout (DKD)")
    ap.add_argument("--seed_code", help="a checkout of SEED's code")
    ap.add_argument("--compress", help="a checkout of CompRess's code")
    ap.add_argument("--dist", help="a checkout of DIST's classification "
                    "code (hunto/image_classification_sota)")
    ap.add_argument("--mlkd", help="a checkout of MLKD's code")
    ap.add_argument("--logit_standardization",
                    help="a checkout of logit standardization's code")
    ap.add_argument("--batches", type=int, default=3)
    args = ap.parse_args()
    if not (args.repdistiller or args.ega or args.mdistiller
            or args.seed_code or args.compress or args.dist or args.mlkd
            or args.logit_standardization):
        ap.error("give one or more of --repdistiller, --ega, --mdistiller, "
                 "--seed_code, --compress, --dist, --mlkd, "
                 "--logit_standardization")
    import torch

    from ega_tf.methods.dist import dist_loss
    from ega_tf.methods.dkd import dkd_loss
    from ega_tf.methods.hint import hint_loss
    from ega_tf.methods.kd import kd_loss
    from ega_tf.methods.maths import maybe_standardize
    from ega_tf.methods.mlkd import mlkd_loss
    from ega_tf.methods.nce import ccl_loss, nce_loss
    from ega_tf.methods.pkt import pkt_loss
    from ega_tf.methods.rkd import rkd_loss
    from ega_tf.methods.seed import compress_loss, seed_loss
    from ega_tf.methods.sp import sp_loss

    cases = {}
    if args.repdistiller:
        zoo = {n: _module(args.repdistiller, f"distiller_zoo/{n}.py")
               for n in ("KD", "FitNet", "RKD", "PKT", "SP")}
        cases.update({
            "kd (T 4)": (lambda t, s, tl, sl, y, q: zoo["KD"].DistillKL(4)(
                sl, tl), lambda t, s, tl, sl, y, q: kd_loss(tl, sl, 4.0)),
            "hint": (lambda t, s, tl, sl, y, q: zoo["FitNet"].HintLoss()(s, t),
                     lambda t, s, tl, sl, y, q: hint_loss(t, s)),
            "rkd (25, 50)": (
                lambda t, s, tl, sl, y, q: zoo["RKD"].RKDLoss(25, 50)(s, t),
                lambda t, s, tl, sl, y, q: rkd_loss(
                    t, s, distance_weight=25.0, angle_weight=50.0)),
            "pkt": (lambda t, s, tl, sl, y, q: zoo["PKT"].PKT()(s, t),
                    lambda t, s, tl, sl, y, q: pkt_loss(t, s)),
            "sp": (lambda t, s, tl, sl, y, q: zoo["SP"].Similarity()([s], [t])[0],
                   lambda t, s, tl, sl, y, q: sp_loss(t, s)),
        })
    if args.ega:
        nce = _module(args.ega, "distiller_zoo/NCE.py")
        ccl = _module(args.ega, "distiller_zoo/CCL.py")
        cases.update({
            "nce (T 0.1)": (
                lambda t, s, tl, sl, y, q: nce.NCELoss(0.1)(s, t, y),
                lambda t, s, tl, sl, y, q: nce_loss(t, s, y, 0.1)),
            "ccl": (lambda t, s, tl, sl, y, q: ccl.CCL()(s, t, y, sl, tl),
                    lambda t, s, tl, sl, y, q: ccl_loss(
                        t, s, tl, sl, y, 0.1, 1.0)),
        })
    if args.mdistiller:
        dkd = _package_module(args.mdistiller, "mdistiller/distillers",
                              "DKD")
        cases["dkd (1, 8, T 4)"] = (
            lambda t, s, tl, sl, y, q: dkd.dkd_loss(sl, tl, y, 1.0, 8.0, 4.0),
            lambda t, s, tl, sl, y, q: dkd_loss(tl, sl, y, 1.0, 8.0,
                                                4.0))
    if args.seed_code:
        cases["seed (0.2, 1e-4)"] = (
            _seed_theirs(args.seed_code),
            lambda t, s, tl, sl, y, q: seed_loss(t, s, q, 0.2, 1e-4))
    if args.compress:
        cases["compress (0.04)"] = (
            _compress_theirs(args.compress),
            lambda t, s, tl, sl, y, q: compress_loss(t, s, q, 0.04))
    if args.dist:
        dist = _module(args.dist, "lib/models/losses/dist_kd.py")
        cases["dist (1, 1, T 4)"] = (
            lambda t, s, tl, sl, y, q: dist.DIST(1.0, 1.0, 4.0)(sl, tl),
            lambda t, s, tl, sl, y, q: dist_loss(tl, sl, 1.0, 1.0,
                                                 4.0))
    if args.mlkd:
        cases["mlkd (0.9, T 4)"] = (
            _multi_level_theirs(args.mlkd, "KD_ours", "KD_ours", 0.9, 4.0),
            lambda t, s, tl, sl, y, q: mlkd_loss(tl, sl, 0.9, 4.0))
    if args.logit_standardization:
        root = args.logit_standardization
        ls_kd = _package_module(root, "mdistiller/distillers", "KD")
        ls_dkd = _package_module(root, "mdistiller/distillers", "DKD")

        def standardized(fn):
            return lambda t, s, tl, sl, y, q: fn(
                *maybe_standardize(tl, sl, True), y)
        cases.update({
            "kd + ls (T 2)": (
                lambda t, s, tl, sl, y, q: ls_kd.kd_loss(sl, tl, 2.0, True),
                standardized(lambda tl, sl, y: kd_loss(tl, sl, 2.0))),
            "dkd + ls (9, 72)": (
                lambda t, s, tl, sl, y, q: ls_dkd.dkd_loss(
                    sl, tl, y, 9.0, 72.0, 2.0, True),
                standardized(lambda tl, sl, y: dkd_loss(
                    tl, sl, y, 9.0, 72.0, 2.0))),
            "mlkd + ls (9, T 2)": (
                _multi_level_theirs(root, "MLKD", "MLKD", 9.0, 2.0, True),
                lambda t, s, tl, sl, y, q: mlkd_loss(tl, sl, 9.0, 2.0,
                                                     True)),
        })
    print(f"{'loss':<17} {'classes':>7} {'publisher':>14} {'ega_tf':>14} "
          f"{'relative':>9}")
    worst = 0.0
    for classes, *arrays in _batches(args.batches):
        tensors = [torch.tensor(a) for a in arrays]
        for name, (theirs, ours) in cases.items():
            want = float(theirs(*tensors))
            got = float(ours(*arrays))
            rel = abs(got - want) / max(abs(want), 1e-30)
            worst = max(worst, rel)
            print(f"{name:<17} {classes:>7} {want:>14.7g} {got:>14.7g} "
                  f"{rel:>9.1e}")
    print(f"largest relative difference: {worst:.1e}")


if __name__ == "__main__":
    main()
