"""One hemisphere's call: the reported class, the network's class, and how sure both are.

**Class and length never contradict each other silently.** The network
gives two answers about a hemisphere: a class from its classification head
and a mask, whose length along the sulcus gives a class with the protocol's
thresholds (Yücel et al. 2001: absent below ``present_min_mm``, prominent
above ``prominent_min_mm``). The rule (``[inference] class_rule``):

- ``"length"``: the reported class (``pcs_class``) is the class of the
  measured length; the protocol defines the classes by length, and the mask
  is what a reader can check on the slices;
- ``"network"``: the reported class is the classification head's;
- ``"auto"`` (default): ``"length"`` when the model learnt segmentation
  from masks (its card's ``training_data.n_crops_with_mask`` > 0), else
  ``"network"``: a model trained on class labels alone has no trained mask,
  so no length is reported at all.

Either way both classes are written (``pcs_class_network``,
``pcs_class_length``) with the head's probabilities, and ``class_agreement``
is ``false`` where they differ; the participant report flags it and the group
level puts it in the review queue.

**Uncertainty**, per hemisphere, from what one forward pass already gives:

- ``class_entropy``: entropy of the class probabilities divided by
  ``log(K)`` (K classes): 0 for a one-hot answer, 1 for a uniform one;
- ``mask_uncertainty``: of the voxels that might be PCS (P > 0.25), the share
  the network is unsure about (P <= 0.75); 0 for a crisp mask and for a
  confidently empty crop;
- ``flip_agreement`` (only with flip test-time augmentation, which runs the
  x-flipped crops in the same batch): Dice between the masks predicted on the
  crop and on its mirror image (flipped back); 1 when both agree, ``None``
  without TTA. Both masks empty counts as agreement.

Usage::

    rule = class_rule(settings.inference.class_rule, card)         # "length" | "network"
    call = hemisphere_call(rule, probabilities, length_mm, settings.labels)
    call.pcs_class, call.network_class, call.length_class, call.agreement
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_pcs.config import LabelSettings

RULE_LENGTH = "length"
RULE_NETWORK = "network"
UNSURE_LOW, UNSURE_HIGH = 0.25, 0.75  # voxel probabilities between them are "unsure"


@dataclass(frozen=True)
class HemisphereCall:
    """The classes of one hemisphere under the class rule.

    Args:
        pcs_class: the reported class.
        network_class: the classification head's most probable class.
        length_class: the class of the measured length (``None``: no trained mask).
        agreement: whether the two agree (``None`` when there is no length class).
        rule: ``"length"`` or ``"network"``.
    """

    pcs_class: str
    network_class: str
    length_class: str | None
    agreement: bool | None
    rule: str


def segmentation_trained(card: dict[str, Any]) -> bool:
    """Whether the model learnt segmentation: any training crop had a mask.

    Cards written before masks became optional have no count: every crop had a mask.
    """
    count = (card.get("training_data") or {}).get("n_crops_with_mask")
    return True if count is None else int(count) > 0


def class_rule(setting: str, card: dict[str, Any]) -> str:
    """The rule in force: ``"length"`` or ``"network"`` (``"auto"`` resolved with the card)."""
    if setting == "auto":
        return RULE_LENGTH if segmentation_trained(card) else RULE_NETWORK
    if setting not in (RULE_LENGTH, RULE_NETWORK):
        raise ValueError(f"unknown class rule {setting!r}")
    return setting


def hemisphere_call(rule: str, probabilities: np.ndarray, length_mm: float | None,
                    labels: LabelSettings) -> HemisphereCall:
    """Reported, network and length classes of one hemisphere (see the module doc).

    Args:
        rule: ``"length"`` or ``"network"`` (from :func:`class_rule`).
        probabilities: the head's class probabilities, in ``labels.classes`` order.
        length_mm: the measured length of the mask; ``None`` when the model has
            no trained mask (then the rule falls back to the network).
    """
    network_class = labels.classes[int(np.argmax(probabilities))]
    if length_mm is None or not math.isfinite(length_mm):
        return HemisphereCall(network_class, network_class, None, None, RULE_NETWORK)
    length_class = labels.class_from_length(length_mm)
    reported = length_class if rule == RULE_LENGTH else network_class
    return HemisphereCall(reported, network_class, length_class, length_class == network_class,
                          rule)


def class_entropy(probabilities: np.ndarray) -> float:
    """Entropy of class probabilities over ``log(K)``: 0 certain, 1 uniform."""
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 0.0, 1.0)
    total = p.sum()
    if p.size < 2 or total <= 0:
        return float("nan")
    p = p / total
    nonzero = p[p > 0]
    return float(-(nonzero * np.log(nonzero)).sum() / math.log(p.size))


def mask_uncertainty(pcs_probability: np.ndarray) -> float:
    """Share of the candidate PCS voxels (P > 0.25) whose P is at most 0.75; 0 without any."""
    p = np.asarray(pcs_probability)
    candidate = p > UNSURE_LOW
    n = int(candidate.sum())
    if n == 0:
        return 0.0
    return float((candidate & (p <= UNSURE_HIGH)).sum() / n)


def mask_agreement(first: np.ndarray, second: np.ndarray) -> float:
    """Dice of two boolean masks; 1 when both are empty."""
    a, b = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(a, b).sum() / total)
