"""Masked-volume reconstruction: hide random 3D blocks, restore the whole crop.

Loss: L1 plus ``ssim_weight`` x (1 - SSIM) (``monai.losses.SSIMLoss``) between
the restored crop and the original.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from monai.losses import SSIMLoss
from torch import nn

from bids_pcs.pretraining.base import PretextHead, check_unit_interval, random_block_mask, register
from bids_pcs.training.objective import Batch, Objective, float32


@register
class Reconstruction(Objective):
    """Masked-volume reconstruction (a masked auto-encoder on 3D blocks).

    Options:
        mask_ratio: fraction of blocks hidden per crop.
        block_size: side of a hidden block in voxels.
        ssim_weight: weight of the SSIM term next to L1.
        data_range: intensity range of the normalised crops (for SSIM).
        ssim_window: SSIM window side in voxels.

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
    }

    def setup(self, network: nn.Module) -> None:
        check_unit_interval("reconstruction.mask_ratio", self.options["mask_ratio"])
        self.head = PretextHead(network.feature_channels)
        self.ssim = SSIMLoss(spatial_dims=3, data_range=float(self.options["data_range"]),
                             win_size=int(self.options["ssim_window"]))

    def losses(self, batch: Batch, network: nn.Module, phase: str) -> dict[str, torch.Tensor]:
        image = batch["image"]
        hidden = random_block_mask(image.shape, int(self.options["block_size"]),
                                   float(self.options["mask_ratio"]), image.device)
        masked = image.masked_fill(hidden, 0.0)
        restored = self.head(network(masked, heads=False)["features"]).float()
        l1 = nn.functional.l1_loss(restored, image)
        with float32(image.device):
            ssim = self.ssim(restored, image.float())
        loss = l1 + float(self.options["ssim_weight"]) * ssim
        return {"loss": loss, "l1": l1.detach(), "ssim": ssim.detach()}
