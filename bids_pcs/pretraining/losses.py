"""Restoration losses shared by the pretext tasks: a separable-window SSIM and a masked L1 + SSIM.

``monai.losses.SSIMLoss`` convolves five maps with a dense 3D window (7^3 = 343
taps each); a Gaussian window is separable, so three 1D passes (7 + 7 + 7 taps)
give the same local statistics at a fraction of the cost.  The SSIM *map* is
kept per voxel (the window is padded by replication, so the map has the
crop's shape) so that a loss can weight it, e.g. to the voxels a mask hid.

Usage::

    ssim = SeparableSSIM(window=7, data_range=1.0)
    similarity = ssim.map(restored, image)               # (B, 1, X, Y, Z)
    loss = masked_restoration_loss(restored, image, hidden, ssim, ssim_weight=1.0)
"""

from __future__ import annotations

import torch
from torch import nn

from bids_pcs.config import RecipeError


def gaussian_taps(window: int, sigma: float) -> torch.Tensor:
    """A normalised 1D Gaussian of ``window`` taps (odd)."""
    if window < 1 or window % 2 == 0:
        raise RecipeError(f"An SSIM window must be an odd number of voxels, not {window}.")
    offsets = torch.arange(window, dtype=torch.float32) - window // 2
    taps = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return taps / taps.sum()


class SeparableSSIM(nn.Module):
    """Structural similarity (Wang et al. 2004) of 3D volumes with a separable Gaussian window.

    Args:
        window: window side in voxels (odd).
        sigma: the window's Gaussian standard deviation in voxels (1.5 as in
            Wang et al. and MONAI).
        data_range: intensity range of the images (1 for crops normalised to [0, 1]).
        k1, k2: the stability constants of SSIM.

    Example::

        ssim = SeparableSSIM(window=7)
        similarity = ssim.map(restored, image).mean()   # 1 for identical volumes
    """

    def __init__(self, window: int = 7, sigma: float = 1.5, data_range: float = 1.0,
                 k1: float = 0.01, k2: float = 0.03) -> None:
        super().__init__()
        self.register_buffer("taps", gaussian_taps(int(window), float(sigma)), persistent=False)
        self.c1 = (k1 * data_range) ** 2
        self.c2 = (k2 * data_range) ** 2

    def _smooth(self, maps: torch.Tensor) -> torch.Tensor:
        channels = maps.shape[1]
        radius = self.taps.numel() // 2
        maps = nn.functional.pad(maps, (radius,) * 6, mode="replicate")
        taps = self.taps.to(maps.dtype)
        for axis in range(3):
            shape = [1, 1, 1]
            shape[axis] = taps.numel()
            kernel = taps.view(1, 1, *shape).expand(channels, 1, *shape)
            maps = nn.functional.conv3d(maps, kernel, groups=channels)
        return maps

    def map(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-voxel SSIM (B, 1, X, Y, Z) of single-channel volumes, in float32."""
        x, y = x.float(), y.float()
        with torch.autocast(device_type=x.device.type, enabled=False):
            stats = self._smooth(torch.cat([x, y, x * x, y * y, x * y], dim=1))
        mu_x, mu_y, xx, yy, xy = stats.chunk(5, dim=1)
        var_x = xx - mu_x * mu_x
        var_y = yy - mu_y * mu_y
        cov = xy - mu_x * mu_y
        return ((2 * mu_x * mu_y + self.c1) * (2 * cov + self.c2)) / (
            (mu_x * mu_x + mu_y * mu_y + self.c1) * (var_x + var_y + self.c2))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean SSIM of ``x`` against ``y``."""
        return self.map(x, y).mean()


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``sum(w * v) / sum(w)`` over every element."""
    return (values * weights).sum() / weights.sum().clamp_min(1e-8)


def masked_restoration_loss(restored: torch.Tensor, target: torch.Tensor, hidden: torch.Tensor,
                            ssim: SeparableSSIM, *, ssim_weight: float = 1.0,
                            visible_weight: float = 0.0) -> dict[str, torch.Tensor]:
    """L1 + ``ssim_weight`` x (1 - SSIM), both averaged over the hidden voxels.

    The network's full-resolution skip connection can copy every voxel it was
    shown, so a loss over the whole crop is about half trivial; as in masked
    auto-encoders the loss is computed where the input was hidden (the visible
    voxels weigh ``visible_weight`` each, 0 by default).

    Args:
        restored: the network's estimate (B, 1, X, Y, Z).
        target: the uncorrupted image.
        hidden: boolean (B, 1, X, Y, Z), true where the input was hidden.
        ssim: the SSIM module.
        ssim_weight: weight of (1 - SSIM).
        visible_weight: weight of a visible voxel relative to a hidden one.

    Returns:
        ``{"loss", "l1", "ssim"}`` (``l1`` and ``ssim`` detached, for the log).
    """
    restored, target = restored.float(), target.float()
    weights = hidden.float()
    if visible_weight:
        weights = weights + float(visible_weight) * (1.0 - weights)
    l1 = weighted_mean((restored - target).abs(), weights)
    dissimilarity = weighted_mean(1.0 - ssim.map(restored, target), weights)
    loss = l1 + float(ssim_weight) * dissimilarity
    return {"loss": loss, "l1": l1.detach(), "ssim": dissimilarity.detach()}
