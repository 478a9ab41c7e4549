"""The comparison's figures (matplotlib, the ``[plot]`` extra).

- ``curves.png``: train and test top-1 and cross-entropy per epoch, one
  line per method (mean over seeds, the band spans the seeds).
- ``embeddings.png``: t-SNE of each method's test-set student embeddings
  x_s beside the frozen teacher's features, coloured by class, with the
  silhouette score of the embedding itself (cosine distance, by class).
- ``graphs.png``: for one fixed test batch ordered by class, the
  teacher's edge matrix E_t (correlations of the EGA run's x_t), each
  method's E_s, and the node matrix N of the EGA student.

The embeddings come from each cell's checkpoint (``training.
restore_model``); t-SNE and the silhouette from scikit-learn.
"""

from __future__ import annotations

import math
import os

import numpy as np
from absl import logging

from ega_tf import methods
from ega_tf.errors import UserError
from ega_tf.io_utils import atomic_output

CURVES = "curves.png"
EMBEDDINGS = "embeddings.png"
GRAPHS = "graphs.png"
PANELS = (("top1", "train top-1 (%)"), ("val_top1", "test top-1 (%)"),
          ("ce", "train cross-entropy"), ("val_ce", "test cross-entropy"))


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


def _colours(method_order):
    return {m: f"C{i % 10}" for i, m in enumerate(method_order)}


def curves(rows, method_order, path):
    """One row of panels per (student, labeled fraction)."""
    plt = _pyplot()
    settings = list(dict.fromkeys((r["student"], r["labeled_fraction"])
                                  for r in rows))
    fig, axes = plt.subplots(len(settings), len(PANELS), squeeze=False,
                             figsize=(4.2 * len(PANELS),
                                      3.3 * len(settings)))
    colours = _colours(method_order)
    styles = {m: "--" if i >= 10 else "-"
              for i, m in enumerate(method_order)}
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
                ax.plot(x, values.mean(0), styles[method],
                        color=colours[method], label=method, lw=1.4)
                if len(runs) > 1:
                    ax.fill_between(x, values.min(0), values.max(0),
                                    color=colours[method], alpha=0.15,
                                    lw=0)
            ax.set_title(f"{title}\n{student}, labeled {fraction:g}",
                         fontsize=9)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=8, title="method")
    fig.tight_layout()
    _save(fig, path)


def subset(labels, points):
    """Indices of up to ``points`` test examples, as many of each class
    as possible, in test order (a fixed choice)."""
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    per = max(1, math.ceil(points / len(classes)))
    picked = np.concatenate([np.flatnonzero(labels == c)[:per]
                             for c in classes])
    return np.sort(picked)[:points]


def class_batch(labels, classes=8, per_class=8):
    """A fixed batch ordered by class: ``per_class`` test examples of each
    of the first ``classes`` classes (the correlations then show the
    class blocks)."""
    labels = np.asarray(labels)
    return np.concatenate([np.flatnonzero(labels == c)[:per_class]
                           for c in range(classes)])


def embeddings_of(model, images, batch_size=256):
    """(student x_s, teacher head x_t or None, frozen teacher features or
    None) of ``images``, in inference mode."""
    xs, xt, ft = [], [], []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        xs.append(np.asarray(model.student(x, training=False)["embedding"]))
        if model.teacher is not None:
            f = model.teacher(x, training=False)
            ft.append(np.asarray(f))
            xt.append(np.asarray(model.teacher_embed(f)))
    join = (lambda parts: np.concatenate(parts) if parts else None)
    return join(xs), join(xt), join(ft)


def silhouette(embedding, labels):
    from sklearn.metrics import silhouette_score
    if len(np.unique(labels)) < 2:
        return None
    return float(silhouette_score(embedding, labels, metric="cosine"))


