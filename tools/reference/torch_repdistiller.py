"""RepDistiller's CIFAR networks in plain PyTorch, with its state-dict
names, for the conversion tests of its supervised teachers.

Written from the published architectures (module names as the published
checkpoints carry them):

* ``resnet{8..110}``, ``resnet8x4``, ``resnet32x4``: ``conv1``/``bn1``, three
  stages ``layer1..3`` of basic blocks (``conv1, bn1, conv2, bn2`` and a
  ``downsample`` 1x1-conv + BN where the shape changes), ``fc``;
* ``ResNet50``: the bottleneck ResNet-50 with a 3x3 stem (``conv1``,
  ``bn1``), ``layer1..4`` (``conv1..3``, ``bn1..3``, ``shortcut``: 1x1-conv
  + BN), stride on the 3x3 convolution, ``linear``;
* ``wrn_{d}_{k}``: pre-activation wide blocks ``block1..3.layer.i``
  (``bn1, conv1, bn2, conv2``, ``convShortcut`` where the width changes),
  a final ``bn1``, ``fc``;
* ``vgg{8..19}``: five ``block`` sequences of conv (with bias) + BN + ReLU,
  the last ReLU of each applied outside it, max-pools after the first
  three, global average pooling, ``classifier``.

Each ``forward`` returns (pooled feature, logits); ``features`` the first.
"""

import torch
from torch import nn
from torch.nn import functional as F

from tools.reference.torch_resnet import Basic  # RepDistiller's names too


class _Network(nn.Module):
    def features(self, x):
        return self(x)[0]


class CifarResNet(_Network):
    def __init__(self, depth, widths, num_classes):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin = widths[0]
        for s, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)), 1):
            blocks = []
            for i in range(n):
                blocks.append(Basic(cin, planes, stride if i == 0 else 1))
                cin = planes
            setattr(self, f"layer{s}", nn.Sequential(*blocks))
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        f = x.mean((2, 3))
        return f, self.fc(f)


class _Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, 4 * planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != 4 * planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, 4 * planes, 1, stride, bias=False),
                nn.BatchNorm2d(4 * planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class ResNet50(_Network):
    def __init__(self, num_classes, blocks=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin = 64
        for s, (planes, n, stride) in enumerate(
                zip((64, 128, 256, 512), blocks, (1, 2, 2, 2)), 1):
            layer = []
            for i in range(n):
                layer.append(_Bottleneck(cin, planes, stride if i == 0 else 1))
                cin = 4 * planes
            setattr(self, f"layer{s}", nn.Sequential(*layer))
        self.linear = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        for s in range(1, 5):
            x = getattr(self, f"layer{s}")(x)
        f = x.mean((2, 3))
        return f, self.linear(f)


class _Wide(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.equal = cin == planes
        self.convShortcut = None if self.equal else nn.Conv2d(
            cin, planes, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        out = self.conv2(out)
        return (x if self.equal else self.convShortcut(pre)) + out


class _Stage(nn.Module):
    def __init__(self, n, cin, planes, stride):
        super().__init__()
        self.layer = nn.Sequential(*[
            _Wide(cin if i == 0 else planes, planes, stride if i == 0 else 1)
            for i in range(n)])

    def forward(self, x):
        return self.layer(x)


class WideResNet(_Network):
    def __init__(self, depth, widen, num_classes):
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.block1 = _Stage(n, widths[0], widths[1], 1)
        self.block2 = _Stage(n, widths[1], widths[2], 2)
        self.block3 = _Stage(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x):
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        f = F.relu(self.bn1(x)).mean((2, 3))
        return f, self.fc(f)


VGG_BLOCKS = {8: [[64], [128], [256], [512], [512]],
              11: [[64], [128], [256, 256], [512, 512], [512, 512]],
              13: [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
              16: [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
              19: [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4]}


class VGG(_Network):
    def __init__(self, depth, num_classes):
        super().__init__()
        cin = 3
        for b, widths in enumerate(VGG_BLOCKS[depth]):
            parts = []
            for w in widths:
                parts += [nn.Conv2d(cin, w, 3, padding=1), nn.BatchNorm2d(w),
                          nn.ReLU()]
                cin = w
            setattr(self, f"block{b}", nn.Sequential(*parts[:-1]))
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x):
        for b in range(5):
            x = F.relu(getattr(self, f"block{b}")(x))
            if b < 3:
                x = F.max_pool2d(x, 2)
        f = x.mean((2, 3))
        return f, self.classifier(f)


def create(name, num_classes=100):
    """The network RepDistiller names ``name``."""
    if name == "ResNet50":
        return ResNet50(num_classes)
    if name.startswith("resnet"):
        wide = name.endswith("x4")
        depth = int(name[len("resnet"):].replace("x4", ""))
        return CifarResNet(depth, (32, 64, 128, 256) if wide
                           else (16, 16, 32, 64), num_classes)
    if name.startswith("wrn_"):
        _, depth, widen = name.split("_")
        return WideResNet(int(depth), int(widen), num_classes)
    if name.startswith("vgg"):
        return VGG(int(name[3:]), num_classes)
    raise ValueError(f"No RepDistiller network {name!r} here.")


def randomized(model, seed=0):
    """``model`` with random BatchNorm statistics and affine weights (a
    freshly initialised one has mean 0 and variance 1, which would hide a
    statistic ported to the wrong place), in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(0.2 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))
                m.weight.copy_(1 + 0.2 * torch.randn(c, generator=g))
                m.bias.copy_(0.1 * torch.randn(c, generator=g))
    return model.eval()
