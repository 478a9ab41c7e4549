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
