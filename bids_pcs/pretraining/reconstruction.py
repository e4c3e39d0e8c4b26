"""Masked-volume reconstruction: hide random 3D blocks, restore them (a 3D masked auto-encoder).

Loss: L1 plus ``ssim_weight`` x (1 - SSIM) between the restored and the
original crop, **over the hidden voxels**
(:func:`~bids_pcs.pretraining.losses.masked_restoration_loss`): the network's
full-resolution skip connection can copy every visible voxel, so a loss over
the whole crop would be about half trivial.  SSIM uses a separable Gaussian
window (:class:`~bids_pcs.pretraining.losses.SeparableSSIM`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from bids_pcs.pretraining.base import PretextHead, check_unit_interval, random_block_mask, register
from bids_pcs.pretraining.losses import SeparableSSIM, masked_restoration_loss
from bids_pcs.training.objective import Batch, Objective


@register
class Reconstruction(Objective):
    """Masked-volume reconstruction (a masked auto-encoder on 3D blocks).

    Options:
        mask_ratio: fraction of blocks hidden per crop.
        block_size: side of a hidden block in voxels.
        ssim_weight: weight of the SSIM term next to L1.
        data_range: intensity range of the normalised crops (for SSIM).
        ssim_window: SSIM window side in voxels (Gaussian, sigma 1.5 voxels).
        visible_weight: weight of a visible voxel in the loss relative to a
            hidden one (0: the loss sees the hidden voxels only).

    Example::

        objective = Reconstruction({"mask_ratio": 0.5})
        objective.setup(network)
        objective.losses({"image": crops}, network, "main")["loss"].backward()
    """

    name: ClassVar[str] = "reconstruction"
    defaults: ClassVar[dict[str, Any]] = {
        "mask_ratio": 0.5,
        "block_size": 8,
        "ssim_weight": 1.0,
        "data_range": 1.0,
        "ssim_window": 7,
        "visible_weight": 0.0,
    }

    def setup(self, network: nn.Module) -> None:
        check_unit_interval("reconstruction.mask_ratio", self.options["mask_ratio"])
        check_unit_interval("reconstruction.visible_weight", self.options["visible_weight"])
        self.head = PretextHead(network.feature_channels)
        self.ssim = SeparableSSIM(window=int(self.options["ssim_window"]),
                                  data_range=float(self.options["data_range"]))

    def losses(self, batch: Batch, network: nn.Module, phase: str) -> dict[str, torch.Tensor]:
        image = batch["image"]
        hidden = random_block_mask(image.shape, int(self.options["block_size"]),
                                   float(self.options["mask_ratio"]), image.device)
        masked = image.masked_fill(hidden, 0.0)
        restored = self.head(network(masked, heads=False)["features"])
        return masked_restoration_loss(restored, image, hidden, self.ssim,
                                       ssim_weight=float(self.options["ssim_weight"]),
                                       visible_weight=float(self.options["visible_weight"]))
