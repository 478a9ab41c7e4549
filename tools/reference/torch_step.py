"""The published distillation step in plain PyTorch, for the step-by-step
trajectory test (tests/test_trajectory.py).

Written from the EGA paper, RepDistiller's CRD and KD, and the semantics of
the published training loop (EGA's, itself RepDistiller's ``train_distill``
with an online teacher head), not from ega_tf:

- student: a RepDistiller CIFAR ResNet (``torch_cifar_resnet``) on images
  normalised as ``(pixel / 255 - mean) / std``, its pooled feature through
  ``Linear(width, D)`` -> x_s, and ``Linear(D, K)`` reading x_s -> logits;
- online teacher head: ``Linear(F, D)`` -> x_t and ``Linear(D, K)`` on the
  frozen teacher's features;
- the student's loss ``gamma * CE + beta * method + alpha * KD_T``, each a
  batch mean (CE: ``F.cross_entropy``, over the labeled rows: a label of
  -1, which the published runs do not have, takes part in no
  cross-entropy; KD: the summed KL of the softened logits times T^2 over
  the batch size); the method EGA
  (``0.8 ||N - I||_F + 0.24 ||E_t - E_s||_F`` from Pearson correlations of
  the rows) or CRD (two memory banks, below);
- one step: forward everything; ``optimizer.zero_grad()``;
  ``loss.backward(retain_graph=True)``, which also sends gradients into the
  teacher head through x_t and its logits; ``optimizer_t.zero_grad()``
  clears those; the head's own cross-entropy ``backward()``; the head's SGD
  steps, then the student's. So the head learns from its cross-entropy
  alone and the student's loss treats x_t as given;
- both optimizers ``torch.optim.SGD`` with momentum and coupled weight
  decay on every parameter (BatchNorm's and biases included); the
  student's rate is set at the start of each epoch (1-based) to the base
  rate times 0.1 for each milestone the epoch is past
  (``Step.start_epoch``), the head's stays.

CRD (Tian et al. 2020, RepDistiller's ``CRDLoss``/``ContrastMemory``):
``Linear(D, d)`` then L2 normalisation on each side (trained by the
student's optimizer); two banks of N x d rows, uniform in
+-1/sqrt(d/3); each anchor's row ``contrast_idx[i] = [positive, K
negatives]`` is given by the caller. The student's anchor v_s scores the
teacher's bank, the teacher's v_t the student's bank, each score
``exp(v . m / T) / Z`` with Z set once, at the first step, to N times the
mean score of that direction; per direction ``-log h(pos) - sum log(1 -
h(neg))``, h = P / (P + K / N + 1e-7), averaged over the batch, the two
directions summed. After scoring, each bank's rows of the batch move to
``normalise(0.5 row + 0.5 v)`` with the embeddings of this forward pass.

``dtype=torch.float64`` runs the same step in double precision, which is
how the test measures how far float32 rounding alone carries a trajectory.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from tools.reference import torch_cifar_resnet


class Student(nn.Module):
    """uint8-range NCHW float pixels -> (x_s, logits)."""

    def __init__(self, name, num_classes, embed_dim, mean, std):
        super().__init__()
        self.backbone = torch_cifar_resnet.create(name)
        self.embed = nn.Linear(self.backbone.width, embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, pixels):
        x = (pixels / 255 - self.mean) / self.std
        x_s = self.embed(self.backbone(x))
        return x_s, self.classifier(x_s)


class TeacherHead(nn.Module):
    """Frozen teacher features -> (x_t, teacher logits)."""

    def __init__(self, width, num_classes, embed_dim):
        super().__init__()
        self.embed = nn.Linear(width, embed_dim)
        self.classifier = nn.Linear(embed_dim, num_classes)

    def forward(self, features):
        x_t = self.embed(features)
        return x_t, self.classifier(x_t)


def ega_terms(x_t, x_s):
    """(||N - I||_F, ||E_t - E_s||_F) over the batch, from Pearson
    correlations: covariance over the D features divided by both standard
    deviations."""
    b = x_t.shape[0]
    rows = torch.cat([x_t, x_s], 0)
    rows = rows - rows.mean(1, keepdim=True)
    cov = rows @ rows.t() / (rows.shape[1] - 1)
    sd = cov.diagonal().sqrt()
    corr = cov / sd[:, None] / sd[None, :]
    eye = torch.eye(b, dtype=corr.dtype)
    node = torch.linalg.norm(corr[:b, b:] - eye)
    edge = torch.linalg.norm(corr[:b, :b] - corr[b:, b:])
    return node, edge


def kd(logits_s, logits_t, temperature):
    """Hinton's KD: sum of KL(softmax(t/T) || softmax(s/T)) over the batch,
    times T^2, over the batch size."""
    log_p_s = F.log_softmax(logits_s / temperature, 1)
    p_t = F.softmax(logits_t / temperature, 1)
    return (F.kl_div(log_p_s, p_t, reduction="sum") * temperature**2
            / logits_s.shape[0])


class CRD(nn.Module):
    """CRD's two embeddings, its memory banks and its NCE loss."""

    def __init__(self, embed_dim, dim, num_examples, temperature=0.07,
                 momentum=0.5):
        super().__init__()
        self.embed_s = nn.Linear(embed_dim, dim)
        self.embed_t = nn.Linear(embed_dim, dim)
        self.n, self.temperature, self.momentum = (num_examples, temperature,
                                                   momentum)
        bound = 1.0 / math.sqrt(dim / 3)
        self.register_buffer(
            "memory_s", torch.rand(num_examples, dim) * 2 * bound - bound)
        self.register_buffer(
            "memory_t", torch.rand(num_examples, dim) * 2 * bound - bound)
        # Z of the student's anchors (against the teacher's bank) and of
        # the teacher's; negative until the first step sets them.
        self.register_buffer("z", -torch.ones(2))

    @staticmethod
    def _unit(v):
        return v / v.pow(2).sum(1, keepdim=True).sqrt()

    def _nce(self, scores):
        """scores [B, 1 + K] (positive first) -> the batch mean of
        -log h(pos) - sum log(1 - h(neg))."""
        k = scores.shape[1] - 1
        noise = k / self.n
        eps = 1e-7
        log_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + eps))
        log_neg = torch.log(noise / (scores[:, 1:] + noise + eps))
        return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]

    def forward(self, x_s, x_t, contrast_idx):
        v_s, v_t = self._unit(self.embed_s(x_s)), self._unit(
            self.embed_t(x_t))
        b, k1 = contrast_idx.shape
        flat = contrast_idx.reshape(-1)
        from_t = self.memory_t.index_select(0, flat).view(b, k1, -1)
        from_s = self.memory_s.index_select(0, flat).view(b, k1, -1)
        score_s = torch.exp(torch.bmm(from_t, v_s[:, :, None])[..., 0]
                            / self.temperature)
        score_t = torch.exp(torch.bmm(from_s, v_t[:, :, None])[..., 0]
                            / self.temperature)
        with torch.no_grad():
            for j, scores in enumerate((score_s, score_t)):
                if self.z[j] < 0:
                    self.z[j] = scores.mean() * self.n
        loss = (self._nce(score_s / self.z[0].item())
                + self._nce(score_t / self.z[1].item()))
        with torch.no_grad():
            idx = contrast_idx[:, 0]
            for bank, v in ((self.memory_s, v_s), (self.memory_t, v_t)):
                rows = bank.index_select(0, idx) * self.momentum + v * (
                    1 - self.momentum)
                bank.index_copy_(0, idx, self._unit(rows))
        return loss


