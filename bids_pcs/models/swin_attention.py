"""Fused scaled-dot-product attention in SwinUNETR's windows, with or without gradients.

MONAI's ``WindowAttention`` computes ``softmax(q k^T * scale + bias) v`` as
separate batched matmuls, an add and a softmax, materialising the attention
matrix of every window; with ``use_flash_attention`` it calls
``torch.nn.functional.scaled_dot_product_attention`` instead, but only where no
gradient is taken. :class:`FusedWindowAttention` takes the fused call in
training too, so training, validation, inference and the frozen-output cache of
top/decoder tuning all compute the windows with one kernel (the same numbers
whether or not a gradient is taken). The bias (relative position bias, plus
the shifted-window mask) and the weights are MONAI's: state dicts do not
change.

Usage::

    swin = SwinUNETR(...)
    fuse_window_attention(swin)      # every WindowAttention in place
"""

from __future__ import annotations

import torch
from monai.networks.nets.swin_unetr import WindowAttention
from torch import nn


class FusedWindowAttention(WindowAttention):
    """MONAI's window attention through ``scaled_dot_product_attention`` in every mode."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, -1).permute(2, 0, 1)
        if mask is not None:
            windows = mask.shape[0]
            bias = (bias[None, None] + mask[None, :, None]).expand(
                b // windows, windows, self.num_heads, n, n).reshape(b, self.num_heads, n, n)
        else:
            bias = bias[None]
        dropout = self.attn_drop.p if self.training else 0.0
        out = nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=bias.to(q.dtype), dropout_p=dropout, scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


def fuse_window_attention(module: nn.Module) -> nn.Module:
    """Make every MONAI ``WindowAttention`` inside ``module`` a :class:`FusedWindowAttention`."""
    for child in module.modules():
        if type(child) is WindowAttention:
            child.__class__ = FusedWindowAttention
    return module
