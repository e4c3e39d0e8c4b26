"""`bids_pcs ... finetune` end to end on a synthetic cohort, and a model that really learns.

One module-scoped cohort (4 participants on the MNI anatomy) is preprocessed
once with the ``tiny-cpu-2mm`` recipe (registration runs for real); the CLI run
then finds the crops done and only fine-tunes.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import run_cli

from bids_pcs.config import HEMISPHERES, load_settings
from bids_pcs.finetuning import finetune, load_labelled_crops, predict_crops
from bids_pcs.io.bids_input import collect_t1w
from bids_pcs.io.derivatives import init_derivatives
from bids_pcs.io.labels import find_dseg, read_labels
from bids_pcs.metrics import dice
from bids_pcs.models.model_io import load_model, read_model_card
from bids_pcs.synth import SynthOptions, make_cohort

RECIPE = "tiny-cpu-2mm"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """(bids_dir, labels_dir, output_dir with every image preprocessed, settings)."""
    torch.set_num_threads(2)
    from bids_pcs.preprocess import preprocess_images

    root = tmp_path_factory.mktemp("finetune")
    summary = make_cohort(root / "bids", 4, seed=0, options=SynthOptions.from_preset(
        "easy", anatomy=("MNI152NLin2009aSym",), figure=False))
    output_dir = root / "out"
    settings = load_settings(RECIPE, overrides={"run": {
        "bids_dir": str(summary.bids_dir), "output_dir": str(output_dir),
        "work_dir": str(root / "work"), "omp_nthreads": 2, "device": "cpu",
        "labels": str(summary.labels_dir)}})
    init_derivatives(output_dir, summary.bids_dir)
    results = preprocess_images(settings, collect_t1w(summary.bids_dir))
    assert all(r.qc_passed for r in results)
    return summary.bids_dir, summary.labels_dir, output_dir, settings


@pytest.mark.slow
def test_finetune_level_via_the_cli_writes_a_loadable_model(cohort, tmp_path):
    bids_dir, labels_dir, output_dir, _ = cohort
    # one image without a label: skipped and recorded, not an error
    labels = tmp_path / "labels"
    shutil.copytree(labels_dir, labels)
    image = next(im for im in collect_t1w(bids_dir) if im.subject == "04")
    find_dseg(labels, image).unlink()

    done = run_cli(bids_dir, output_dir, "finetune", "--init", "scratch", "--strategy", "lora",
                   "--labels", labels, "--recipe", RECIPE, "--set", "finetune.epochs=2",
                   "--skip-bids-validation", "-w", tmp_path / "work", "--omp-nthreads", "2",
                   "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]

    model_dir = output_dir / "models" / "finetune-scratch-lora"
    assert {p.name for p in model_dir.iterdir()} == {
        "model.safetensors", "model.json", "training_log.tsv", "loss_curve.png",
        "validation_curve.png"}
    card = read_model_card(model_dir)
    assert (card["stage"], card["method"], card["strategy"]) == ("finetune", "scratch", "lora")
    rule = card["finetuning"]["strategy"]
    assert rule["name"] == "lora" and "merged" in rule["definition"]
    assert 0 < rule["trainable_parameters"] < rule["base_parameters"]
    assert card["training_data"]["skipped"]["unlabelled"] == ["sub-04"]
    assert card["training_data"]["n_participants"] + card["training_data"]["validation"][
        "n_participants"] == 3
    assert card["training"]["epochs"] == 2
    assert {"val_dice", "val_dice_n", "val_presence_balanced_accuracy", "val_score"} <= set(
        card["metrics"])
    assert card["finetuning"]["monitor_definition"].startswith("mean of val_dice")
    log = (model_dir / "training_log.tsv").read_text().splitlines()
    assert len(log) == 3 and "val_dice" in log[0].split("\t")
    network, _ = load_model(model_dir)  # no peft needed: adapters were merged
    assert not any("lora" in k for k in network.state_dict())
    assert (tmp_path / "work" / "finetune" / "finetune-scratch-lora" / "checkpoint.json").is_file()
    config_dumps = list((output_dir / "logs").glob("*finetune*"))
    assert config_dumps, "the run's config dump is missing"
    json.dumps(card)  # the card is plain JSON


@pytest.mark.slow
def test_a_briefly_finetuned_model_finds_the_labelled_sulcus(cohort):
    """Learning test: fitted to the 8 crops, masks land on the labels (Dice, centre of mass)."""
    bids_dir, labels_dir, _, settings = cohort
    from bids_pcs.preprocess import load_preprocessed

    images = collect_t1w(bids_dir)
    records = read_labels(labels_dir, images, settings.labels)
    pairs = [(load_preprocessed(settings, r.image), r) for r in records]
    crops = load_labelled_crops(settings, pairs)
    assert [i.hemisphere for i in crops.info] == list(HEMISPHERES) * 4
    masks = crops.crops.targets["segmentation"].numpy().astype(bool)
    assert masks.any(axis=(1, 2, 3)).sum() >= 4  # the cohort has sulci to find

    torch.manual_seed(0)
    ft = settings.replace(finetune={"strategy": "full", "epochs": 20, "batch_size": 4,
                                    "learning_rate": 3e-3})
    result = finetune(ft, crops, None, "scratch", progress=False)
    predicted = predict_crops(result.network, crops.crops, batch_size=4).masks

    voxel_mm = settings.crop.voxel_mm
    labelled = [k for k in range(len(crops)) if masks[k].sum() >= 10]
    dices = [dice(predicted[k], masks[k]) for k in labelled]
    assert np.mean(dices) > 0.5, dices
    for k in labelled:
        assert predicted[k].any(), crops.info[k].name
        offset = (np.argwhere(predicted[k]).mean(0) - np.argwhere(masks[k]).mean(0)) * voxel_mm
        assert np.linalg.norm(offset) < 6.0, (crops.info[k].name, offset)
