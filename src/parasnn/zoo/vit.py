"""A small vision transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words",
arXiv:2010.11929) for small images such as 1×28×28, written for conversion: patch embedding as
an ``nn.Conv2d``, learned position embeddings, pre-norm blocks of ``nn.LayerNorm``, explicit
softmax attention (:class:`parasnn.zoo.bert.SelfAttention`) and an ``nn.GELU`` MLP, mean pooling
over the patch tokens (no class token: no concatenation in the graph), a LayerNorm and a linear
head. It traces with :func:`torch.fx.symbolic_trace`.

Shapes: ``(B, C, H, W) -> (B, num_classes)``; the N = (H/P)·(W/P) patches of side
P = ``patch_size`` become ``(B, N, width)`` tokens.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .bert import SelfAttention

__all__ = ["VisionTransformer", "ViTBlock", "vit_tiny"]


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x += attn(LN(x)); x += W2 GELU(W1 LN(x))``, ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, width: int, *, heads: int, mlp_width: int):
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp_in = nn.Linear(width, mlp_width)
        self.activation = nn.GELU()
        self.mlp_out = nn.Linear(mlp_width, width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp_out(self.activation(self.mlp_in(self.mlp_norm(x))))


class VisionTransformer(nn.Module):
    """Patch embedding → + position embedding → ``depth`` :class:`ViTBlock` → LayerNorm →
    mean over tokens → linear classifier."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *, patch_size: int = 7,
                 width: int = 64, depth: int = 4, heads: int = 4, mlp_width: int = 128):
        super().__init__()
        channels, height, width_pixels = input_shape
        if height % patch_size or width_pixels % patch_size:
            raise ValueError(f"input_shape {tuple(input_shape)}: height and width must be multiples of "
                             f"patch_size {patch_size}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        tokens = (height // patch_size) * (width_pixels // patch_size)
        self.patches = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size)
        self.position = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, tokens, width), std=0.02))
        self.blocks = nn.Sequential(*(ViTBlock(width, heads=heads, mlp_width=mlp_width) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patches(images).flatten(2).transpose(1, 2) + self.position  # (B, N, width)
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def vit_tiny(input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10) -> VisionTransformer:
    """A ~0.14M-parameter ViT: width 64, 4 blocks of 4 heads, MLP width 128; 7×7 patches when
    the sides are multiples of 7 (28×28: 16 tokens), else 4×4 (32×32: 64 tokens)."""
    patch_size = 7 if input_shape[1] % 7 == 0 and input_shape[2] % 7 == 0 else 4
    return VisionTransformer(input_shape, num_classes, patch_size=patch_size, width=64, depth=4, heads=4,
                             mlp_width=128)
