"""DINOv3's Vision Transformer and ConvNeXt in plain PyTorch, for parity
tests, with the parameter names of the publisher's hub files.

Written from the architectures as published (Siméoni et al., 2025, and the
``dinov3`` repository):

- ``DinoV3ViT``: patch conv with bias; class token, 4 storage tokens and a
  mask token; no position table: each block rotates the patch tokens'
  queries and keys by angles 2 pi c / period, c the patch centre's
  coordinate in [-1, 1] per axis (half the rotary dimensions for rows, half
  for columns, rotate-half layout), periods 100 ** (2 j / (head_dim / 2)),
  stored as ``rope_embed.periods``; the class and storage tokens are not
  rotated. Fused ``qkv`` whose bias is multiplied by ``bias_mask`` (1, 0, 1
  by thirds: no key bias), LayerScale, LayerNorm eps 1e-5, an exact-GELU MLP
  ``fc1``/``fc2`` or a SwiGLU ``w1`` (gate), ``w2``, ``w3``; final ``norm``;
  ``model(x)`` returns the class token after it.
- ``DinoV3ConvNeXt``: ConvNeXt (Liu et al., 2022) with the publisher's
  names: ``downsample_layers.i`` (stem: 4x4 conv, LayerNorm over channels;
  later: LayerNorm, 2x2 conv), ``stages.i.j`` blocks (7x7 depthwise conv,
  LayerNorm, ``pwconv1``, GELU, ``pwconv2``, ``gamma``), all LayerNorms eps
  1e-6; ``model(x)`` returns the final ``norm`` of the globally averaged
  last feature map. The file stores that norm twice (``norm`` and
  ``norms.3``: one module listed twice).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from tools.reference.torch_dinov2 import LayerScale, Mlp
from tools.reference.torch_vit import PatchEmbed


def rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat([-b, a], -1)


class Rope(nn.Module):
    def __init__(self, head_dim, base=100.0):
        super().__init__()
        j = torch.arange(head_dim // 4, dtype=torch.float32)
        self.register_buffer("periods", base ** (2 * j / (head_dim // 2)))

    def forward(self, rows, cols):
        ch = (torch.arange(0.5, rows) / rows) * 2 - 1
        cw = (torch.arange(0.5, cols) / cols) * 2 - 1
        coords = torch.stack(torch.meshgrid(ch, cw, indexing="ij"), -1)
        coords = coords.flatten(0, 1)  # [HW, 2]
        angles = 2 * math.pi * coords[:, :, None] / self.periods[None, None]
        angles = angles.flatten(1, 2).tile(2)  # [HW, head_dim]
        return angles.sin(), angles.cos()


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        if qkv_bias:
            self.qkv.register_buffer("bias_mask", torch.cat([
                torch.ones(dim), torch.zeros(dim), torch.ones(dim)]))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, rope):
        b, t, d = x.shape
        bias = (self.qkv.bias * self.qkv.bias_mask
                if self.qkv.bias is not None else None)
        qkv = F.linear(x, self.qkv.weight, bias)
        q, k, v = qkv.reshape(b, t, 3, self.heads, d // self.heads).permute(
            2, 0, 3, 1, 4)
        sin, cos = rope
        skip = t - sin.shape[0]

        def rotate(z):
            head, tail = z[:, :, :skip], z[:, :, skip:]
            return torch.cat([head, tail * cos + rotate_half(tail) * sin], 2)

        q, k = rotate(q), rotate(k)
        att = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        return self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(
            b, t, d))


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


def swiglu_width(dim, ratio, align=8):
    """The publisher's SwiGLU width: two thirds of int(dim * ratio), rounded
    up to a multiple of ``align`` (8; 64 for ViT-7B's swiglu64)."""
    d = int(int(dim * ratio) * 2 / 3)
    return d + (-d % align)


class Block(nn.Module):
    def __init__(self, dim, heads, ratio, swiglu, qkv_bias, hidden=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, heads, qkv_bias)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        hidden = hidden or (swiglu_width(dim, ratio) if swiglu
                            else int(dim * ratio))
        self.mlp = SwiGLU(dim, hidden) if swiglu else Mlp(dim, hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x, rope):
        x = x + self.ls1(self.attn(self.norm1(x), rope))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV3ViT(nn.Module):
    def __init__(self, patch=16, dim=384, depth=12, heads=6, ratio=4.0,
                 swiglu=False, storage=4, qkv_bias=True, hidden=None):
        super().__init__()
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.storage_tokens = nn.Parameter(torch.randn(1, storage, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.rope_embed = Rope(dim // heads)
        self.blocks = nn.ModuleList([Block(dim, heads, ratio, swiglu,
                                           qkv_bias, hidden)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-5)

    def tokens(self, x):
        grid = self.patch_embed.proj(x)
        rows, cols = grid.shape[-2:]
        x = grid.flatten(2).transpose(1, 2)
        n = x.shape[0]
        x = torch.cat([self.cls_token.expand(n, -1, -1),
                       self.storage_tokens.expand(n, -1, -1), x], 1)
        rope = self.rope_embed(rows, cols)
        for block in self.blocks:
            x = block(x, rope)
        return self.norm(x)

    def forward(self, x):
        return self.tokens(x)[:, 0]

    def linear_feature(self, x):
        t = self.tokens(x)
        return torch.cat([t[:, 0], t[:, 1 + self.storage_tokens.shape[1]:]
                          .mean(1)], 1)


class ChannelsFirstNorm(nn.Module):
    """LayerNorm over the channels of an NCHW map (biased variance)."""

    def __init__(self, dim, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x):
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class DinoV3ConvNeXt(nn.Module):
    def __init__(self, depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)):
        super().__init__()
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(3, dims[0], 4, 4), ChannelsFirstNorm(dims[0]))])
        for a, b in zip(dims[:-1], dims[1:]):
            self.downsample_layers.append(nn.Sequential(
                ChannelsFirstNorm(a), nn.Conv2d(a, b, 2, 2)))
        self.stages = nn.ModuleList([
            nn.Sequential(*[ConvNeXtBlock(d) for _ in range(n)])
            for n, d in zip(depths, dims)])
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.norms = nn.ModuleList([nn.Identity(), nn.Identity(),
                                    nn.Identity(), self.norm])

    def forward(self, x):
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.norm(x.mean((-2, -1)))


def randomized(model, seed=0):
    """Non-trivial norms, LayerScales and ConvNeXt gammas."""
    from tools.reference.torch_vit import randomize_norms
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            scale = (m.gamma if isinstance(m, (LayerScale, ConvNeXtBlock))
                     else None)
            if scale is not None:
                scale.copy_(0.5 + 0.3 * torch.randn(scale.shape, generator=g))
            if isinstance(m, ChannelsFirstNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape,
                                                     generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return randomize_norms(model, seed)
