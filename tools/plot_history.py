#!/usr/bin/env python
"""Plots training curves of one or more ega_tf.train workdirs to a PNG.

    python tools/plot_history.py runs/demo/none_s0 runs/demo/ega_s0 \
        --out=curves.png

One panel per logged quantity (test and validation top-1, cross-entropy,
node, edge, teacher-head top-1); a run that did not log a quantity is left out of that
panel. Needs matplotlib (`pip install -e ".[plot]"`).
"""

from __future__ import annotations

import argparse
import os
import sys

from ega_tf.training import workdir as wd

PANELS = [("test_top1", "test top-1"), ("val_top1", "validation top-1"),
          ("ce", "train cross-entropy"), ("node", "train L_node"),
          ("edge", "train L_edge"),
          ("test_teacher_top1", "teacher head test top-1")]


def read(workdir):
    path = os.path.join(workdir, "history.csv")
    if not os.path.exists(path):
        sys.exit(f"error: {path} not found: is {workdir} an ega_tf.train "
                 "workdir?")
    return wd.read_history(path)  # older histories' names are mapped


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workdirs", nargs="+")
    ap.add_argument("--out", default="curves.png")
    args = ap.parse_args()
    try:
        import matplotlib
    except ImportError:
        sys.exit("error: plotting needs matplotlib, the [plot] extra: "
                 "pip install -e '.[plot]' (make install includes it).")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {os.path.basename(os.path.normpath(w)): read(w)
            for w in args.workdirs}
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4 * len(PANELS), 3.2))
    colours = {name: f"C{i}" for i, name in enumerate(runs)}  # same in all
    for ax, (key, title) in zip(axes, PANELS):
        for name, rows in runs.items():
            if rows and key in rows[0]:
                ax.plot([int(r["epoch"]) + 1 for r in rows],
                        [float(r[key]) for r in rows], label=name,
                        color=colours[name])
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="upper right",
               fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
