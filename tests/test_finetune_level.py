"""`bids_pcs ... finetune` end to end on a synthetic cohort, and a model that really learns.

One module-scoped cohort (4 participants on the MNI anatomy) is preprocessed
once with the ``tiny-cpu-2mm`` recipe (registration runs for real); the CLI run
then finds the crops done and only fine-tunes.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_cli

from bids_pcs.config import HEMISPHERES, load_settings
from bids_pcs.finetuning import finetune, load_labelled_crops, predict_crops
from bids_pcs.io.bids_input import collect_t1w
from bids_pcs.io.derivatives import init_derivatives, pcs_metadata_path, pcs_table_path
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
    # one image without a mask: its classes (participants.tsv) still train the head
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
    data = card["training_data"]
    assert not data["skipped"].get("unlabelled")
    assert data["n_participants"] + data["validation"]["n_participants"] == 4
    assert data["n_crops_with_mask"] + data["validation"]["n_crops_with_mask"] == 6
    assert data["n_crops_with_class"] + data["validation"]["n_crops_with_class"] == 8
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


def _class_table(bids_dir, path):
    """The cohort's classes as a label table of their own (no masks anywhere)."""
    lines = (bids_dir / "participants.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    keep = [header.index(c) for c in ("participant_id", "pcs_left", "pcs_right")]
    path.write_text("\n".join("\t".join(line.split("\t")[i] for i in keep)
                              for line in lines) + "\n")
    return path


def _own_output(cohort_out, tmp_path, *extra):
    """A copy of the cohort's preprocessed OUTPUT_DIR without its models, and the options
    every CLI call of the test shares (``extra`` appended)."""
    output_dir = tmp_path / "out"
    shutil.copytree(cohort_out, output_dir, ignore=shutil.ignore_patterns("models"))
    return output_dir, ("--recipe", RECIPE, "--skip-bids-validation", "--omp-nthreads", "2",
                        "--device", "cpu", "-w", tmp_path / "work", *extra)


def test_a_mixed_label_source_trains_masks_on_a_quarter_and_classes_on_the_rest(cohort,
                                                                                 tmp_path):
    bids_dir, labels_dir, output_dir, settings = cohort
    labels = tmp_path / "labels"
    shutil.copytree(labels_dir, labels)
    images = collect_t1w(bids_dir)
    for image in images[1:]:  # masks for one participant in four; classes for every one
        find_dseg(labels, image).unlink()
    records = read_labels(labels, images, settings.labels, bids_dir=bids_dir)
    assert [r.has_mask for r in records] == [True, False, False, False]
    done = run_cli(bids_dir, output_dir, "finetune", "--init", "scratch", "--strategy", "full",
                   "--labels", labels, "--recipe", RECIPE, "--set", "finetune.epochs=1",
                   "--set", "finetune.validation_fraction=0.5", "--model-name", "mixed",
                   "--skip-bids-validation", "-w", tmp_path / "work", "--omp-nthreads", "2",
                   "--device", "cpu")
    assert done.returncode == 0, done.stderr[-3000:]
    card = read_model_card(output_dir / "models" / "mixed")
    data = card["training_data"]
    trained = data["n_crops_with_mask"] + data["validation"]["n_crops_with_mask"]
    assert trained == 2 and data["n_crops"] + data["validation"]["n_crops"] == 8
    assert data["n_crops_with_class"] + data["validation"]["n_crops_with_class"] == 8
    # validation scores say what they rest on: masks only where the image has one
    assert card["metrics"]["val_n_masks"] == data["validation"]["n_crops_with_mask"]
    assert card["metrics"]["val_n_classes"] == 4


@pytest.mark.slow
def test_classes_only_then_ratings_close_the_loop(cohort, tmp_path):
    """Class table -> finetune -> participant --model -> rate in the browser -> finetune."""
    from pcs_outputs import require_browser

    from bids_pcs.reports.browser import DevToolsSession
    from bids_pcs.reports.subject import subject_report_path

    exe = require_browser()
    bids_dir, _, cohort_out, _ = cohort
    output_dir, common = _own_output(cohort_out, tmp_path)
    table = _class_table(bids_dir, tmp_path / "classes.tsv")
    done = run_cli(bids_dir, output_dir, "finetune", "--init", "scratch", "--strategy", "full",
                   "--labels", table, "--set", "finetune.epochs=2", "--model-name",
                   "classes-only", *common)
    assert done.returncode == 0, done.stderr[-3000:]
    model_dir = output_dir / "models" / "classes-only"
    card = read_model_card(model_dir)
    assert card["training_data"]["n_crops_with_mask"] == 0
    assert card["training_data"]["class_sources"] == {"table": 6}
    assert "val_dice" in card["metrics"] and card["metrics"]["val_dice"] is None

    done = run_cli(bids_dir, output_dir, "participant", "--participant-label", "01",
                   "--model", model_dir, *common)
    assert done.returncode == 0, done.stderr[-3000:]
    (image,) = collect_t1w(bids_dir, ["01"])
    metadata = json.loads(pcs_metadata_path(output_dir, image).read_text())
    assert metadata["ClassRule"] == "network" and metadata["SegmentationTrained"] is False
    rows = pd.read_csv(pcs_table_path(output_dir, image), sep="\t", dtype=str,
                       keep_default_na=False)
    assert (rows["pcs_class"] == rows["pcs_class_network"]).all()
    assert (rows[["pcs_length_mm", "pcs_class_length", "class_agreement"]] == "n/a").all(axis=None)

    # a reader corrects the left call and accepts the right one; the file is the label source
    corrected = "absent" if rows.at[0, "pcs_class"] != "absent" else "present"
    ratings = tmp_path / "ratings"
    with DevToolsSession(download_dir=ratings, browser=exe) as browser:
        browser.open(subject_report_path(output_dir, "01"))
        browser.select_option(f'select[name="class-{image.prefix}-L"]', corrected)
        browser.click(f'input[name="decision-{image.prefix}-R"][value="accept"]')
        browser.click(f'input[name="qc-{image.prefix}"][value="good"]')
        browser.click("#save-ratings-tsv")
        saved = browser.wait_for_download()
    rated = pd.read_csv(saved, sep="\t", dtype=str, keep_default_na=False)
    assert list(rated["decision"]) == ["correct", "accept"]
    assert list(rated["pcs_class"]) == [corrected, rows.at[1, "pcs_class"]]

    # the raw participants.tsv also holds classes (read beside any label source), so the
    # rated participant alone is selected: its classes must come from the rating file
    done = run_cli(bids_dir, output_dir, "finetune", "--init", "scratch", "--strategy", "top",
                   "--labels", ratings, "--participant-label", "01", "--set", "finetune.epochs=1",
                   "--set", "finetune.validation_fraction=0", "--model-name", "from-ratings",
                   *common)
    assert done.returncode == 0, done.stderr[-3000:]
    data = read_model_card(output_dir / "models" / "from-ratings")["training_data"]
    assert data["participants"] == ["01"] and data["class_sources"] == {"rating": 2}
    assert data["classes"] == dict(Counter([corrected, rows.at[1, "pcs_class"]]))


@pytest.mark.slow
def test_binary_labels_run_end_to_end(cohort, tmp_path):
    """[labels] classes = absent/present: finetune, participant --model, group."""
    bids_dir, labels_dir, cohort_out, _ = cohort
    output_dir, common = _own_output(cohort_out, tmp_path,
                                     "--set", 'labels.classes=["absent", "present"]')
    done = run_cli(bids_dir, output_dir, "finetune", "--init", "scratch", "--strategy", "full",
                   "--labels", labels_dir, "--set", "finetune.epochs=1", "--model-name",
                   "binary", *common)
    assert done.returncode == 0, done.stderr[-3000:]
    model_dir = output_dir / "models" / "binary"
    card = read_model_card(model_dir)
    assert card["labels"]["classes"] == ["absent", "present"]
    assert set(card["training_data"]["classes"]) <= {"absent", "present"}
    # a three-class run refuses the binary model in one sentence
    refused = run_cli(bids_dir, output_dir, "participant", "--participant-label", "02",
                      "--model", model_dir, "--recipe", RECIPE, "--skip-bids-validation",
                      "-w", tmp_path / "work")
    assert refused.returncode != 0 and "classes" in refused.stderr
    done = run_cli(bids_dir, output_dir, "participant", "--participant-label", "01", "02",
                   "--model", model_dir, *common)
    assert done.returncode == 0, done.stderr[-3000:]
    for image in collect_t1w(bids_dir, ["01", "02"]):
        table = pd.read_csv(pcs_table_path(output_dir, image), sep="\t", dtype=str)
        assert "p_prominent" not in table.columns
        assert set(table["pcs_class"]) <= {"absent", "present"}
        probabilities = table[["p_absent", "p_present"]].astype(float).to_numpy()
        assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
    done = run_cli(bids_dir, output_dir, "group")
    assert done.returncode == 0, done.stderr[-3000:]
    group = pd.read_csv(output_dir / "group_pcs.tsv", sep="\t", dtype=str)
    assert "p_present_left" in group.columns and not [c for c in group if "prominent" in c]
    summary = json.loads((output_dir / "group_pcs.json").read_text())
    assert set(summary["prevalence"]["left"]["counts"]) == {"absent", "present"}
    report = (output_dir / "sub-01.html").read_text()
    assert "P(prominent)" not in report and "binary presence call" in report
