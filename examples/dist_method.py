"""DIST, knowledge distillation from a stronger teacher by relations of
predictions (Huang et al., NeurIPS 2022), written as a user's method for
ega_tf from docs/methods.md ("Write your own method"), with nothing but
the public Method API.

    python -m ega_tf.train --config=configs/digits.py --teacher=T.keras \
        --distill=examples/dist_method.py:DIST --weights=balanced

The teacher's and the student's class probabilities at temperature tau are
compared two ways, each as one minus a Pearson correlation and times tau^2:
per image across the classes (inter-class relation) and per class across
the batch (intra-class relation, so over the gathered global batch). The
defaults are the paper's CIFAR-100 setting (both weights 2, tau 4).
"""

from ega_tf import methods


def _pearson(a, b, axis):
    """Pearson correlation of ``a`` and ``b`` along ``axis``."""
    from keras import ops
    a = a - ops.mean(a, axis=axis, keepdims=True)
    b = b - ops.mean(b, axis=axis, keepdims=True)
    return ops.sum(a * b, axis=axis) / (
        ops.sqrt(ops.sum(a * a, axis=axis) * ops.sum(b * b, axis=axis))
        + 1e-8)


class DIST(methods.Method):
    name = "dist"
    terms = {"inter": "dist_inter", "intra": "dist_intra"}
    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0,
                "dist_inter": 2.0, "dist_intra": 2.0, "dist_tau": 4.0}
    limits = {"dist_tau": methods.Range(0.0, low_open=True)}
    source = "DIST (Huang et al., NeurIPS 2022), CIFAR-100: 2, 2, tau 4"

    def compute(self, b):
        from keras import ops
        tau = self.w["dist_tau"]
        p_t = ops.softmax(b.t_logits / tau, axis=-1)
        p_s = ops.softmax(b.s_logits / tau, axis=-1)
        inter = tau ** 2 * (1.0 - _pearson(p_s, p_t, axis=1))
        s, t = self.gathered(b, p_s, p_t)
        intra = tau ** 2 * (1.0 - ops.mean(_pearson(s, t, axis=0)))
        return self.weighted({"inter": self.per_example(inter, b.valid),
                              "intra": self.graph(intra)})
