"""Predictions on labelled crops and their scores (with :mod:`bids_pcs.metrics`).

Used every epoch on the validation crops (to keep the best epoch), and by the
study on held-out crops.  A crop's predicted mask is ``p(PCS) > threshold``
(softmax of the two voxel logits); its predicted class the most probable one.

Scores (prefixed, e.g. ``val_dice``), on the crop grid, from
:func:`bids_pcs.metrics.hemisphere_scores`, each with its count (``_n``):

- ``dice``: mean Dice over the crops whose target has a sulcus (a crop
  without one would score a free 1 for an empty prediction, and a model that
  never finds a sulcus would look good on a cohort with many absent ones);
- ``presence_balanced_accuracy``, ``presence_sensitivity``,
  ``presence_specificity``, ``presence_auc``, ``presence_accuracy``,
  ``accuracy_3class``, ``balanced_accuracy_3class``, ``macro_f1_3class``
  (class scores over the crops whose class is known);
- ``n_masks``, ``n_classes``: crops with a mask and crops with a known class
  (a crop of an image labelled by class only has no mask and no mask score);
- ``score``: the mean of ``dice`` and ``presence_balanced_accuracy`` (either
  alone where the other is undefined, e.g. no validation crop with a
  sulcus): both tasks weigh the same and neither rewards predicting the
  majority. The best epoch maximises it.

No HD95 here: best-epoch selection does not use it, and its distance
transforms would cost SciPy time every epoch. The study measures HD95 on the
native grid, in millimetres, once per test set (:mod:`bids_pcs.study.native`).

Usage::

    predictions = predict_crops(network, labelled.crops, batch_size=2, device=device)
    scores = score_predictions(predictions, labelled, prefix="val_")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from bids_pcs import metrics
from bids_pcs.finetuning.data import NO_CLASS, LabelledCrops
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


SCORE_DEFINITION = ("mean of val_dice (crops whose target has a sulcus) and "
                    "val_presence_balanced_accuracy (all crops), on the crop grid")
SCORE_KEYS: tuple[str, ...] = (
    "dice", "presence_balanced_accuracy", "presence_sensitivity", "presence_specificity",
    "presence_auc", "presence_accuracy", "accuracy_3class", "balanced_accuracy_3class",
    "macro_f1_3class")


def score_predictions(predictions: CropPredictions, labelled: LabelledCrops, *,
                      prefix: str = "val_") -> dict[str, float]:
    """Mask and class scores of ``predictions`` against the targets of ``labelled``.

    Mask scores use the crops with a mask, class scores the crops with a known
    class (``NO_CLASS`` otherwise); a score over none is ``nan``.
    """
    truth_masks = labelled.crops.targets["segmentation"].numpy().astype(bool)
    truth_classes = labelled.crops.targets["classification"].numpy()
    dices = [metrics.dice(p, t) for p, t in zip(predictions.masks, truth_masks, strict=True)]
    has_mask = labelled.crops.targets["has_mask"].numpy().astype(bool)
    scores = metrics.hemisphere_scores(
        truth_classes, predictions.probabilities, dice=dices,
        hd95_mm=np.full(len(dices), np.nan), true_voxels=truth_masks.reshape(
            len(dices), -1).sum(axis=1), has_mask=has_mask).as_dict()
    out = {key: scores[key] for key in SCORE_KEYS}
    out.update({f"{key}_n": scores[f"{key}_n"] for key in ("dice", "presence_balanced_accuracy")})
    out.update(n_masks=int(has_mask.sum()), n_classes=int((truth_classes != NO_CLASS).sum()))
    terms = [v for v in (out["dice"], out["presence_balanced_accuracy"]) if np.isfinite(v)]
    out["score"] = float(np.mean(terms)) if terms else float("nan")
    return {f"{prefix}{key}": float(value) for key, value in out.items()}


def make_evaluator(labelled: LabelledCrops, *, batch_size: int, device: torch.device,
                   threshold: float = 0.5, prefix: str = "val_", crops: CropSet | None = None,
                   ) -> Callable[[nn.Module], dict[str, float]]:
    """The engine's per-epoch ``evaluate`` hook on ``labelled`` (moved to ``device`` once).

    ``crops``: ``labelled.crops`` with the frozen part's kept outputs
    (:func:`~bids_pcs.finetuning.frozen_outputs.cache_frozen_outputs`), if any.
    """
    on_device = (crops if crops is not None else labelled.crops).to(device)

    def evaluate(network: nn.Module) -> dict[str, float]:
        predictions = predict_crops(network, on_device, batch_size=batch_size, device=device,
                                    threshold=threshold)
        return score_predictions(predictions, labelled, prefix=prefix)

    return evaluate
