"""The class rule (class vs length) and the per-hemisphere uncertainty measures."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bids_pcs.config import LabelSettings
from bids_pcs.inference.calls import (
    class_entropy,
    class_rule,
    hemisphere_call,
    mask_agreement,
    mask_uncertainty,
    segmentation_trained,
)

THREE = LabelSettings()
BINARY = LabelSettings(classes=("absent", "present"))


@pytest.mark.parametrize("setting, card, rule", [
    ("auto", {"training_data": {"n_crops_with_mask": 12}}, "length"),
    ("auto", {"training_data": {"n_crops_with_mask": 0}}, "network"),
    ("auto", {"training_data": {}}, "length"),  # cards from before masks were optional
    ("network", {"training_data": {"n_crops_with_mask": 12}}, "network"),
    ("length", {"training_data": {"n_crops_with_mask": 0}}, "length"),
])
def test_the_rule_follows_the_setting_and_whether_the_model_learnt_masks(setting, card, rule):
    assert class_rule(setting, card) == rule
    assert segmentation_trained(card) == (card["training_data"].get("n_crops_with_mask",
                                                                     1) > 0)


def test_the_reported_class_follows_the_length_and_a_disagreement_is_said():
    # the cases of issue 13: "absent" with a 32 mm mask, "present" at 12.5 mm
    absent_head = np.array([0.7, 0.2, 0.1])
    call = hemisphere_call("length", absent_head, 32.0, THREE)
    assert (call.pcs_class, call.network_class, call.length_class) == (
        "present", "absent", "present")
    assert call.agreement is False
    call = hemisphere_call("length", np.array([0.1, 0.8, 0.1]), 12.5, THREE)
    assert call.pcs_class == "absent" and call.agreement is False
    call = hemisphere_call("network", np.array([0.1, 0.8, 0.1]), 12.5, THREE)
    assert call.pcs_class == "present" and call.agreement is False
    assert hemisphere_call("length", np.array([0.1, 0.1, 0.8]), 45.0, THREE).agreement
    # no trained mask: no length class, the head's class, nothing to disagree with
    call = hemisphere_call("length", np.array([0.2, 0.8]), None, BINARY)
    assert (call.pcs_class, call.length_class, call.agreement, call.rule) == (
        "present", None, None, "network")
    # binary: 45 mm is present, not prominent
    assert hemisphere_call("length", np.array([0.9, 0.1]), 45.0, BINARY).pcs_class == "present"


def test_class_entropy_is_normalised():
    assert class_entropy(np.array([1.0, 0.0, 0.0])) == 0.0
    assert class_entropy(np.array([1 / 3] * 3)) == pytest.approx(1.0)
    assert class_entropy(np.array([0.5, 0.5])) == pytest.approx(1.0)
    expected = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2)) / math.log(3)
    assert class_entropy(np.array([0.8, 0.2, 0.0])) == pytest.approx(expected)
    assert class_entropy(np.array([0.5, 0.45, 0.05])) > class_entropy(np.array([0.9, 0.05,
                                                                              0.05]))


def test_mask_uncertainty_counts_unsure_candidate_voxels():
    crisp = np.zeros((4, 4, 4))
    crisp[1:3, 1:3, 1:3] = 0.97
    assert mask_uncertainty(crisp) == 0.0
    assert mask_uncertainty(np.full((4, 4, 4), 0.02)) == 0.0  # confidently empty
    fuzzy = crisp.copy()
    fuzzy[0, :, :] = 0.5  # 16 unsure voxels beside 8 sure ones
    assert mask_uncertainty(fuzzy) == pytest.approx(16 / 24)


def test_mask_agreement_is_dice_and_empty_pairs_agree():
    a = np.zeros(10, dtype=bool)
    b = a.copy()
    assert mask_agreement(a, b) == 1.0
    a[:4], b[2:6] = True, True
    assert mask_agreement(a, b) == pytest.approx(2 * 2 / 8)
    assert mask_agreement(a, np.zeros(10, dtype=bool)) == 0.0
