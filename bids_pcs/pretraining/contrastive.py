"""Contrastive learning: two augmented views per crop, NT-Xent over the whole batch.

Each crop yields two views through MONAI random transforms; the encoder's
multi-scale features (skips and bottleneck, each average-pooled onto a coarse grid) pass through a
projection head; ``monai.losses.ContrastiveLoss`` (SimCLR's NT-Xent) pulls the
two views of a crop together and pushes every other crop of the batch (and its
views) away.  Only the encoder learns: the decoder gets no signal from a global
embedding.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from monai.losses import ContrastiveLoss
from monai.transforms import (
    Compose,
    RandAdjustContrast,
    RandAffine,
    RandCoarseDropout,
    RandGaussianNoise,
    RandGaussianSmooth,
    RandScaleIntensity,
    RandShiftIntensity,
)
from monai.utils import convert_to_tensor
from torch import nn

from bids_pcs.pretraining.base import register
from bids_pcs.training.objective import Batch, Objective


def make_view_transform(rotate_degrees: float, scale: float, noise_std: float,
                        dropout_holes: int, dropout_size: int) -> Compose:
    """The random transforms that turn one crop (C, X, Y, Z) into one view."""
    radians = rotate_degrees * torch.pi / 180.0
    dropout = ([RandCoarseDropout(holes=dropout_holes, spatial_size=dropout_size,
                                  max_spatial_size=2 * dropout_size, prob=0.5)]
               if dropout_holes > 0 else [])
    return Compose([
        RandAffine(prob=0.8, rotate_range=(radians,) * 3, scale_range=(scale,) * 3,
                   padding_mode="border"),
        RandAdjustContrast(prob=0.8, gamma=(0.7, 1.5)),
        RandScaleIntensity(prob=0.5, factors=0.1),
        RandShiftIntensity(prob=0.5, offsets=0.1),
        RandGaussianSmooth(prob=0.3, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0)),
        RandGaussianNoise(prob=0.8, std=noise_std),
        *dropout,
    ])


@register
class Contrastive(Objective):
    """SimCLR-style contrastive pre-training of the encoder.

    Options:
        temperature: NT-Xent temperature.
        projection_dim: size of the embedding the loss compares.
        hidden_dim: hidden width of the projection head.
        rotate_degrees: largest rotation of a view, per axis.
        scale: largest relative zoom of a view.
        noise_std: standard deviation of the added Gaussian noise.
        dropout_holes: cuboids blanked per view (0: none).
        dropout_size: smallest side of a blanked cuboid in voxels (largest: twice).
        pool_grid: each encoder scale is average-pooled to a grid of this side.

    Example::

        objective = Contrastive({"temperature": 0.5})
        objective.setup(network)
        loss = objective.losses({"image": crops}, network, "main")["loss"]
    """

    name: ClassVar[str] = "contrastive"
    defaults: ClassVar[dict[str, Any]] = {
        "temperature": 0.2,
        "projection_dim": 128,
        "hidden_dim": 512,
        "rotate_degrees": 10.0,
        "scale": 0.1,
        "noise_std": 0.05,
        "dropout_holes": 4,
        "dropout_size": 6,
        "pool_grid": 2,
    }

    def setup(self, network: nn.Module) -> None:
        # each scale is average-pooled onto a coarse grid rather than to one value:
        # aligned crops share their global statistics (and instance normalisation
        # removes the rest); where structures lie is what tells crops apart
        grid = int(self.options["pool_grid"])
        channels = grid**3 * (sum(network.skip_channels) + network.bottleneck_channels)
        hidden = int(self.options["hidden_dim"])
        # batch normalisation in the projection head, as in SimCLR: it removes what
        # every crop of the batch shares, without which the embeddings of aligned
        # crops start (and stay) nearly parallel
        self.projection = nn.Sequential(
            nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, int(self.options["projection_dim"])),
        )
        self.loss_fn = ContrastiveLoss(temperature=float(self.options["temperature"]))
        self.views = make_view_transform(float(self.options["rotate_degrees"]),
                                         float(self.options["scale"]),
                                         float(self.options["noise_std"]),
                                         int(self.options["dropout_holes"]),
                                         int(self.options["dropout_size"]))

    def trainable_names(self, network: nn.Module) -> list[str]:
        return [n for n, _ in network.named_parameters() if n.startswith("encoder.")]

    def reseed(self, seed: int) -> None:
        self.views.set_random_state(seed=seed)

    def augment(self, image: torch.Tensor) -> torch.Tensor:
        """One random view of every crop of ``image`` (B, 1, X, Y, Z)."""
        with torch.no_grad(), torch.autocast(device_type=image.device.type, enabled=False):
            views = [convert_to_tensor(self.views(crop), track_meta=False) for crop in image]
        return torch.stack(views).to(image.dtype)

    def embed(self, image: torch.Tensor, network: nn.Module) -> torch.Tensor:
        """Projected multi-scale descriptor of each crop (B, projection_dim)."""
        encoded = network.encoder(image)
        grid = int(self.options["pool_grid"])
        pooled = [nn.functional.adaptive_avg_pool3d(scale.float(), grid).flatten(1)
                  for scale in (*encoded.skips, encoded.bottleneck)]
        return self.projection(torch.cat(pooled, dim=1))

    def losses(self, batch: Batch, network: nn.Module, phase: str) -> dict[str, torch.Tensor]:
        image = batch["image"]
        # both views in one pass: one forward for the whole 2B stack
        views = torch.cat([self.augment(image), self.augment(image)])
        embedding = self.embed(views, network).float()
        first, second = embedding.chunk(2)
        loss = self.loss_fn(first, second)
        agreement = torch.nn.functional.cosine_similarity(first, second).mean()
        return {"loss": loss, "view_agreement": agreement.detach()}
