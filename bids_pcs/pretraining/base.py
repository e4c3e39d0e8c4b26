"""Registry of pre-training methods and the small pieces they share.

Usage::

    @register
    class Reconstruction(Objective):
        name = "reconstruction"
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bids_pcs.config import RecipeError
from bids_pcs.registry import Registry
from bids_pcs.training.objective import Objective

METHODS: Registry[type[Objective]] = Registry("pre-training method", "bids_pcs.pretraining")
register = METHODS.register


def available_methods() -> list[str]:
    """Names of the pre-training methods."""
    return METHODS.names()


def get_objective(method: str, options: dict[str, dict[str, Any]] | dict[str, Any] | None = None,
                  ) -> Objective:
    """A new objective for ``method``.

    Args:
        method: a name from :func:`available_methods`.
        options: either ``settings.pretrain.options`` (a table per method, of
            which the one named ``method`` is used) or the method's own table.

    Returns:
        The objective; call ``objective.setup(network)`` before training.
    """
    cls = METHODS.get(method)
    options = dict(options or {})
    if any(name in METHODS for name in options):
        options = dict(options.get(method, {}))
    return cls(options)


class PretextHead(nn.Module):
    """A 1x1x1 convolution from the decoder's features to one image channel.

    Kept small on purpose: the pretext task should be solved by the transferable
    backbone, not by this head that fine-tuning throws away.

    Args:
        in_channels: ``network.feature_channels``.
        out_channels: output channels (1: an image or a noise estimate).

    Example::

        head = PretextHead(network.feature_channels)
        image_estimate = head(network(crops, heads=False)["features"])
    """

    def __init__(self, in_channels: int, out_channels: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.conv(features)


def random_block_mask(shape: torch.Size | tuple[int, ...], block: int, ratio: float,
                      device: torch.device) -> torch.Tensor:
    """Boolean mask (B, 1, X, Y, Z), true on hidden cubes of side ``block`` voxels.

    Each cube of a regular grid is hidden with probability ``ratio`` (drawn from
    torch's global generator, which the engine seeds per epoch).
    """
    batch, _, *spatial = shape
    grid = [-(-s // block) for s in spatial]  # ceil division
    hidden = torch.rand((batch, 1, *grid), device=device) < ratio
    for axis, _side in enumerate(spatial):
        hidden = hidden.repeat_interleave(block, dim=axis + 2)
    return hidden[(slice(None), slice(None), *(slice(0, s) for s in spatial))]


def check_unit_interval(name: str, value: float) -> float:
    """Refuse an option outside [0, 1] with one sentence."""
    if not 0.0 <= float(value) <= 1.0:
        raise RecipeError(f"Pre-training option {name} must lie in [0, 1], not {value}.")
    return float(value)
