"""The network on one image's two crops: PCS voxel probabilities and class probabilities.

Both hemispheres go through the network as one batch of two (the right crop is
stored mirrored, so both look like a left hemisphere to the network), in
inference mode, on the run's device. The outputs are softmax probabilities:
per voxel P(PCS) on the crop grid, per hemisphere P(absent, present, prominent).

Flip test-time augmentation (``[inference] flip_tta``) averages these with the
prediction of the crops flipped along the crop's **x (left-right) axis**, the
flip flipped back. It is the only axis along which a mirror image is still a
plausible hemisphere: the template is symmetric, and the sagittal course of the
sulcus (anterior to the cingulate sulcus' upturn, dorsal to it, parallel to it)
is left intact; only the lateral-medial order of the voxels is reversed.
Flipping the anterior-posterior or inferior-superior axis would put the PCS
behind or below the cingulate sulcus, an anatomy the network never saw. The
networks are trained without flip augmentation, so a model may not be
invariant to the x flip; the option is off by default and recorded in every
output's metadata. With it, the flipped crops run in the same forward pass
as the originals (one batch of four), and the Dice between the two masks is
kept as each hemisphere's ``flip_agreement`` (see :mod:`bids_pcs.inference.calls`).

Usage::

    crops = {h: load_crop(item.crops[h]) for h in ("L", "R")}
    predictions = predict_hemispheres(network, crops, device=device, flip_tta=False)
    predictions["L"].pcs_probability.shape      # settings.crop.shape_vox
    predictions["R"].class_probabilities        # (3,) absent, present, prominent
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bids_pcs.config import HEMISPHERES
from bids_pcs.inference.calls import mask_agreement

# the crop's x axis (array axis 0, tensor dim 2 of (B, C, X, Y, Z)): left-right
FLIP_AXIS = 0
FLIP_DESCRIPTION = ("mean of the predictions of each crop and of the crop flipped along its "
                    "x (left-right) axis, flipped back")


@dataclass(frozen=True)
class HemispherePrediction:
    """What the network says about one hemisphere's crop.

    Args:
        pcs_probability: P(PCS) per voxel, float32, laid out like the stored crop
            (the right one mirrored).
        class_probabilities: (K,) float32 probabilities of the classes (absent,
            present[, prominent]).
        flip_agreement: Dice of the masks of the crop and of its x-flipped copy
            (flip TTA only; ``None`` without).
    """

    pcs_probability: np.ndarray
    class_probabilities: np.ndarray
    flip_agreement: float | None = None

    def pcs_class(self, classes: tuple[str, ...]) -> str:
        """The most probable class name."""
        return classes[int(np.argmax(self.class_probabilities))]


def predict_hemispheres(network: nn.Module, crops: Mapping[str, np.ndarray], *,
                        device: torch.device | None = None, flip_tta: bool = False,
                        mixed_precision: bool = False, threshold: float = 0.5,
                        ) -> dict[str, HemispherePrediction]:
    """Run ``network`` on both crops of one image as one batch (four crops with flip TTA).

    Args:
        network: a fine-tuned :class:`~bids_pcs.models.network.PcsNetwork` (put in
            eval mode here).
        crops: ``{"L": array, "R": array}``, each of the recipe's crop shape, as
            :func:`bids_pcs.io.nifti.load_crop` returns them.
        device: where to run (default: the network's device).
        flip_tta: also predict the x-flipped crops and average (see module doc);
            they go through the network in the same batch as the crops.
        mixed_precision: bf16 autocast on CUDA (ignored elsewhere); the
            probabilities are computed in float32 either way.
        threshold: the mask threshold, for the flip agreement.

    Returns:
        ``{"L": HemispherePrediction, "R": HemispherePrediction}``.
    """
    device = device or next(network.parameters()).device
    network.eval()
    batch = torch.stack([torch.as_tensor(np.asarray(crops[h], dtype=np.float32))
                         for h in HEMISPHERES])[:, None].to(device)
    dim = 2 + FLIP_AXIS
    n = batch.shape[0]
    if flip_tta:
        # one forward pass of 2n crops costs less than two of n (fewer, larger kernels)
        batch = torch.cat([batch, batch.flip(dim)])
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=mixed_precision and device.type == "cuda")
    with torch.inference_mode(), autocast:
        voxel, classes = _probabilities(network, batch)
    agreement: list[float | None] = [None] * n
    if flip_tta:
        voxel, flipped_voxel = voxel[:n], voxel[n:].flip(dim - 1)
        agreement = [mask_agreement((voxel[i] > threshold).cpu().numpy(),
                                    (flipped_voxel[i] > threshold).cpu().numpy())
                     for i in range(n)]
        voxel = (voxel + flipped_voxel) / 2
        classes = (classes[:n] + classes[n:]) / 2
    voxel_np = voxel.cpu().numpy()
    classes_np = classes.cpu().numpy()
    return {h: HemispherePrediction(pcs_probability=voxel_np[i],
                                    class_probabilities=classes_np[i],
                                    flip_agreement=agreement[i])
            for i, h in enumerate(HEMISPHERES)}


def _probabilities(network: nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, X, Y, Z) voxel P(PCS) and (B, K) class probabilities (float32) of one forward pass."""
    out = network(batch)
    voxel = torch.softmax(out["segmentation"].float(), dim=1)[:, 1]
    classes = torch.softmax(out["classification"].float(), dim=1)
    return voxel, classes