# Each method's published weights (gamma, alpha, beta) and fields.
WEIGHTS = {
    "ega": {"gamma": 1.0, "alpha": 0.0, "beta": 1.0, "node": 0.8,
            "edge": 0.24},
    "kd": {"gamma": 0.1, "alpha": 0.9, "beta": 0.0, "temperature": 4.0},
    "crd": {"gamma": 1.0, "alpha": 0.0, "beta": 0.8},
}


class Step:
    """The published step for ``method`` (ega, kd or crd) on one batch.

    ``student``, ``head`` and ``crd`` (for CRD) are the modules above; the
    student's optimizer trains the student and CRD's embeddings, the
    head's optimizer the head.
    """

    def __init__(self, method, student, head, crd=None, lr=0.05,
                 head_lr=0.01, momentum=0.9, weight_decay=5e-4):
        self.method, self.w = method, WEIGHTS[method]
        self.student, self.head, self.crd = student, head, crd
        params = list(student.parameters()) + (
            list(crd.parameters()) if crd is not None else [])
        self.optimizer = torch.optim.SGD(params, lr, momentum=momentum,
                                         weight_decay=weight_decay)
        self.optimizer_t = torch.optim.SGD(head.parameters(), head_lr,
                                           momentum=momentum,
                                           weight_decay=weight_decay)
        student.train()
        head.train()

    def start_epoch(self, epoch, milestones, base_lr=0.05, rate=0.1):
        """The student's rate for ``epoch`` (1-based): ``base_lr`` times
        ``rate`` for each milestone it is past."""
        lr = base_lr * rate ** sum(epoch > m for m in milestones)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def __call__(self, pixels, labels, features, contrast_idx=None):
        """One step; returns its terms (values before the update)."""
        w = self.w
        x_s, logits_s = self.student(pixels)
        x_t, logits_t = self.head(features)
        terms = {"ce": F.cross_entropy(logits_s, labels, ignore_index=-1),
                 "teacher_ce": F.cross_entropy(logits_t, labels,
                                               ignore_index=-1)}
        loss = w["gamma"] * terms["ce"]
        if self.method == "ega":
            terms["node"], terms["edge"] = ega_terms(x_t, x_s)
            loss = loss + w["beta"] * (w["node"] * terms["node"]
                                       + w["edge"] * terms["edge"])
        elif self.method == "crd":
            terms["crd"] = self.crd(x_s, x_t, contrast_idx)
            loss = loss + w["beta"] * terms["crd"]
        if w["alpha"]:
            terms["kd"] = kd(logits_s, logits_t, w["temperature"])
            loss = loss + w["alpha"] * terms["kd"]
        terms["loss"] = loss
        self.optimizer.zero_grad()
        loss.backward(retain_graph=True)
        self.optimizer_t.zero_grad()  # what the student's loss sent there
        terms["teacher_ce"].backward()
        self.optimizer_t.step()
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in terms.items()}
