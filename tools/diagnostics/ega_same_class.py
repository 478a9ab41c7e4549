"""A diagnostic variant of EGA for a question of docs/results.md: does the node
term's target N = I hurt on a data set with few classes?

N's off-diagonal entries are the correlations of one image's student
embedding with another image's teacher embedding; the target I pushes
every one of them to 0, also for two images of the same class. A batch of
64 from 10 classes holds about 5.4 same-class partners per image, against
about 0.6 from CIFAR-100's 100 classes. ``EGASameClassFree`` leaves the
pairs of two labeled images of one class out of the node term (the
diagonal, unlabeled images and pairs of different classes stay as in EGA);
the edge term is EGA's. Run it as a user method:

    python -m ega_tf.compare --config=configs/digits.py --teacher=T.keras \\
        --methods=ega,tools/diagnostics/ega_same_class.py:EGASameClassFree,\\
ega_edge --seeds=0,1,2,3,4
"""

from ega_tf import methods


class EGASameClassFree(methods.Method):
    name = "ega_same_class_free"
    terms = {"node": "node_weight", "edge": "edge_weight"}
    defaults = {"gamma": 1.0, "alpha": 0.0, "beta": 1.0,
                "node_weight": 0.8, "edge_weight": 0.24}
    source = "EGA's weights; same-class pairs left out of the node term"

    def compute(self, b):
        from keras import ops

        from ega_tf.methods import ega, maths
        from ega_tf.nn import replicas
        t, s, m, y = (replicas.gather(v) for v in (b.x_t, b.x_s, b.valid,
                                                   b.raw_labels))
        z_t, z_s = (maths.unit_rows(x - ops.mean(x, -1, keepdims=True))
                    for x in (t, s))
        n = ops.matmul(z_t, ops.transpose(z_s))
        eye = ops.eye(ops.shape(n)[0], dtype="float32")
        y = ops.cast(y, "int32")
        labeled = ops.cast(y >= 0, "float32")
        same = (ops.cast(y[:, None] == y[None, :], "float32")
                * labeled[:, None] * labeled[None, :])
        rows = ops.cast(m, "float32")
        pairs = rows[:, None] * rows[None, :]
        keep = pairs * (1.0 - same * (1.0 - eye))
        node = maths.frobenius_norm((n - eye) * keep)
        edge = ega.ega_terms(t, s, mask=m)["edge"]
        return self.weighted({"node": self.graph(node),
                              "edge": self.graph(edge)})
