"""Adversarial restoration: the backbone restores a corrupted crop, a discriminator judges it.

The crop is corrupted (random 3D blocks hidden, Gaussian noise added); the
backbone with a pretext head restores it (the generator); a MONAI
``PatchDiscriminator`` tells restored crops from real ones patch by patch.
Generator loss: ``l1_weight`` x L1 + ``adversarial_weight`` x
``PatchAdversarialLoss`` (least squares); the discriminator learns in a second
phase on the same batch, with its own optimiser (generator and discriminator
steps alternate).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from torch import nn
from torch.func import functional_call

from bids_pcs.pretraining.base import PretextHead, check_unit_interval, random_block_mask, register
from bids_pcs.training.objective import Batch, Objective


@register
class Adversarial(Objective):
    """Restoration with an adversarial (LSGAN, patch-wise) loss.

    Options:
        mask_ratio: fraction of blocks hidden by the corruption.
        block_size: side of a hidden block in voxels.
        noise_std: Gaussian noise added by the corruption.
        l1_weight: weight of the L1 restoration term.
        adversarial_weight: weight of the generator's adversarial term.
        discriminator_channels: channels of the discriminator's first layer.
        discriminator_layers: stride-2 layers of the discriminator.

    Example::

        objective = Adversarial()
        objective.setup(network)
        g = objective.losses({"image": crops}, network, "generator")
        d = objective.losses({"image": crops}, network, "discriminator")
    """

    name: ClassVar[str] = "adversarial"
    phases: ClassVar[tuple[str, ...]] = ("generator", "discriminator")
    defaults: ClassVar[dict[str, Any]] = {
        "mask_ratio": 0.3,
        "block_size": 8,
        "noise_std": 0.1,
        "l1_weight": 1.0,
        "adversarial_weight": 0.05,
        "discriminator_channels": 32,
        "discriminator_layers": 3,
    }

    def setup(self, network: nn.Module) -> None:
        check_unit_interval("adversarial.mask_ratio", self.options["mask_ratio"])
        self.head = PretextHead(network.feature_channels)
        self.discriminator = PatchDiscriminator(
            spatial_dims=3, channels=int(self.options["discriminator_channels"]),
            in_channels=1, out_channels=1, num_layers_d=int(self.options["discriminator_layers"]),
            norm="INSTANCE",
        )
        self.adversarial_loss = PatchAdversarialLoss(criterion="least_squares")
        self._restored: torch.Tensor | None = None

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        if phase == "generator":
            return list(self.head.parameters())
        return list(self.discriminator.parameters())

    def corrupt(self, image: torch.Tensor) -> torch.Tensor:
        """Hide random blocks and add noise."""
        hidden = random_block_mask(image.shape, int(self.options["block_size"]),
                                   float(self.options["mask_ratio"]), image.device)
        noisy = image + float(self.options["noise_std"]) * torch.randn_like(image)
        return noisy.masked_fill(hidden, 0.0)

    def _judge(self, image: torch.Tensor, frozen: bool) -> torch.Tensor:
        if frozen:
            # the generator's loss must not move the discriminator: call it with
            # detached weights so gradients reach the image only
            params = {k: v.detach() for k, v in self.discriminator.named_parameters()}
            params.update(dict(self.discriminator.named_buffers()))
            outputs = functional_call(self.discriminator, params, (image,))
        else:
            outputs = self.discriminator(image)
        return outputs[-1].float()

    def losses(self, batch: Batch, network: nn.Module, phase: str) -> dict[str, torch.Tensor]:
        image = batch["image"]
        if phase == "generator":
            restored = self.head(network(self.corrupt(image), heads=False)["features"]).float()
            l1 = nn.functional.l1_loss(restored, image)
            fooled = self.adversarial_loss(self._judge(restored, frozen=True),
                                           target_is_real=True, for_discriminator=False)
            self._restored = restored.detach()
            loss = float(self.options["l1_weight"]) * l1 + \
                float(self.options["adversarial_weight"]) * fooled
            return {"loss": loss, "l1": l1.detach(), "adversarial": fooled.detach()}
        restored = self._restored
        if restored is None or restored.shape != image.shape:
            with torch.no_grad():
                restored = self.head(network(self.corrupt(image), heads=False)["features"])
        self._restored = None
        scores = self._judge(torch.cat([image, restored.to(image.dtype)]), frozen=False)
        real, fake = scores.chunk(2)
        loss = 0.5 * (self.adversarial_loss(real, target_is_real=True, for_discriminator=True)
                      + self.adversarial_loss(fake, target_is_real=False, for_discriminator=True))
        return {"loss": loss}
