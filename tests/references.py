"""Independent float64 NumPy versions of what the package computes, written
from the formulas (docs/architecture.md) and not from the package's code:
the tests compare against these."""

import numpy as np


def np_corr(a, b):
    """Pearson correlation between rows; 0 where a row is constant."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    out = np.zeros((len(a), len(b)))
    for i, u in enumerate(a):
        for j, v in enumerate(b):
            du, dv = u - u.mean(), v - v.mean()
            den = np.sqrt((du**2).sum() * (dv**2).sum())
            out[i, j] = (du * dv).sum() / den if den > 0 else 0.0
    return out


def np_ega(t, s, wn=0.8, we=0.24):
    """(weighted EGA loss, L_node, L_edge), Frobenius norms."""
    n = np_corr(t, s)
    node = np.sqrt(((n - np.eye(len(t)))**2).sum())
    edge = np.sqrt(((np_corr(t, t) - np_corr(s, s))**2).sum())
    return wn * node + we * edge, node, edge


def np_ce(logits, y):
    """Mean cross-entropy over the examples whose label is not -1."""
    logits = np.asarray(logits, np.float64)
    y = np.asarray(y)
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + (
        logits.max(1))
    keep = y >= 0
    if not keep.any():
        return 0.0
    return float((lse - logits[np.arange(len(y)), np.maximum(y, 0)])[keep]
                 .mean())


def np_softmax(x):
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kd(t, s, temperature):
    """Hinton KD: KL(p_t || p_s) at temperature T, times T^2, batch mean."""
    p, q = np_softmax(np.asarray(t) / temperature), np_softmax(
        np.asarray(s) / temperature)
    return float((p * (np.log(p) - np.log(q))).sum(-1).mean()
                 * temperature**2)


def np_nt_xent(z1, z2, t):
    """SimCLR's NT-Xent over 2B views, each row's positive its pair."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n, b = len(z), len(z1)
    total = 0.0
    for i in range(n):
        j = (i + b) % n
        logits = np.array([z[i] @ z[k] / t for k in range(n) if k != i])
        pos = z[i] @ z[j] / t
        total += np.log(np.exp(logits).sum()) - pos
    return total / n


# ------------------------------------------------------------- baselines
def np_unit(x):
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(n, 1e-12)


def np_smooth_l1(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d * d, d - 0.5)


def np_hint(t, s):
    return float(np.mean((np.asarray(s, np.float64)
                          - np.asarray(t, np.float64)) ** 2))


def np_rkd(t, s, wd=25.0, wa=50.0):
    def distances(e):
        e = np.asarray(e, np.float64)
        b = len(e)
        d = np.zeros((b, b))
        for i in range(b):
            for j in range(b):
                if i != j:
                    d[i, j] = np.linalg.norm(e[i] - e[j])
        nz = d[d > 0]
        return d / (nz.mean() if len(nz) else 1.0)

    def angles(e):
        e = np.asarray(e, np.float64)
        b = len(e)
        out = np.zeros((b, b, b))
        for i in range(b):
            for j in range(b):
                for k in range(b):
                    u, v = e[j] - e[i], e[k] - e[i]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    if nu > 0 and nv > 0:
                        out[i, j, k] = u @ v / (nu * nv)
        return out
    dist = np_smooth_l1(distances(s), distances(t)).mean()
    ang = np_smooth_l1(angles(s), angles(t)).mean()
    return wd * dist + wa * ang, dist, ang


def np_pkt(t, s, eps=1e-7):
    def probs(e):
        e = np.asarray(e, np.float64)
        e = e / (np.linalg.norm(e, axis=1, keepdims=True) + eps)
        sim = (e @ e.T + 1) / 2
        return sim / sim.sum(1, keepdims=True)
    pt, ps = probs(t), probs(s)
    return float(np.mean(pt * np.log((pt + eps) / (ps + eps))))


def np_sp(t, s):
    def gram(e):
        e = np.asarray(e, np.float64)
        return np_unit(e @ e.T)
    b = len(t)
    return float(((gram(t) - gram(s)) ** 2).sum() / b / b)


def np_nce(t, s, y, temperature=0.1, eps=1e-10):
    """EGA's NCE.py in float64, row by row: for student row i, the mean of
    -log(p_ij + eps) over its positives plus the mean of -log(1 - p_ij +
    eps) over its negatives, averaged over rows. An unlabeled row's only
    positive is itself; a part with no pairs adds 0."""
    t, s, y = np_unit(t), np_unit(s), np.asarray(y)
    b = len(y)
    p = np_softmax(s @ t.T / temperature)
    rows = []
    for i in range(b):
        pos, neg = [], []
        for j in range(b):
            if i == j or (y[i] >= 0 and y[j] >= 0 and y[i] == y[j]):
                pos.append(-np.log(p[i, j] + eps))
            elif y[i] >= 0 and y[j] >= 0:
                neg.append(-np.log(1 - p[i, j] + eps))
        rows.append((np.mean(pos) if pos else 0.0)
                    + (np.mean(neg) if neg else 0.0))
    return float(np.mean(rows))


