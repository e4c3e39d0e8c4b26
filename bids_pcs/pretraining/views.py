"""Random views of a batch of crops, made in one pass on the training device in float32.

A view is a random sub-box of the crop (each side ``crop_fraction`` to 1 of the
crop's, anywhere inside it) resampled back to the crop's shape, slightly
rotated; then a random gamma, intensity scale and shift, Gaussian blur and
Gaussian noise.  Every step is a batched tensor operation (one
``affine_grid`` + ``grid_sample`` for the geometry, a grouped separable
convolution for the per-crop blur), drawn from torch's generator on the
crops' device (which the engine seeds every epoch): no per-crop Python loop,
no NumPy, no float64.

Usage::

    views = RandomViews(crop_fraction=0.7, rotate_degrees=10.0, noise_std=0.05)
    first, second = views(crops), views(crops)     # (B, 1, X, Y, Z) each
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bids_pcs.config import RecipeError


def rotation_matrices(angles: torch.Tensor) -> torch.Tensor:
    """(B, 3, 3) rotations from (B, 3) angles in radians about the three axes."""
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(cos[:, 0]), torch.zeros_like(cos[:, 0])

    def stack(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)

    about_x = stack([[one, zero, zero], [zero, cos[:, 0], -sin[:, 0]],
                     [zero, sin[:, 0], cos[:, 0]]])
    about_y = stack([[cos[:, 1], zero, sin[:, 1]], [zero, one, zero],
                     [-sin[:, 1], zero, cos[:, 1]]])
    about_z = stack([[cos[:, 2], -sin[:, 2], zero], [sin[:, 2], cos[:, 2], zero],
                     [zero, zero, one]])
    return about_z @ about_y @ about_x


@dataclass(frozen=True)
class RandomViews:
    """Random crop-and-resample, rotation and intensity changes of every crop of a batch.

    Args:
        crop_fraction: smallest side of the sampled sub-box, as a fraction of the
            crop's side (1: no cropping, the whole crop is always seen).
        rotate_degrees: largest rotation about each axis.
        gamma: largest contrast gamma (drawn log-uniformly in [1/gamma, gamma]).
        intensity_scale: largest relative intensity scaling.
        intensity_shift: largest intensity shift (crop units).
        blur_probability: chance that a view is blurred.
        blur_sigma: largest blur standard deviation in voxels (drawn from [0.5, it]).
        noise_std: largest standard deviation of the added Gaussian noise.

    Example::

        views = RandomViews()
        view = views(torch.rand(4, 1, 32, 96, 64))
    """

    crop_fraction: float = 0.7
    rotate_degrees: float = 10.0
    gamma: float = 1.5
    intensity_scale: float = 0.1
    intensity_shift: float = 0.1
    blur_probability: float = 0.3
    blur_sigma: float = 1.0
    noise_std: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_fraction <= 1.0:
            raise RecipeError(f"Pre-training option contrastive.crop_fraction must lie in (0, 1], "
                              f"not {self.crop_fraction}.")
        if self.gamma < 1.0:
            raise RecipeError(f"Pre-training option contrastive.gamma must be at least 1, "
                              f"not {self.gamma}.")

    def __call__(self, crops: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(device_type=crops.device.type, enabled=False):
            views = self.geometry(crops.float())
            views = self.intensity(views)
        return views.to(crops.dtype)

    def _uniform(self, shape: tuple[int, ...], low: float, high: float,
                 device: torch.device) -> torch.Tensor:
        return torch.rand(shape, device=device) * (high - low) + low

    def geometry(self, crops: torch.Tensor) -> torch.Tensor:
        """A random rotated sub-box of each crop, resampled to the crop's shape (trilinear)."""
        batch, device = crops.shape[0], crops.device
        # affine_grid's (x, y, z) address the tensor's last three axes in reverse order;
        # sides and translations are drawn per axis, so the order does not matter
        sides = self._uniform((batch, 3), self.crop_fraction, 1.0, device)
        shift = (torch.rand((batch, 3), device=device) * 2 - 1) * (1 - sides)
        radians = math.radians(self.rotate_degrees)
        rotation = rotation_matrices(self._uniform((batch, 3), -radians, radians, device))
        theta = torch.cat([rotation * sides[:, None, :], shift[:, :, None]], dim=2)
        grid = nn.functional.affine_grid(theta, list(crops.shape), align_corners=False)
        return nn.functional.grid_sample(crops, grid, mode="bilinear", padding_mode="border",
                                         align_corners=False)

    def intensity(self, views: torch.Tensor) -> torch.Tensor:
        """Gamma, scale and shift, blur and noise, each drawn per view."""
        batch, device = views.shape[0], views.device
        per_view = (batch, 1, 1, 1, 1)
        # gamma on the view's own [min, max], as MONAI's RandAdjustContrast
        low = views.amin(dim=(2, 3, 4), keepdim=True)
        span = (views.amax(dim=(2, 3, 4), keepdim=True) - low).clamp_min(1e-6)
        log_gamma = self._uniform(per_view, -math.log(self.gamma), math.log(self.gamma), device)
        views = ((views - low) / span).clamp(0.0, 1.0) ** log_gamma.exp() * span + low
        scale = 1 + self._uniform(per_view, -self.intensity_scale, self.intensity_scale, device)
        shift = self._uniform(per_view, -self.intensity_shift, self.intensity_shift, device)
        views = views * scale + shift
        if self.blur_probability > 0:
            views = self.blur(views)
        if self.noise_std > 0:
            std = torch.rand(per_view, device=device) * self.noise_std
            views = views + std * torch.randn_like(views)
        return views

    def blur(self, views: torch.Tensor) -> torch.Tensor:
        """Gaussian blur of a random subset of views (a grouped separable convolution)."""
        batch, device = views.shape[0], views.device
        radius = max(1, math.ceil(3 * self.blur_sigma))
        sigma = self._uniform((batch,), 0.5, max(self.blur_sigma, 0.5), device)
        offsets = torch.arange(-radius, radius + 1, device=device, dtype=views.dtype)
        taps = torch.exp(-0.5 * (offsets[None] / sigma[:, None]) ** 2)
        taps = taps / taps.sum(dim=1, keepdim=True)
        keep = torch.rand((batch,), device=device) >= self.blur_probability
        identity = (offsets == 0).to(views.dtype)
        taps = torch.where(keep[:, None], identity[None], taps)  # unblurred views: a delta
        # the views become the channels of one volume: one grouped convolution per axis
        out = views.transpose(0, 1)
        out = nn.functional.pad(out, (radius,) * 6, mode="replicate")
        for axis in range(3):
            shape = [1, 1, 1]
            shape[axis] = taps.shape[1]
            out = nn.functional.conv3d(out, taps.view(batch, 1, *shape), groups=batch)
        return out.transpose(0, 1)
