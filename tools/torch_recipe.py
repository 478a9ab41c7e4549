#!/usr/bin/env python
"""The published EGA recipe as a whole run in PyTorch, on ega_tf's data, for
comparing whole runs of the two frameworks (docs/results.md).

    python tools/torch_recipe.py --teacher=teacher.keras --seeds=0,1,2,3,4 \
        --out=runs/torch_recipe [--distill=ega|ccl|none] [--epochs=20] \
        [--tf_runs=runs/tf_recipe]

For each seed it trains, in PyTorch, what `python -m ega_tf.train
--config=configs/digits.py --config.teacher_view=clean --distill=ega
--seed=S` trains, and writes <out>/<distill>_s<seed>.json (the history and
the last and best test top-1). The same data: the digits split, the
labeled subset `mask_labels(labels, fraction, seed)` and the frozen
teacher's clean-view features are ega_tf's own (the features computed once
by `ega_tf.teachers.feature_cache`, as the clean view's cache does). Written
here from the paper and the published training loop, not from ega_tf:

- student: RepDistiller's resnet8 (tools/reference/torch_cifar_resnet.py,
  its initialisation), then Linear(64, 256) -> x_s and Linear(256, K);
  input (pixel / 255 - CLIP mean) / CLIP std, as ega_tf's zoo students;
- online teacher head: Linear(F, 256) -> x_t and Linear(256, K) on the
  frozen features, trained by its own cross-entropy only (the published
  loop clears what the student's loss sends into it) with SGD lr 0.01;
- loss: gamma * CE + beta * EGA(x_s, x_t) (node 0.8, edge 0.24), CE over the
  batch's labeled images (0 when it has none; torch's ignore_index would
  give NaN there);
- SGD lr 0.05, momentum 0.9, weight decay 5e-4 (torch.optim.SGD's coupled
  decay), x0.1 after round(f * epochs) epochs for f in 150/240, 180/240,
  210/240; batch 64, shuffled each epoch, the last partial batch dropped;
- views: RandomCrop(32, padding 4) and horizontal flip, drawn per image.

Only the random streams differ from ega_tf (initial weights, order,
crops): the comparison is of distributions over seeds, not of numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DECAYS = (150 / 240, 180 / 240, 210 / 240)


def flags():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", required=True)
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--distill", default="ega", choices=("ega", "ccl",
                                                         "none"))
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--labeled_fraction", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--out", default=os.path.join("runs", "torch_recipe"))
    ap.add_argument("--tf_runs", help="a directory of ega_tf runs named "
                    "<distill>_s<seed> (the command above, --workdir="
                    "DIR/ega_s0, ...): print both frameworks' test top-1 "
                    "per seed, their means and the paired difference")
    return ap.parse_args()


def inputs(teacher_path, fraction, seed):
    """ega_tf's digits split, the seed's labeled subset and the teacher's
    clean-view features of both splits, as numpy arrays."""
    from ega_tf import data, teachers
    from ega_tf.teachers import feature_cache
    digits = data.load("digits")
    labels = data.mask_labels(digits.train.labels, fraction, seed)
    teacher = teachers.load_or_convert(teacher_path)
    return (digits.train.images, labels, digits.test.images,
            digits.test.labels,
            feature_cache.compute(teacher, digits.train, verbose=0),
            feature_cache.compute(teacher, digits.test, verbose=0),
            digits.num_classes)


def milestones(epochs):
    return sorted({max(1, round(f * epochs)) for f in DECAYS
                   if round(f * epochs) < epochs})


def crop_flip(x, generator, padding=4):
    """RandomCrop(size, padding) with zeros and a horizontal flip, each
    image its own draw."""
    import torch
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
                       for i in range(n)])
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def train(args, seed, arrays):
    import numpy as np
    import torch
    from torch import nn

    from ega_tf.core.constants import CLIP_MEAN, CLIP_STD
    from tools.reference import torch_cifar_resnet, torch_losses
    (train_x, train_y, test_x, test_y, train_f, test_f,
     classes) = arrays
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)

    def pixels(images):
        return torch.tensor(images).permute(0, 3, 1, 2).float() / 255

    def normalise(x):
        return (x - mean) / std
    train_x, test_x = pixels(train_x), pixels(test_x)
    train_y, test_y = torch.tensor(train_y), torch.tensor(test_y)
    train_f = torch.tensor(np.asarray(train_f, np.float32))
    test_f = torch.tensor(np.asarray(test_f, np.float32))

    backbone = torch_cifar_resnet.create("resnet8")
    s_embed = nn.Linear(backbone.width, 256)
    s_cls = nn.Linear(256, classes)
    t_embed = nn.Linear(train_f.shape[1], 256)
    t_cls = nn.Linear(256, classes)
    student = [backbone, s_embed, s_cls]
    s_params = [p for m in student for p in m.parameters()]
    t_params = [*t_embed.parameters(), *t_cls.parameters()]
    opt = torch.optim.SGD(s_params, args.lr, momentum=0.9,
                          weight_decay=5e-4)
    opt_t = torch.optim.SGD(t_params, 0.01, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.MultiStepLR(
        opt, milestones(args.epochs), 0.1)

    def ce(logits, y):
        keep = y >= 0
        if not keep.any():
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(logits[keep], y[keep])

    def forward(x):
        x_s = s_embed(backbone(normalise(x)))
        return x_s, s_cls(x_s)
    batch, n = 64, len(train_y)
    history = []
    for epoch in range(args.epochs):
        for m in student:
            m.train()
        order = torch.randperm(n, generator=generator)
        begin, totals = time.time(), {"loss": 0.0, "ce": 0.0, "steps": 0}
        for start in range(0, n - batch + 1, batch):
            idx = order[start:start + batch]
            y = train_y[idx]
            x_s, logit_s = forward(crop_flip(train_x[idx], generator))
            x_t = t_embed(train_f[idx])
            logit_t = t_cls(x_t)
            loss_ce = ce(logit_s, y)
            loss = loss_ce
            if args.distill == "ega":
                loss = loss + torch_losses.ega(x_s, x_t)
            elif args.distill == "ccl":
                loss = loss + torch_losses.nce(x_s, x_t, y) + \
                    torch_losses.symmetric_kl(logit_t, logit_s)
            opt.zero_grad()
            loss.backward(retain_graph=True)
            opt_t.zero_grad()  # what the student's loss sent into the head
            ce(logit_t, y).backward()
            opt_t.step()
            opt.step()
            totals["loss"] += float(loss.detach())
            totals["ce"] += float(loss_ce.detach())
            totals["steps"] += 1
        schedule.step()
        for m in student:
            m.eval()
        with torch.no_grad():
            correct = sum(int((forward(test_x[i:i + 256])[1].argmax(1)
                               == test_y[i:i + 256]).sum())
                          for i in range(0, len(test_y), 256))
        history.append({"epoch": epoch,
                        "loss": totals["loss"] / totals["steps"],
                        "ce": totals["ce"] / totals["steps"],
                        "test_top1": correct / len(test_y),
                        "epoch_seconds": time.time() - begin})
        print(f"seed {seed} epoch {epoch + 1}/{args.epochs}: loss "
              f"{history[-1]['loss']:.4f}, test top-1 "
              f"{100 * history[-1]['test_top1']:.2f}", flush=True)
    return {"framework": f"PyTorch {torch.__version__}",
            "distill": args.distill, "seed": seed, "epochs": args.epochs,
            "labeled_fraction": args.labeled_fraction,
            "test_top1_last": 100 * history[-1]["test_top1"],
            "test_top1_best": 100 * max(r["test_top1"] for r in history),
            "history": history}


def report(args, seeds):
    """Both frameworks' last test top-1 per seed, mean ± sd, and the
    paired difference (ega_tf - PyTorch) with its 95 % t interval."""
    import statistics

    from scipy import stats
    rows = []
    for seed in seeds:
        with open(os.path.join(args.tf_runs, f"{args.distill}_s{seed}",
                               "results.json")) as f:
            ours = json.load(f)["test_top1_last"]
        with open(os.path.join(args.out,
                               f"{args.distill}_s{seed}.json")) as f:
            theirs = json.load(f)["test_top1_last"]
        rows.append((seed, ours, theirs))
        print(f"seed {seed}: ega_tf {ours:.2f}, PyTorch {theirs:.2f}")
    for name, values in (("ega_tf", [r[1] for r in rows]),
                         ("PyTorch", [r[2] for r in rows])):
        if len(values) < 2:
            continue
        print(f"{name}: {statistics.mean(values):.2f} ± "
              f"{statistics.stdev(values):.2f} (mean ± sd over "
              f"{len(values)} seeds)")
    if len(rows) < 2:
        return  # a spread needs two seeds
    diffs = [r[1] - r[2] for r in rows]
    mean, sd = statistics.mean(diffs), statistics.stdev(diffs)
    half = stats.t.ppf(0.975, len(diffs) - 1) * sd / len(diffs) ** 0.5
    print(f"ega_tf - PyTorch, paired by seed: {mean:+.2f} ± {sd:.2f}, 95 % "
          f"interval [{mean - half:+.2f}, {mean + half:+.2f}]")


def main():
    args = flags()
    import torch
    torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    for seed in (int(s) for s in args.seeds.split(",")):
        path = os.path.join(args.out, f"{args.distill}_s{seed}.json")
        if os.path.exists(path):
            print(f"{path} exists; kept.")
            continue
        arrays = inputs(args.teacher, args.labeled_fraction, seed)
        results = train(args, seed, arrays)
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(path + ".tmp", path)
        print(f"{path}: test top-1 last {results['test_top1_last']:.2f}")
    if args.tf_runs:
        report(args, [int(s) for s in args.seeds.split(",")])


if __name__ == "__main__":
    main()