def np_sym_kl(tl, sl, temperature=1.0):
    pt, ps = np_softmax(np.asarray(tl) / temperature), np_softmax(
        np.asarray(sl) / temperature)
    return 0.5 * ((pt * np.log(pt / ps)).sum(-1)
                  + (ps * np.log(ps / pt)).sum(-1))


def np_dkd(tl, sl, y, alpha=1.0, beta=8.0, temperature=4.0):
    """Mean over labeled examples, and the per-example terms."""
    tl, sl, y = np.asarray(tl, np.float64), np.asarray(sl, np.float64), \
        np.asarray(y)
    out = []
    for i in np.flatnonzero(y >= 0):
        pt = np_softmax(tl[i] / temperature)
        ps = np_softmax(sl[i] / temperature)
        g = y[i]
        bt = np.array([pt[g], 1 - pt[g]])
        bs = np.array([ps[g], 1 - ps[g]])
        tckd = (bt * np.log(bt / bs)).sum()
        rest = [c for c in range(len(pt)) if c != g]
        qt = pt[rest] / pt[rest].sum()
        qs = ps[rest] / ps[rest].sum()
        nckd = (qt * np.log(qt / qs)).sum()
        out.append((alpha * tckd + beta * nckd) * temperature**2)
    return float(np.mean(out)) if out else 0.0


def np_seed(t, s, queue, ts=0.2, tt=1e-4):
    t, s, q = np_unit(t), np_unit(s), np_unit(queue)
    total = 0.0
    for i in range(len(t)):
        ls = np.concatenate([[s[i] @ t[i]], q @ s[i]]) / ts
        lt = np.concatenate([[t[i] @ t[i]], q @ t[i]]) / tt
        target = np_softmax(lt)
        logq = ls - ls.max() - np.log(np.exp(ls - ls.max()).sum())
        total += -(target * logq).sum()
    return total / len(t)


def np_compress(t, s, queue, temperature=0.04):
    t, s, q = np_unit(t), np_unit(s), np_unit(queue)
    total = 0.0
    for i in range(len(t)):
        pt = np_softmax(q @ t[i] / temperature)
        ps = np_softmax(q @ s[i] / temperature)
        total += (pt * np.log(pt / ps)).sum()
    return total / len(t)


def np_crd(anchor, pos, neg, z, n, temperature=0.07):
    """Per anchor: -log h(pos) - sum log(1 - h(neg)), h = P/(P + K/N)."""
    anchor, pos, neg = (np.asarray(a, np.float64) for a in (anchor, pos,
                                                            neg))
    k = neg.shape[1]
    out = []
    for i in range(len(anchor)):
        p = np.exp(anchor[i] @ pos[i] / temperature) / z
        ps = np.exp(neg[i] @ anchor[i] / temperature) / z
        out.append(-np.log(p / (p + k / n)) - np.log((k / n) / (ps + k / n))
                   .sum())
    return np.array(out)


def np_standardize(logits, eps=1e-7):
    """Logit standardization: (z - mean) / (eps + sample std) per row."""
    z = np.asarray(logits, np.float64)
    return (z - z.mean(-1, keepdims=True)) / (
        eps + z.std(-1, ddof=1, keepdims=True))


def np_pearson(a, b, eps=1e-8):
    """Pearson correlation of two vectors, eps added to the norms'
    product."""
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + eps))


def np_dist(tl, sl, inter=1.0, intra=1.0, tau=4.0):
    """(DIST, inter-class relation, intra-class relation): one minus the
    mean Pearson correlation of the probabilities at tau, per row and per
    column, each times tau^2."""
    pt = np_softmax(np.asarray(tl, np.float64) / tau)
    ps = np_softmax(np.asarray(sl, np.float64) / tau)
    rows = np.mean([np_pearson(ps[i], pt[i]) for i in range(len(pt))])
    cols = np.mean([np_pearson(ps[:, c], pt[:, c])
                    for c in range(pt.shape[1])])
    a, b = tau**2 * (1 - rows), tau**2 * (1 - cols)
    return inter * a + intra * b, a, b


def np_mlkd(tl, sl, temperature=4.0, standardize=False):
    """MLKD's three levels as its publisher's forward adds them, with the
    weak and the strong images the same pair: (instance, class, batch).
    The masks count examples (or classes) at most the median confidence,
    by NumPy's percentile."""
    tl, sl = np.asarray(tl, np.float64), np.asarray(sl, np.float64)
    pt1 = np_softmax(tl)
    conf = pt1.max(1)
    share = np.mean(conf <= np.percentile(conf, 50))
    class_conf = pt1.sum(0)
    class_share = np.mean(class_conf <= np.percentile(class_conf, 50))
    kt, ks = ((np_standardize(tl), np_standardize(sl)) if standardize
              else (tl, sl))
    inst = cls = bat = 0.0
    for temp in (temperature, 3.0, 5.0, 2.0, 6.0):
        kd = np_kd(kt, ks, temp)
        inst += kd * share + kd  # weak (masked) + strong
        pt, ps = np_softmax(tl / temp), np_softmax(sl / temp)
        cls += ((pt.T @ pt - ps.T @ ps)**2).sum() / pt.shape[1] * class_share
        bat += ((pt @ pt.T - ps @ ps.T)**2).sum() / len(pt) * share
    return inst, cls, bat