def tsne(embedding, seed=0):
    from sklearn.manifold import TSNE
    perplexity = float(min(30.0, max(2.0, (len(embedding) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed,
                learning_rate="auto").fit_transform(
                    np.asarray(embedding, np.float64))


def embedding_figure(panels, labels, path):
    """``panels``: [(title, embedding)]; returns their silhouettes."""
    plt = _pyplot()
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, squeeze=False,
                             figsize=(3.3 * cols, 3.3 * rows))
    scores = []
    cmap = "tab10" if len(np.unique(labels)) <= 10 else "tab20"
    for ax, (title, emb) in zip(axes.flat, panels):
        score = silhouette(emb, labels)
        scores.append(score)
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
    return scores


def correlation(a, b=None):
    """Pearson correlations of the rows of ``a`` with those of ``b``."""
    def standard(x):
        x = np.asarray(x, np.float64)
        x = x - x.mean(1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True),
                              1e-12)
    a = standard(a)
    return a @ (a if b is None else standard(b)).T


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


def draw(cell_configs, cells, rows, workdir, method_order, points=1000,
         log=print):
    """The three figures for a grid; returns {(student, fraction, method):
    silhouette} of the embeddings drawn (the first seed of each method in
    the first setting)."""
    import keras

    from ega_tf import training
    curves(rows, method_order, os.path.join(workdir, CURVES))
    finished = {(r["student"], r["labeled_fraction"], r["method"], r["seed"])
                for r in rows if r["status"] == "finished"}
    first = cells[0]
    chosen = []
    for method in method_order:
        cell = next((c for c in cells if c.label == method
                     and (c.student, c.labeled_fraction) ==
                     (first.student, first.labeled_fraction)
                     and (c.student_label, c.labeled_fraction, c.label,
                          c.seed)
                     in finished), None)
        if cell is not None:
            chosen.append(cell)
    if not chosen:
        logging.warning("No finished cell: no embeddings or graphs drawn.")
        return {}
    log(f"Embeddings and graphs of {len(chosen)} runs "
        f"({first.student_label}, labeled {first.labeled_fraction:g}, the "
        "first seed of each).")
    config = cell_configs[chosen[0]]
    dataset = training.load_dataset(config)
    teacher = (training.load_teacher(config) if any(
        training.uses_teacher(cell_configs[c]) for c in chosen) else None)
    test_images, test_labels = dataset.test.images, dataset.test.labels
    points_idx = subset(test_labels, points)
    classes = min(8, dataset.num_classes)
    batch_idx = class_batch(test_labels, classes)
    block = 8 if len(batch_idx) == 8 * classes else None
    embed_panels, graph_panels, student_graphs = [], [], []
    teacher_panel, teacher_graph, nodes = None, None, []
    for cell in chosen:
        model = training.restore_model(cell_configs[cell], os.path.join(
            workdir, cell.name), dataset,
            teacher if training.uses_teacher(cell_configs[cell]) else None)
        xs, xt, ft = embeddings_of(model, test_images[points_idx])
        embed_panels.append((cell.label, xs))
        if ft is not None and teacher_panel is None:
            teacher_panel = ("teacher (frozen features)", ft)
        bxs, bxt, _ = embeddings_of(model, test_images[batch_idx])
        student_graphs.append((f"E_s {cell.label}", correlation(bxs)))
        # N = corr(x_t, x_s) of every method with a node term (EGA's);
        # E_t of the first of them, else of the first with a teacher.
        aligns = "node" in methods.get(cell.method).terms
        if bxt is not None and (teacher_graph is None or
                                (aligns and not nodes)):
            teacher_graph = (f"E_t (teacher head of {cell.label})",
                             correlation(bxt))
        if aligns:
            nodes.append((f"N of {cell.label} (x_t vs x_s)",
                          correlation(bxt, bxs)))
        keras.backend.clear_session(free_memory=False)
    panels = ([teacher_panel] if teacher_panel else []) + embed_panels
    scores = embedding_figure(panels, test_labels[points_idx],
                              os.path.join(workdir, EMBEDDINGS))
    graph_panels = ([teacher_graph] if teacher_graph else []) + nodes + (
        student_graphs)
    graph_figure(graph_panels, os.path.join(workdir, GRAPHS), block)
    offset = 1 if teacher_panel else 0
    silhouettes = {(c.student_label, c.labeled_fraction, c.label): s
                   for c, s in zip(chosen, scores[offset:])}
    if teacher_panel:
        silhouettes[(first.student_label, first.labeled_fraction,
                     "teacher")] = scores[0]
    return silhouettes
