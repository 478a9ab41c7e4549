"""The comparison's figures (matplotlib, the ``[plot]`` extra).

- ``curves.png``: train and test top-1 and cross-entropy per epoch, one
  line per method (mean over seeds, the band spans the seeds).
- ``embeddings.png``: t-SNE of each method's test-set student embeddings
  x_s beside the frozen teacher's features, coloured by class, with the
  silhouette score of the embedding itself (cosine distance, by class).
- ``graphs.png``: for one fixed test batch ordered by class, the
  teacher's edge matrix E_t (correlations of the EGA run's x_t), each
  method's E_s, and the node matrix N of the EGA student.

The arrays come from each run's ``probe.npz`` (``training.probe``), the
silhouettes from its results; t-SNE from scikit-learn.
"""

from __future__ import annotations

import math
import os

import numpy as np
from absl import logging

from ega_tf import methods
from ega_tf.comparison.grid import BALANCED
from ega_tf.core.errors import UserError
from ega_tf.core.io_utils import atomic_output
from ega_tf.training import probe
from ega_tf.training import workdir as wd

CURVES = "curves.png"
EMBEDDINGS = "embeddings.png"
GRAPHS = "graphs.png"
PANELS = (("top1", "train top-1 (%)"), ("test_top1", "test top-1 (%)"),
          ("ce", "train cross-entropy"), ("test_ce", "test cross-entropy"))


def check_matplotlib():
    import importlib.util
    if importlib.util.find_spec("matplotlib") is None:
        raise UserError("The comparison's pictures need matplotlib, the "
                        "[plot] extra: pip install 'ega_tf[plot]' (make "
                        "install includes it), or pass --pictures=false.")


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    with atomic_output(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)


