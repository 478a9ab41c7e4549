"""DINOv2's Vision Transformer in plain PyTorch, for parity tests, with the
parameter names of the publisher's hub files (``dinov2_vits14_pretrain.pth``
and the others).

Written from the architecture as published (Oquab et al., 2023, and the
``dinov2`` repository's ``DinoVisionTransformer``): a patch conv with bias;
a class token; a learned position table for class token + patches, stored at
518 px (37 x 37 patches of 14) and resized to the image by PyTorch's bicubic
``interpolate``; register tokens inserted after the class token once the
positions are added; pre-norm blocks (LayerNorm eps 1e-6, fused ``qkv`` with
bias, per-channel LayerScale ``ls1``/``ls2``, an exact-GELU ``fc1``/``fc2``
MLP or, for ViT-g, a SwiGLU ``w12``/``w3`` MLP); a final ``norm``. ``model(x)``
returns the class token after it.

How the table is resized differs between releases and cannot be read off
the weights: the files without registers were trained with a scale factor of
``(patches + 0.1) / 37`` and no antialiasing, the ``_reg`` files with the
output size itself and antialiasing (``interpolate_offset`` and
``interpolate_antialias`` here).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from tools.reference.torch_vit import PatchEmbed, TimmAttention
from tools.reference.torch_vit import TimmMlp as Mlp


class LayerScale(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


def swiglu_width(dim, mlp_ratio):
    """The hidden width of DINOv2's SwiGLU MLP: two thirds of the plain
    MLP's, rounded up to a multiple of 8."""
    return (int(int(dim * mlp_ratio) * 2 / 3) + 7) // 8 * 8


class SwiGLU(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio, swiglu):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = TimmAttention(dim, heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = (SwiGLU(dim, swiglu_width(dim, mlp_ratio)) if swiglu
                    else Mlp(dim, int(dim * mlp_ratio)))
        self.ls2 = LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DinoV2(nn.Module):
    def __init__(self, image=518, patch=14, dim=384, depth=12, heads=6,
                 mlp_ratio=4.0, swiglu=False, registers=0,
                 interpolate_offset=0.1, interpolate_antialias=False):
        super().__init__()
        self.patch = patch
        self.offset = interpolate_offset
        self.antialias = interpolate_antialias
        self.patch_embed = PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(
            torch.randn(1, (image // patch) ** 2 + 1, dim) * 0.02)
        self.register_tokens = (nn.Parameter(torch.randn(1, registers, dim))
                                if registers else None)
        self.mask_token = nn.Parameter(torch.zeros(1, dim))
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, swiglu)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def positions(self, height, width):
        """The position table for an image of ``height`` x ``width``."""
        table = self.pos_embed.float()
        n = table.shape[1] - 1
        rows, cols = height // self.patch, width // self.patch
        if rows * cols == n and rows == cols:
            return self.pos_embed
        side = int(math.sqrt(n))
        grid = table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        if self.offset:
            resize = {"scale_factor": ((rows + self.offset) / side,
                                       (cols + self.offset) / side)}
        else:
            resize = {"size": (rows, cols)}
        grid = F.interpolate(grid, mode="bicubic",
                             antialias=self.antialias, **resize)
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([table[:, :1], grid], 1).to(self.pos_embed.dtype)

    def tokens(self, x):
        """The normalised tokens: class, registers, patches."""
        height, width = x.shape[-2:]
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)
        x = x + self.positions(height, width)
        if self.register_tokens is not None:
            x = torch.cat([x[:, :1], self.register_tokens.expand(
                x.shape[0], -1, -1), x[:, 1:]], 1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def forward(self, x):
        return self.tokens(x)[:, 0]

    def linear_feature(self, x):
        """The publisher's linear-evaluation input: the class token and the
        mean of the patch tokens, both after the final norm."""
        t = self.tokens(x)
        skip = 1 + (self.register_tokens.shape[1]
                    if self.register_tokens is not None else 0)
        return torch.cat([t[:, 0], t[:, skip:].mean(1)], 1)


def randomized(model, seed=0):
    """Non-trivial LayerNorm and LayerScale parameters, and positions as
    large as the patch embeddings (as trained ones are), so they matter."""
    from tools.reference.torch_vit import randomize_norms
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if hasattr(model, "pos_embed"):
            model.pos_embed.copy_(0.5 * torch.randn(model.pos_embed.shape,
                                                    generator=g))
        for m in model.modules():
            if isinstance(m, LayerScale):
                m.gamma.copy_(0.5 + 0.3 * torch.randn(m.gamma.shape,
                                                      generator=g))
    return randomize_norms(model, seed)
