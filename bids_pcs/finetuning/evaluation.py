"""Predictions on labelled crops and their scores (with :mod:`bids_pcs.metrics`).

Used every epoch on the validation crops (to keep the best epoch), and by the
study on held-out crops.  A crop's predicted mask is ``p(PCS) > threshold``
(softmax of the two voxel logits); its predicted class the most probable one.

Scores (prefixed, e.g. ``val_dice``):

- ``dice``: mean Dice over crops (a crop with neither a true nor a predicted
  PCS voxel scores 1, see :func:`bids_pcs.metrics.dice`);
- ``hd95_mm``: mean HD95 over crops where it is defined;
- ``presence_accuracy``, ``presence_balanced_accuracy``, ``accuracy_3class``;
- ``score``: ``(w_seg x dice + w_cls x presence_accuracy) / (w_seg + w_cls)``
  with the loss weights of ``[finetune]``; the best epoch maximises it.

Usage::

    predictions = predict_crops(network, labelled.crops, batch_size=2, device=device)
    scores = score_predictions(predictions, labelled, weights=(0.8, 0.2), prefix="test_")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bids_pcs import metrics
from bids_pcs.finetuning.data import LabelledCrops
from bids_pcs.finetuning.frozen_outputs import network_outputs
from bids_pcs.training.data import CropSet


@dataclass
class CropPredictions:
    """What the network says about each crop.

    Args:
        probabilities: (N, 3) class probabilities (absent, present, prominent).
        masks: (N, X, Y, Z) boolean PCS masks on the crop grid.
        pcs_probability: (N, X, Y, Z) float16 voxel probabilities of PCS, when kept.
    """

    probabilities: np.ndarray
    masks: np.ndarray
    pcs_probability: np.ndarray | None = None


def predict_crops(network: nn.Module, crops: CropSet, *, batch_size: int = 2,
                  device: torch.device | None = None, threshold: float = 0.5,
                  keep_probability: bool = False) -> CropPredictions:
    """Run ``network`` on every crop (eval mode, no gradients; its mode is restored after)."""
    device = device or next(network.parameters()).device
    was_training = network.training
    network.eval()
    probabilities, masks, voxel_probs = [], [], []
    try:
        with torch.no_grad():
            for start in range(0, len(crops), batch_size):
                index = torch.arange(start, min(start + batch_size, len(crops)))
                out = network_outputs(network, crops.batch(index, device))
                p_pcs = torch.softmax(out["segmentation"].float(), dim=1)[:, 1]
                probabilities.append(torch.softmax(out["classification"].float(), dim=1).cpu())
                masks.append((p_pcs > threshold).cpu())
                if keep_probability:
                    voxel_probs.append(p_pcs.to(torch.float16).cpu())
    finally:
        network.train(was_training)
    return CropPredictions(
        probabilities=torch.cat(probabilities).numpy(),
        masks=torch.cat(masks).numpy(),
        pcs_probability=torch.cat(voxel_probs).numpy() if keep_probability else None,
    )


def score_predictions(predictions: CropPredictions, labelled: LabelledCrops, *,
                      weights: tuple[float, float] = (0.8, 0.2), prefix: str = "val_",
                      ) -> dict[str, float]:
    """Mask and class scores of ``predictions`` against the targets of ``labelled``."""
    truth_masks = labelled.crops.targets["segmentation"].numpy().astype(bool)
    truth_classes = labelled.crops.targets["classification"].numpy()
    dices = [metrics.dice(p, t) for p, t in zip(predictions.masks, truth_masks, strict=True)]
    distances = np.array([metrics.hd95(p, t) for p, t in
                          zip(predictions.masks, truth_masks, strict=True)])
    classes = metrics.classification_metrics(truth_classes, predictions.probabilities)
    dice = float(np.mean(dices))
    presence = classes.presence.accuracy
    w_seg, w_cls = weights
    scores = {
        "dice": dice,
        "hd95_mm": float(np.nanmean(distances)) if np.isfinite(distances).any() else float("nan"),
        "presence_accuracy": presence,
        "presence_balanced_accuracy": classes.presence.balanced_accuracy,
        "accuracy_3class": classes.accuracy_3class,
        "score": (w_seg * dice + w_cls * presence) / (w_seg + w_cls),
    }
    return {f"{prefix}{key}": float(value) for key, value in scores.items()}


def make_evaluator(labelled: LabelledCrops, *, batch_size: int, device: torch.device,
                   threshold: float = 0.5, weights: tuple[float, float] = (0.8, 0.2),
                   prefix: str = "val_", crops: CropSet | None = None,
                   ) -> Callable[[nn.Module], dict[str, float]]:
    """The engine's per-epoch ``evaluate`` hook on ``labelled`` (moved to ``device`` once).

    ``crops``: ``labelled.crops`` with the frozen part's kept outputs
    (:func:`~bids_pcs.finetuning.frozen_outputs.cache_frozen_outputs`), if any.
    """
    on_device = (crops if crops is not None else labelled.crops).to(device)

    def evaluate(network: nn.Module) -> dict[str, float]:
        predictions = predict_crops(network, on_device, batch_size=batch_size, device=device,
                                    threshold=threshold)
        return score_predictions(predictions, labelled, weights=weights, prefix=prefix)

    return evaluate
