"""Labels without masks or without classes: the objective, the priors and the scores."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from finetune_helpers import labelled_crops, tiny_network, tiny_settings

from bids_pcs.finetuning import finetune, get_strategy, init_network
from bids_pcs.finetuning.data import NO_CLASS, LabelledCrops
from bids_pcs.finetuning.evaluation import CropPredictions, score_predictions
from bids_pcs.finetuning.objective import SupervisedObjective
from bids_pcs.finetuning.train import init_heads_from_prior


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def without(labelled: LabelledCrops, *, masks: list[int] = (), classes: list[int] = ()
            ) -> LabelledCrops:
    """``labelled`` with the masks of crops ``masks`` and the classes of ``classes`` unknown."""
    info = list(labelled.info)
    targets = {k: v.clone() for k, v in labelled.crops.targets.items()}
    for k in masks:
        info[k] = dataclasses.replace(info[k], has_mask=False, pcs_voxels=0)
        targets["segmentation"][k] = 0
    for k in classes:
        info[k] = dataclasses.replace(info[k], pcs_class=None, class_source=None)
        targets["classification"][k] = NO_CLASS
    crops = dataclasses.replace(labelled.crops, targets=targets)
    return LabelledCrops(crops, info)


def _objective(network):
    objective = SupervisedObjective(get_strategy("full"), tiny_settings().finetune)
    objective.setup(network)
    return objective


def test_crops_without_a_mask_do_not_touch_the_segmentation_loss():
    labelled = labelled_crops(4)
    network = tiny_network()
    objective = _objective(network)
    masked_only = labelled.crops.batch(torch.tensor([2, 3]))
    # crops 0 and 1 lose their masks; a target left in them (all PCS) must not count
    partial = without(labelled, masks=[0, 1]).crops.batch(torch.arange(4))
    partial["segmentation"][:2] = 1
    counted = {**partial, "has_mask": torch.ones(4, dtype=torch.uint8)}
    with torch.no_grad():
        seg_partial = objective.losses(partial, network, "main")["segmentation"]
        seg_masked = objective.losses(masked_only, network, "main")["segmentation"]
        seg_counted = objective.losses(counted, network, "main")["segmentation"]
    assert float(seg_partial) == pytest.approx(float(seg_masked), rel=1e-5)
    assert abs(float(seg_counted) - float(seg_partial)) > 0.1


def test_a_batch_without_masks_trains_no_segmentation_and_without_classes_no_head():
    labelled = without(labelled_crops(4), masks=[0, 1, 2, 3])
    network = tiny_network()
    objective = _objective(network)
    losses = objective.losses(labelled.crops.batch(torch.arange(4)), network, "main")
    assert float(losses["segmentation"]) == 0.0 and float(losses["classification"]) > 0
    losses["loss"].backward()
    segmentation_head = network.heads["segmentation"].conv.conv
    assert segmentation_head.weight.grad is None or not segmentation_head.weight.grad.any()
    assert network.heads["classification"].mlp[-1].weight.grad.abs().sum() > 0

    network.zero_grad(set_to_none=True)
    unclassed = without(labelled_crops(4), classes=[0, 1, 2, 3])
    losses = objective.losses(unclassed.crops.batch(torch.arange(4)), network, "main")
    assert float(losses["classification"]) == 0.0 and float(losses["segmentation"]) > 0
    losses["loss"].backward()
    grad = network.heads["classification"].mlp[-1].weight.grad
    assert grad is None or not grad.any()


def test_priors_and_scores_use_only_what_each_crop_has():
    labelled = without(labelled_crops(8), masks=[1, 3, 5], classes=[0])
    network = tiny_network()
    prior = init_heads_from_prior(network, labelled)
    masks = labelled.crops.targets["segmentation"][[0, 2, 4, 6, 7]]
    assert prior["pcs_voxel_fraction"] == pytest.approx(float(masks.float().mean()))
    # classes known: crops 1..7 -> absent 2, 4, 6 (3), present 1, 3, 5, 7 (4); add-one smoothed
    assert prior["class_frequencies"][:2] == pytest.approx([4 / 10, 5 / 10])
    summary = labelled.summary()
    assert summary["n_crops_with_mask"] == 5 and summary["n_crops_with_class"] == 7

    truth = labelled.crops.targets["segmentation"].numpy().astype(bool)
    wrong = np.zeros_like(truth)  # finds nothing: Dice 0 where the truth has a sulcus
    probabilities = np.tile([0.9, 0.05, 0.05], (8, 1))  # always absent
    scores = score_predictions(CropPredictions(probabilities, wrong), labelled, prefix="")
    assert scores["n_masks"] == 5 and scores["n_classes"] == 7
    # Dice over the masked crops with a sulcus: 7 only (1, 3, 5 lost their masks)
    assert scores["dice_n"] == 1 and scores["dice"] == pytest.approx(0.0)
    assert scores["presence_accuracy"] == pytest.approx(3 / 7)


def test_finetuning_on_classes_only_leaves_the_segmentation_head_as_initialised(tmp_path):
    labelled = without(labelled_crops(6), masks=list(range(6)))
    settings = tiny_settings(epochs=2, weight_decay=0.0)
    start, _ = init_network(settings, "scratch")
    init_heads_from_prior(start, labelled)
    result = finetune(settings, labelled, None, model_dir=tmp_path / "m", progress=False)
    data = result.card["training_data"]
    assert data["n_crops_with_mask"] == 0 and data["n_crops_with_class"] == 6
    assert all(row["segmentation"] == 0.0 for row in result.train.history)
    before, after = start.state_dict(), result.network.state_dict()
    for name in after:
        moved = not torch.equal(before[name], after[name])
        # no mask: zero segmentation gradients, so the voxel head never moves; the class head does
        assert moved == (not name.startswith("heads.segmentation")) or \
            not name.startswith("heads."), name
    assert any(not torch.equal(before[n], after[n]) for n in after
               if n.startswith("heads.classification"))


def test_study_rows_score_masks_only_where_an_image_has_one():
    """Rows as the native scorer writes them: a class-only image has no mask scores."""
    from bids_pcs.study.scoring import ScoredRuns

    rows = []
    for k in range(8):
        present = k % 2 == 1
        masked = k < 4
        rows.append({
            "crop": f"sub-{k:02d}_hemi-L", "participant": f"{k:02d}",
            "true_class": None if k == 6 else ("present" if present else "absent"),
            "probabilities": [0.2, 0.7, 0.1],  # always "present"
            "has_mask": masked, "true_voxels": (40 if present else 0) if masked else None,
            # found exactly where a mask exists; the others' figures must not count
            "dice": 1.0 if masked else 0.0, "hd95_mm": 0.5 if masked else 99.0,
        })
    scores = ScoredRuns.from_records([rows]).scores()
    assert scores["dice_n"] == 2 and scores["dice"] == pytest.approx(1.0)
    assert scores["hd95_mm"] == pytest.approx(0.5)
    # always "present": right on the odd crops 1, 3, 5, 7 of the 7 with a class
    assert scores["presence_balanced_accuracy_n"] == 7
    assert scores["presence_accuracy"] == pytest.approx(4 / 7)
