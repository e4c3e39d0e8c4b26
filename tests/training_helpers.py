"""Small real networks and crops for the training tests (no files, no GPU).

The networks are the real :class:`~bids_pcs.models.network.PcsNetwork` classes
at their smallest useful size, so the tests exercise the code that runs in
production, only on fewer voxels and channels.
"""

from __future__ import annotations

import torch

from bids_pcs.config import ModelSettings
from bids_pcs.models.network import PcsNetwork, build_network
from bids_pcs.training.data import CropSet
from bids_pcs.training.objective import Objective

TINY_SHAPE = (16, 32, 16)  # smallest crop the CNN trains on (2-voxel bottleneck)
SWIN_SHAPE = (32, 64, 32)  # smallest crop SwinUNETR trains on

# small pretext modules so that a few dozen steps fit in seconds on two cores
TINY_OPTIONS = {
    "reconstruction": {"block_size": 4},
    # a fast-moving key encoder: tests train for a few dozen steps, not thousands
    "contrastive": {"hidden_dim": 64, "projection_dim": 32, "block_size": 4, "queue_size": 16,
                    "momentum": 0.9, "temperature": 0.5},
    "adversarial": {"discriminator_channels": 8, "discriminator_layers": 2, "block_size": 4},
    "diffusion": {"embedding_dim": 32},
}


def tiny_cnn(seed: int = 0, feature_size: int = 4) -> PcsNetwork:
    torch.manual_seed(seed)
    return build_network(ModelSettings(architecture="cnn", feature_size=feature_size), TINY_SHAPE)


def tiny_swin(seed: int = 0) -> PcsNetwork:
    torch.manual_seed(seed)
    settings = ModelSettings(architecture="swinunetr", feature_size=12, depths=(1, 1, 1, 1),
                             window_size=4)
    return build_network(settings, SWIN_SHAPE)


def smooth_crops(n: int, shape: tuple[int, int, int] = TINY_SHAPE, seed: int = 0) -> torch.Tensor:
    """(n, 1, *shape) smooth random volumes scaled to [0, 1], like normalised T1w crops."""
    generator = torch.Generator().manual_seed(seed)
    volume = torch.rand((n, 1, *shape), generator=generator)
    for _ in range(3):
        volume = torch.nn.functional.avg_pool3d(volume, 5, stride=1, padding=2,
                                                count_include_pad=False)
    low = volume.amin(dim=(2, 3, 4), keepdim=True)
    high = volume.amax(dim=(2, 3, 4), keepdim=True)
    return (volume - low) / (high - low)


def crop_set(n: int, shape: tuple[int, int, int] = TINY_SHAPE, seed: int = 0) -> CropSet:
    return CropSet(smooth_crops(n, shape, seed))


class PlainRestoration(Objective):
    """A deterministic objective (restore the crop as it is): what a sixth method looks like."""

    name = "plain-restoration"

    def setup(self, network: torch.nn.Module) -> None:
        self.head = torch.nn.Conv3d(network.feature_channels, 1, 1)

    def losses(self, batch, network, phase):
        restored = self.head(network(batch["image"], heads=False)["features"]).float()
        return {"loss": torch.nn.functional.l1_loss(restored, batch["image"])}