def line_styles(method_order):
    """{label: (colour, line style)}: one colour per method, however many,
    its balanced label (``"kd (balanced)"``) in the same colour, dashed.
    Up to ten methods take matplotlib's ten default colours, up to twenty
    tab20's (its ten dark shades first), more are spread evenly over the
    turbo colour map."""
    from matplotlib import colormaps
    methods = list(dict.fromkeys(m.removesuffix(BALANCED)
                                 for m in method_order))
    n = len(methods)
    if n <= 10:
        palette = [colormaps["tab10"](i) for i in range(10)]
    elif n <= 20:
        tab20 = colormaps["tab20"]
        palette = [tab20(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
    else:
        palette = [colormaps["turbo"](0.05 + 0.9 * i / (n - 1))
                   for i in range(n)]
    colour = dict(zip(methods, palette))
    return {m: (colour[m.removesuffix(BALANCED)],
                "--" if m.endswith(BALANCED) else "-")
            for m in method_order}


def curves(rows, method_order, path):
    """One row of panels per (student, labeled fraction)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator
    settings = list(dict.fromkeys((r["student"], r["labeled_fraction"])
                                  for r in rows))
    fig, axes = plt.subplots(len(settings), len(PANELS), squeeze=False,
                             figsize=(4.2 * len(PANELS),
                                      3.3 * len(settings)))
    styles = line_styles(method_order)
    for axrow, (student, fraction) in zip(axes, settings):
        for ax, (key, title) in zip(axrow, PANELS):
            for method in method_order:
                runs = [r["_history"] for r in rows
                        if (r["student"], r["labeled_fraction"],
                            r["method"]) == (student, fraction, method)
                        and r["status"] == "finished" and r["_history"]]
                if not runs or key not in runs[0][0]:
                    continue
                epochs = min(len(h) for h in runs)
                scale = 100 if "top1" in key else 1
                values = np.array([[scale * row[key] for row in h[:epochs]]
                                   for h in runs])
                x = np.arange(1, epochs + 1)
                # Markers while there are too few epochs to draw a line.
                colour, style = styles[method]
                ax.plot(x, values.mean(0), style,
                        color=colour, label=method, lw=1.4,
                        marker="o" if epochs < 3 else None, ms=3)
                if len(runs) > 1:
                    ax.fill_between(x, values.min(0), values.max(0),
                                    color=colour, alpha=0.15,
                                    lw=0)
            ax.set_title(f"{title}\n{student}, labeled {fraction:g}",
                         fontsize=9)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=8, title="method")
    fig.tight_layout()
    _save(fig, path)


def tsne(embedding, seed=0):
    from sklearn.manifold import TSNE
    perplexity = float(min(30.0, max(2.0, (len(embedding) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(
                    np.asarray(embedding, np.float64))


def embedding_figure(panels, labels, path):
    """``panels``: [(title, embedding, silhouette or None)]."""
    plt = _pyplot()
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(3.3 * cols, 3.3 * rows))
    cmap = "tab10" if len(np.unique(labels)) <= 10 else "tab20"
    for ax, (title, emb, score) in zip(axes.flat, panels):
        xy = tsne(emb)
        ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap=cmap, s=6,
                   linewidths=0)
        ax.set_title(f"{title}\nsilhouette {score:.3f}" if score is not None
                     else title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)


def graph_figure(panels, path, block=None):
    """``panels``: [(title, matrix)], drawn on one -1..1 colour scale;
    ``block``: rows per class, marked by thin lines."""
    plt = _pyplot()
    cols = min(5, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(2.9 * cols, 2.9 * rows))
    image = None
    for ax, (title, m) in zip(axes.flat, panels):
        image = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
        if block:
            for edge in np.arange(block, len(m), block) - 0.5:
                ax.axhline(edge, color="k", lw=0.3)
                ax.axvline(edge, color="k", lw=0.3)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6)
    _save(fig, path)


def draw(rows, workdir, method_order, points=probe.PROBE_POINTS,
         log=print):
    """The three figures of a grid, from the arrays its runs wrote
    (``probe.npz``, see ``training.probe``): the first finished seed of
    each method in the first setting. No model is built."""
    curves(rows, method_order, os.path.join(workdir, CURVES))
    finished = [r for r in rows if r["status"] == "finished"]
    if not finished:
        logging.warning("No finished run: no embeddings or graphs drawn.")
        return
    setting = (finished[0]["student"], finished[0]["labeled_fraction"])
    chosen = []
    for method in method_order:
        row = next((r for r in finished if r["method"] == method and
                    (r["student"], r["labeled_fraction"]) == setting), None)
        kept = row and probe.read_probe(os.path.join(workdir,
                                                     row["workdir"]))
        if kept is not None:
            chosen.append((row, kept))
    if not chosen:
        logging.warning("No run wrote %s: no embeddings or graphs drawn.",
                        wd.PROBE)
        return
    log(f"Embeddings and graphs of {len(chosen)} runs ({setting[0]}, "
        f"labeled {setting[1]:g}, the first seed of each), from their "
        f"{wd.PROBE}.")
    labels = chosen[0][1]["labels"]
    picked = probe.subset(labels, points)
    embed_panels, student_graphs, nodes = [], [], []
    teacher_panel, teacher_graph = None, None
    for row, kept in chosen:
        method = row["method"]
        embed_panels.append((method, kept["x_s"][picked],
                             row.get("test_silhouette")))
        has_teacher = "features" in kept
        if has_teacher and teacher_panel is None:
            teacher_panel = ("teacher (frozen features)",
                             kept["features"][picked],
                             row.get("teacher_silhouette"))
        student_graphs.append((f"E_s {method}",
                               probe.correlation(kept["batch_x_s"])))
        # N = corr(x_t, x_s) of every method with a node term (EGA's);
        # E_t of the first of them, else of the first with a teacher.
        aligns = "node" in methods.get(row["distill"]).terms
        if has_teacher and (teacher_graph is None or (aligns and not nodes)):
            teacher_graph = (f"E_t (teacher head of {method})",
                             probe.correlation(kept["batch_x_t"]))
        if aligns and has_teacher:
            nodes.append((f"N of {method} (x_t vs x_s)", probe.correlation(
                kept["batch_x_t"], kept["batch_x_s"])))
    embedding_figure(([teacher_panel] if teacher_panel else []) +
                     embed_panels, labels[picked],
                     os.path.join(workdir, EMBEDDINGS))
    batch_labels = chosen[0][1]["batch_labels"]
    sizes = np.unique(batch_labels, return_counts=True)[1]
    block = (int(sizes[0]) if len(set(sizes)) == 1 and
             list(batch_labels) == sorted(batch_labels) else None)
    graph_figure(([teacher_graph] if teacher_graph else []) + nodes +
                 student_graphs, os.path.join(workdir, GRAPHS), block)
