"""Swin's shifted-window attention and patch merging, written as operations the rules claim.

torchvision wraps ``shifted_window_attention`` and ``_patch_merging_pad`` with
``torch.fx.wrap``, so a traced Swin shows each as one opaque call. The rules of
:mod:`parasnn.conversion.transformer_rules` replace each call by the module here (role
``EXPANDED``), traced and inlined; every operation inside is then claimed by an existing
rule (docs/maths.md §7):

* zero padding to a multiple of the window, the cyclic shift (``torch.roll``), the window
  partition and its reverse, the patch-merging gather: permutations and zero padding of
  the activations, so affine;
* ``Q·Kᵀ`` and ``attention·V``: products of two activations;
* the relative position bias and the shift mask: computed from parameters and shapes only,
  so static (the same at every time step), added to the scores;
* softmax: expanded again into ``exp``, a sum, ``reciprocal`` and a product.

torchvision decides with Python ``if`` on the padded size whether to shift (no shift when
the window covers the whole map). Under torch.fx the sizes are symbolic, so here the shift
is multiplied by ``window < padded size`` instead, and the mask is always added: with a
zero shift it is zero inside every window, and rolling by zero is the identity, so the
result is the same as torchvision's (tested against it, including sizes that need padding).
Only the eval-mode computation is written (no dropout), which is what conversion traces.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SHIFT_MASK_SCORE", "DecomposedShiftedWindowAttention", "PatchMergingGather"]

# torchvision's score for pairs of tokens of one window that come from different regions
# of the shifted map: kept as is, so the ANN is unchanged.
SHIFT_MASK_SCORE = -100.0


class PatchMergingGather(nn.Module):
    """torchvision's ``_patch_merging_pad``: ``(..., H, W, C) -> (..., ⌈H/2⌉, ⌈W/2⌉, 4C)``, the
    map zero-padded to even sizes and its 2×2 neighbours concatenated along channels."""

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[-3], x.shape[-2]
        x = F.pad(x, (0, 0, 0, width % 2, 0, height % 2))
        return torch.cat([x[..., 0::2, 0::2, :], x[..., 1::2, 0::2, :], x[..., 0::2, 1::2, :],
                          x[..., 1::2, 1::2, :]], -1)


def _regions(size, window: int, shift, device) -> Tensor:
    """Region index (0, 1, 2) of each position along one padded axis of length ``size``:
    torchvision's slices ``[0, −window)``, ``[−window, −shift)``, ``[−shift, size)``."""
    positions = torch.arange(size, device=device)
    return (positions >= size - window).long() + (positions >= size - shift).long()


class DecomposedShiftedWindowAttention(nn.Module):
    """torchvision's ``shifted_window_attention`` (Swin V1 and V2) in eval mode, with the same
    signature: ``input`` ``(B, H, W, C)`` → ``(B, H, W, C)``.

    The map is padded to multiples of ``window_size``, rolled by ``−shift_size`` (the shift
    is dropped along an axis the window covers), cut into windows of ``w_h·w_w`` tokens,
    attended with ``num_heads`` heads, relative position bias and the shift mask, projected,
    reassembled, rolled back and cropped.
    """

    def forward(self, input: Tensor, qkv_weight: Tensor, proj_weight: Tensor, relative_position_bias: Tensor,
                window_size: list[int], num_heads: int, shift_size: list[int], attention_dropout: float,
                dropout: float, qkv_bias: Tensor | None, proj_bias: Tensor | None,
                logit_scale: Tensor | None = None, training: bool = True) -> Tensor:
        # Defaults only where torchvision's call may omit the argument: when this forward is
        # traced with the constants fixed, fx writes a signature in which a parameter
        # without default may not follow one with a default.
        if training and (attention_dropout > 0 or dropout > 0):
            raise ValueError("shifted_window_attention with dropout in training mode: convert the model in eval mode")
        window_h, window_w = window_size
        batch, height, width, channels = input.shape
        pad_right, pad_bottom = (window_w - width % window_w) % window_w, (window_h - height % window_h) % window_h
        x = F.pad(input, (0, 0, 0, pad_right, 0, pad_bottom))
        padded_h, padded_w = x.shape[1], x.shape[2]
        shifted = sum(shift_size) > 0  # a constant of the model; the sizes below are symbolic
        if shifted:
            # torchvision sets the shift to 0 where the window covers the padded map
            shift_h, shift_w = shift_size[0] * (window_h < padded_h), shift_size[1] * (window_w < padded_w)
            x = torch.roll(x, shifts=(-shift_h, -shift_w), dims=(1, 2))
        windows = (padded_h // window_h) * (padded_w // window_w)
        x = x.view(batch, padded_h // window_h, window_h, padded_w // window_w, window_w, channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch * windows, window_h * window_w, channels)  # (B·nW, N, C)

        if logit_scale is not None and qkv_bias is not None:  # Swin V2: no key bias
            third = qkv_bias.numel() // 3
            qkv_bias = torch.cat([qkv_bias[:third], torch.zeros_like(qkv_bias[third:2 * third]), qkv_bias[2 * third:]])
        tokens = x.size(1)
        qkv = F.linear(x, qkv_weight, qkv_bias)
        qkv = qkv.reshape(x.size(0), tokens, 3, num_heads, channels // num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B·nW, heads, N, C / heads)
        if logit_scale is not None:  # Swin V2: cosine attention
            scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
            scores = scores * torch.clamp(logit_scale, max=4.605170185988092).exp()  # log(100), as torchvision
        else:
            scores = (q * (channels // num_heads) ** -0.5).matmul(k.transpose(-2, -1))
        scores = scores + relative_position_bias
        if shifted:
            region = _regions(padded_h, window_h, shift_h, x.device)[:, None] * 3 + \
                _regions(padded_w, window_w, shift_w, x.device)[None, :]  # (pH, pW)
            region = region.view(padded_h // window_h, window_h, padded_w // window_w, window_w)
            region = region.permute(0, 2, 1, 3).reshape(windows, window_h * window_w)  # (nW, N)
            different = (region.unsqueeze(1) - region.unsqueeze(2)) != 0  # (nW, N, N)
            mask = torch.zeros(different.shape, dtype=x.dtype, device=x.device).masked_fill(different, SHIFT_MASK_SCORE)
            scores = scores.view(x.size(0) // windows, windows, num_heads, tokens, tokens) + mask[None, :, None]
            scores = scores.view(-1, num_heads, tokens, tokens)
        x = F.softmax(scores, dim=-1).matmul(v).transpose(1, 2).reshape(x.size(0), tokens, channels)
        x = F.linear(x, proj_weight, proj_bias)

        x = x.view(batch, padded_h // window_h, padded_w // window_w, window_h, window_w, channels)
        x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, padded_h, padded_w, channels)
        if shifted:
            x = torch.roll(x, shifts=(shift_h, shift_w), dims=(1, 2))
        return x[:, :height, :width, :].contiguous()
