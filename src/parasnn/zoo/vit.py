"""A small vision transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words",
arXiv:2010.11929) for small images such as 1×28×28, written for conversion: patch embedding as
an ``nn.Conv2d``, learned position embeddings, pre-norm blocks of ``nn.LayerNorm``, explicit
softmax attention (:class:`parasnn.zoo.bert.SelfAttention`) and an ``nn.GELU`` MLP, mean pooling
over the patch tokens (no class token: no concatenation in the graph), a LayerNorm and a linear
head. It traces with :func:`torch.fx.symbolic_trace`.

Shapes: ``(B, C, H, W) -> (B, num_classes)``; the N = (H/P)·(W/P) patches of side
P = ``patch_size`` become ``(B, N, width)`` tokens.

Registered in the zoo as ``vit-tiny`` (``parasnn train --model vit-tiny``): the activation
sites are the blocks' MLP activations, one per block, made by the zoo's activation factory;
the architecture accepts GELU only (see :class:`parasnn.zoo.spec.Architecture`), so its
ModelSpec records ``ActivationSpec(kind="gelu")``. ``width`` is the token width D (default
64); the MLP is 2·D wide and there are 4 heads.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .bert import SelfAttention
from .spec import ActivationFactory, ActivationKind, check_input_shape, register_architecture

__all__ = ["VisionTransformer", "ViTBlock", "vit_tiny", "VIT_TINY_DEPTH"]

VIT_TINY_DEPTH = 4  # blocks of vit-tiny: also its number of activation sites


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x += attn(LN(x)); x += W2 GELU(W1 LN(x))``, ``(B, N, D) -> (B, N, D)``."""

    def __init__(self, width: int, *, heads: int, mlp_width: int, activation: nn.Module | None = None):
        super().__init__()
        self.attention_norm = nn.LayerNorm(width)
        self.attention = SelfAttention(width, heads)
        self.mlp_norm = nn.LayerNorm(width)
        self.mlp_in = nn.Linear(width, mlp_width)
        self.activation = activation if activation is not None else nn.GELU()
        self.mlp_out = nn.Linear(mlp_width, width)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attention(self.attention_norm(x))
        return x + self.mlp_out(self.activation(self.mlp_in(self.mlp_norm(x))))


class VisionTransformer(nn.Module):
    """Patch embedding → + position embedding → ``depth`` :class:`ViTBlock` → LayerNorm →
    mean over tokens → linear classifier. ``new_activation`` makes each block's MLP
    activation, in block order (default ``nn.GELU``)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, *, patch_size: int = 7,
                 width: int = 64, depth: int = 4, heads: int = 4, mlp_width: int = 128,
                 new_activation: ActivationFactory | None = None):
        super().__init__()
        new_activation = new_activation or nn.GELU
        channels, height, width_pixels = check_input_shape(tuple(input_shape))
        if height % patch_size or width_pixels % patch_size:
            raise ValueError(f"input_shape {tuple(input_shape)}: height and width must be multiples of "
                             f"patch_size {patch_size}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        tokens = (height // patch_size) * (width_pixels // patch_size)
        self.patches = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size)
        self.position = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, tokens, width), std=0.02))
        self.blocks = nn.Sequential(*(ViTBlock(width, heads=heads, mlp_width=mlp_width, activation=new_activation())
                                      for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        x = self.patches(images).flatten(2).transpose(1, 2) + self.position  # (B, N, width)
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def vit_tiny(input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, *, width: int = 64,
             new_activation: ActivationFactory | None = None) -> VisionTransformer:
    """A ~0.14M-parameter ViT: width 64, 4 blocks of 4 heads, MLP width 128 (2·width); 7×7
    patches when the sides are multiples of 7 (28×28: 16 tokens), else 4×4 (32×32: 64 tokens)."""
    if width % 4:
        raise ValueError(f"vit-tiny: width must be a multiple of its 4 heads, got {width}")
    patch_size = 7 if input_shape[1] % 7 == 0 and input_shape[2] % 7 == 0 else 4
    return VisionTransformer(input_shape, num_classes, patch_size=patch_size, width=width, depth=VIT_TINY_DEPTH,
                             heads=4, mlp_width=2 * width, new_activation=new_activation)


def _vit_tiny_for_zoo(*, input_shape: tuple[int, int, int], num_classes: int, width: int,
                      new_activation: ActivationFactory) -> VisionTransformer:
    return vit_tiny(input_shape, num_classes, width=width, new_activation=new_activation)


register_architecture("vit-tiny", _vit_tiny_for_zoo, default_width=64, activation_sites=VIT_TINY_DEPTH,
                      activations=(ActivationKind.GELU,))
