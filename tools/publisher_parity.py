#!/usr/bin/env python
"""Checks the baselines' losses against their publishers' own code.

    git clone https://github.com/HobbitLong/RepDistiller
    git clone https://github.com/yccm/EGA
    python tools/publisher_parity.py --repdistiller=RepDistiller --ega=EGA

Loads each publisher's loss module from your checkout (their files, run
as they are: nothing of theirs is copied here), computes it with PyTorch
on random batches, computes ``ega_tf.losses``'s version on the same
numbers, and prints both with their relative difference, one line per
loss and batch. A difference far above float32 rounding (1e-6) is a
difference in what is computed.

Covered: RepDistiller's KD, FitNet (hint), RKD, PKT and SP
(``distiller_zoo/``); EGA's NCE and CCL (``distiller_zoo/``). Fully
labeled batches only: the published NCE has no unlabeled examples (see
docs/methods.md for how ega_tf counts them). Needs PyTorch (the
``[convert]`` extra).
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
        yield classes, t, s, tl, sl, rng.integers(0, classes, 64)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repdistiller", help="a RepDistiller checkout")
    ap.add_argument("--ega", help="a checkout of EGA's published code")
    ap.add_argument("--batches", type=int, default=3)
    args = ap.parse_args()
    if not (args.repdistiller or args.ega):
        ap.error("give --repdistiller, --ega or both")
    import torch

    from ega_tf import losses

    cases = {}
    if args.repdistiller:
        zoo = {n: _module(args.repdistiller, f"distiller_zoo/{n}.py")
               for n in ("KD", "FitNet", "RKD", "PKT", "SP")}
        cases.update({
            "kd (T 4)": (lambda t, s, tl, sl, y: zoo["KD"].DistillKL(4)(
                sl, tl), lambda t, s, tl, sl, y: losses.kd_loss(tl, sl, 4.0)),
            "hint": (lambda t, s, tl, sl, y: zoo["FitNet"].HintLoss()(s, t),
                     lambda t, s, tl, sl, y: losses.hint_loss(t, s)),
            "rkd (25, 50)": (
                lambda t, s, tl, sl, y: zoo["RKD"].RKDLoss(25, 50)(s, t),
                lambda t, s, tl, sl, y: losses.rkd_loss(
                    t, s, distance_weight=25.0, angle_weight=50.0)),
            "pkt": (lambda t, s, tl, sl, y: zoo["PKT"].PKT()(s, t),
                    lambda t, s, tl, sl, y: losses.pkt_loss(t, s)),
            "sp": (lambda t, s, tl, sl, y: zoo["SP"].Similarity()([s], [t])[0],
                   lambda t, s, tl, sl, y: losses.sp_loss(t, s)),
        })
    if args.ega:
        nce = _module(args.ega, "distiller_zoo/NCE.py")
        ccl = _module(args.ega, "distiller_zoo/CCL.py")
        cases.update({
            "nce (T 0.1)": (
                lambda t, s, tl, sl, y: nce.NCELoss(0.1)(s, t, y),
                lambda t, s, tl, sl, y: losses.nce_loss(t, s, y, 0.1)),
            "ccl": (lambda t, s, tl, sl, y: ccl.CCL()(s, t, y, sl, tl),
                    lambda t, s, tl, sl, y: losses.ccl_loss(
                        t, s, tl, sl, y, 0.1, 1.0)),
        })
    print(f"{'loss':<14} {'classes':>7} {'publisher':>14} {'ega_tf':>14} "
          f"{'relative':>9}")
    worst = 0.0
    for classes, *arrays in _batches(args.batches):
        tensors = [torch.tensor(a) for a in arrays]
        for name, (theirs, ours) in cases.items():
            want = float(theirs(*tensors))
            got = float(ours(*arrays))
            rel = abs(got - want) / max(abs(want), 1e-30)
            worst = max(worst, rel)
            print(f"{name:<14} {classes:>7} {want:>14.7g} {got:>14.7g} "
                  f"{rel:>9.1e}")
    print(f"largest relative difference: {worst:.1e}")


if __name__ == "__main__":
    main()
