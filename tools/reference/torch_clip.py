"""OpenAI CLIP's ModifiedResNet in plain PyTorch, for parity tests.

Written from the architecture OpenAI published (three-conv stem with a 2x2
average pool; stride by average pooling inside bottlenecks and shortcuts;
attention pooling with the mean token as the query), with parameter names as
in their checkpoints, wrapped in a model with a stand-in text tower so the
TorchScript file has the published key layout.
"""

import torch
import torch.nn.functional as F
from torch import nn


class Bottleneck(nn.Module):
    def __init__(self, cin, planes, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.avgpool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride > 1 or cin != planes * 4:
            self.downsample = nn.Sequential()
            self.downsample.add_module("-1", nn.AvgPool2d(stride))
            self.downsample.add_module("0", nn.Conv2d(cin, planes * 4, 1,
                                                      bias=False))
            self.downsample.add_module("1", nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(self.avgpool(out)))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idt)


class AttentionPool2d(nn.Module):
    def __init__(self, spatial, dim, heads, out_dim):
        super().__init__()
        self.positional_embedding = nn.Parameter(
            torch.randn(spatial**2 + 1, dim) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.c_proj = nn.Linear(dim, out_dim)
        self.num_heads = heads

    def forward(self, x):
        x = x.flatten(start_dim=2).permute(2, 0, 1)  # (HW, N, C)
        x = torch.cat([x.mean(dim=0, keepdim=True), x], dim=0)
        x = x + self.positional_embedding[:, None, :]
        x, _ = F.multi_head_attention_forward(
            query=x[:1], key=x, value=x, embed_dim_to_check=x.shape[-1],
            num_heads=self.num_heads, q_proj_weight=self.q_proj.weight,
            k_proj_weight=self.k_proj.weight,
            v_proj_weight=self.v_proj.weight, in_proj_weight=None,
            in_proj_bias=torch.cat([self.q_proj.bias, self.k_proj.bias,
                                    self.v_proj.bias]),
            bias_k=None, bias_v=None, add_zero_attn=False, dropout_p=0.0,
            out_proj_weight=self.c_proj.weight,
            out_proj_bias=self.c_proj.bias, use_separate_proj_weight=True,
            training=False, need_weights=False)
        return x.squeeze(0)


class ModifiedResNet(nn.Module):
    def __init__(self, layers=(3, 4, 6, 3), out_dim=1024, width=64,
                 resolution=224):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width // 2, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width // 2)
        self.conv2 = nn.Conv2d(width // 2, width // 2, 3, padding=1,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(width // 2)
        self.conv3 = nn.Conv2d(width // 2, width, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.avgpool = nn.AvgPool2d(2)
        cin = width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(Bottleneck(cin, planes,
                                         2 if (i > 0 and j == 0) else 1))
                cin = planes * 4
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.attnpool = AttentionPool2d(resolution // 32, width * 32,
                                        width * 32 // 64, out_dim)

    def forward(self, x):
        for i in (1, 2, 3):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        x = self.avgpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
        return self.attnpool(x)


class CLIPStandIn(nn.Module):
    """``visual`` plus text-tower parameters, as in OpenAI's files."""

    def __init__(self, visual):
        super().__init__()
        self.visual = visual
        self.transformer = nn.Sequential(nn.Linear(8, 8))
        self.token_embedding = nn.Embedding(10, 8)
        self.positional_embedding = nn.Parameter(torch.zeros(4, 8))
        self.ln_final = nn.LayerNorm(8)
        self.text_projection = nn.Parameter(torch.zeros(8, 8))
        self.logit_scale = nn.Parameter(torch.ones([]))
        self.register_buffer("input_resolution", torch.tensor(224))
        self.register_buffer("context_length", torch.tensor(77))
        self.register_buffer("vocab_size", torch.tensor(10))

    def forward(self, image):
        return self.visual(image)
