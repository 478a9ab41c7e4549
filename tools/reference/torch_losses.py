"""EGA's and CCL's losses in PyTorch, written from the paper's formulas and
the published training loop's arithmetic, for the training-step benchmark
and the whole-run comparison (tools/torch_recipe.py)."""

import torch


def ega(fs, ft, node=0.8, edge=0.24):
    """node * ||N - I||_F + edge * ||E_t - E_s||_F over the batch: each row
    of [x_t; x_s] centred and normalised, N = x_t x_s^T, E = x x^T."""
    b = fs.shape[0]
    x = torch.cat([ft, fs], 0)
    x = x - x.mean(1, keepdim=True)
    x = x / x.norm(dim=1, keepdim=True)
    c = x @ x.t()
    return (node * torch.linalg.norm(c[:b, b:] - torch.eye(b))
            + edge * torch.linalg.norm(c[:b, :b] - c[b:, b:]))


def nce(fs, ft, labels, temperature=0.1, eps=1e-10):
    """The supervised contrastive term per student row i: p_ij = softmax_j
    cos(s_i, t_j) / T; the mean of -log p over i's positives (same label,
    or i itself) plus the mean of -log(1 - p) over its negatives (both
    labeled, different labels); the mean over rows. A row with no
    negatives adds 0 for them."""
    s = fs / fs.norm(dim=1, keepdim=True)
    t = ft / ft.norm(dim=1, keepdim=True)
    p = torch.softmax(s @ t.t() / temperature, dim=1)
    known = (labels >= 0).float()
    both = known[:, None] * known[None, :]
    same = (labels[:, None] == labels[None, :]).float()
    positive = torch.maximum(both * same, torch.eye(len(labels)))
    negative = both * (1 - same)
    pos = ((positive * -torch.log(p + eps)).sum(1)
           / positive.sum(1).clamp(min=1))
    neg = ((negative * -torch.log(1 - p + eps)).sum(1)
           / negative.sum(1).clamp(min=1))
    return (pos + neg).mean()


def symmetric_kl(logit_t, logit_s, temperature=1.0):
    """The batch mean of 0.5 (KL(p_t || p_s) + KL(p_s || p_t)) at T."""
    lt = torch.log_softmax(logit_t / temperature, 1)
    ls = torch.log_softmax(logit_s / temperature, 1)
    return 0.5 * ((lt.exp() * (lt - ls)).sum(1)
                  + (ls.exp() * (ls - lt)).sum(1)).mean()
