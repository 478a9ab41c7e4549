"""RepDistiller's CIFAR ResNets in plain PyTorch (resnet8 ... resnet110,
resnet8x4, resnet32x4), for the training-step comparison.

Written from the published architecture: a 3x3 stem, three stages of basic
blocks (3x3-BN-ReLU-3x3-BN plus a 1x1-conv-BN shortcut where the shape
changes; stride 2 on the first block of stages 2 and 3), global average
pooling. ``widths`` is (stem, stage 1, 2, 3): (16, 16, 32, 64) for resnetN,
(32, 64, 128, 256) for resnetNx4. Parameter counts equal the Keras zoo's
(``ega_tf.students``), which equal the published ones.
"""

import torch
from torch import nn

from tools.reference.torch_resnet import Basic


class CifarResNet(nn.Module):
    """The pooled feature of ``resnet{depth}`` at ``widths``."""

    def __init__(self, depth=8, widths=(32, 64, 128, 256)):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        cin, blocks = widths[0], []
        for planes, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                blocks.append(Basic(cin, planes, stride if i == 0 else 1))
                cin = planes
        self.blocks = nn.Sequential(*blocks)
        self.width = cin
        for m in self.modules():  # RepDistiller's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out",
                                        nonlinearity="relu")

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.blocks(x).mean((2, 3))


def create(name):
    """``resnet8`` ... ``resnet110``, ``resnet8x4``, ``resnet32x4``."""
    wide = name.endswith("x4")
    depth = int(name[len("resnet"):].replace("x4", ""))
    return CifarResNet(depth, (32, 64, 128, 256) if wide
                       else (16, 16, 32, 64))
