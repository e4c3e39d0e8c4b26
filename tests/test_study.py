"""`bids_pcs ... study` end to end: a 2 x 2 quick grid at two label fractions, then a rerun.

One module-scoped run (6 labelled participants and one unlabelled on the MNI
anatomy, plus a one-participant ``--pretrain-data`` cohort, the
``study-quick`` recipe with 1 pre-training and 2 fine-tuning epochs, methods
scratch and reconstruction, strategies top and full, label fractions 0.5 and
1.0) goes through the CLI as a user would; the tests read its outputs.
Registration runs for real (without N4, which the study's logic does not
depend on, to keep CI short).  The statistics themselves (seeds, folds, paired
differences, the reading) are tested on hand-made records in
test_study_statistics.py.
"""

from __future__ import annotations

import json
import math
import shutil
import time

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from bids_pcs.config import PCS_CLASSES, LabelSettings, load_settings
from bids_pcs.models.model_io import read_model_card
from bids_pcs.splits import StudySplit
from bids_pcs.study.plan import Configuration, Pretraining, configuration_key, pretraining_key
from bids_pcs.study.scoring import METRICS
from bids_pcs.study.table import COLUMNS
from bids_pcs.synth import SynthOptions, make_cohort

GRID = {"methods": ["scratch", "reconstruction"], "strategies": ["top", "full"]}
CELLS = ["scratch-top", "scratch-full", "reconstruction-top", "reconstruction-full"]


def _study_command(summary, output_dir, work_dir, cohort):
    return [summary.bids_dir, output_dir, "study", "--labels", summary.labels_dir,
            "--pretrain-data", cohort,
            "--recipe", "study-quick", "--methods", *GRID["methods"],
            "--strategies", *GRID["strategies"], "--set", "pretrain.epochs=1",
            "--set", "study.label_fractions=[0.5, 1.0]",
            "--set", "finetune.epochs=2", "--set", "study.bootstrap_samples=200",
            "--set", "registration.n4=false", "--skip-bids-validation", "-w", work_dir,
            "--nprocs", "2", "--omp-nthreads", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """(cohort summary, output_dir, first run, seconds, second run, seconds, first table)."""
    root = tmp_path_factory.mktemp("study")
    options = SynthOptions.from_preset("easy", anatomy=("MNI152NLin2009aSym",), figure=False)
    summary = make_cohort(root / "bids", 7, seed=0, options=options)
    _unlabel(summary, UNLABELLED)
    cohort = make_cohort(root / "cohort", 1, seed=1, options=options).bids_dir
    output_dir = root / "out"
    command = _study_command(summary, output_dir, root / "work", cohort)
    started = time.perf_counter()
    first = run_cli(*command, timeout=900)
    first_seconds = time.perf_counter() - started
    assert first.returncode == 0, first.stderr[-4000:]
    first_table = (output_dir / "study" / "study.tsv").read_text()
    started = time.perf_counter()
    second = run_cli(*command, timeout=600)
    second_seconds = time.perf_counter() - started
    assert second.returncode == 0, second.stderr[-4000:]
    return summary, output_dir, first, first_seconds, second, second_seconds, first_table


UNLABELLED = "07"


def _unlabel(summary, subject):
    """Take every label of ``subject`` away: a T1w image without mask or class."""
    shutil.rmtree(summary.labels_dir / f"sub-{subject}")
    for tsv in (summary.labels_dir / "participants.tsv", summary.bids_dir / "participants.tsv"):
        table = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
        if tsv.parent == summary.labels_dir:
            table = table[table["participant_id"] != f"sub-{subject}"]
        else:
            pcs = [c for c in table.columns if c.startswith("pcs_")]
            table.loc[table["participant_id"] == f"sub-{subject}", pcs] = "n/a"
        table.to_csv(tsv, sep="\t", index=False)


def _table(output_dir) -> pd.DataFrame:
    return pd.read_csv(output_dir / "study" / "study.tsv", sep="\t", na_values=["n/a"],
                       keep_default_na=False)


@pytest.mark.slow
def test_the_table_has_a_row_per_configuration_and_fraction_with_sane_values(study_run):
    _, output_dir, *_ = study_run
    table = _table(output_dir)
    assert list(table.columns) == list(COLUMNS)
    assert table["configuration"].tolist() == CELLS + [f"{c}_labels-50pct" for c in CELLS]
    assert (table["n_folds"] == 1).all() and (table["n_seeds"] == 1).all()
    assert (table["n_test_participants"] == 1).all() and (table["n_test_hemispheres"] == 2).all()
    assert (table["n_train_participants"] == 4).all()
    assert table.set_index("configuration")["n_labelled_participants"].to_dict() == {
        **dict.fromkeys(CELLS, 4), **dict.fromkeys((f"{c}_labels-50pct" for c in CELLS), 2)}
    # fine-tuning learnt from the labelled images (2 hemispheres each); pre-training from the
    # 4 training images, the unlabelled sub-07 and the extra cohort's image: 6 (none of the
    # held-out ones), whatever the label fraction
    assert (table["finetune_images"] == table["n_labelled_participants"]).all()
    assert (table["finetune_labels"] == 2 * table["n_labelled_participants"]).all()
    assert table.groupby("method")["pretrain_images"].unique().map(list).to_dict() == {
        "scratch": [0], "reconstruction": [6]}
    for metric in METRICS:
        for row in table.itertuples():
            value = getattr(row, metric)
            low, high = getattr(row, f"{metric}_ci_lower"), getattr(row, f"{metric}_ci_upper")
            assert getattr(row, f"{metric}_n") <= 2
            if math.isnan(value):
                continue
            if metric == "hd95_mm":
                assert value >= 0
            else:
                assert 0.0 <= value <= 1.0, (row.configuration, metric, value)
            if not math.isnan(low):
                assert low - 1e-9 <= value <= high + 1e-9, (row.configuration, metric)
    assert (table["presence_balanced_accuracy_n"] == 2).all()
    # paired differences: against scratch for the pre-trained rows, against full for top
    rows = table.set_index("configuration")
    for fraction in ("", "_labels-50pct"):
        assert math.isnan(rows.loc[f"scratch-top{fraction}", "dice_vs_scratch"])
        assert math.isnan(rows.loc[f"reconstruction-full{fraction}", "dice_vs_full"])
        for mine, reference, column in (
                ("reconstruction-top", "scratch-top", "presence_balanced_accuracy_vs_scratch"),
                ("scratch-top", "scratch-full", "presence_balanced_accuracy_vs_full")):
            metric = column.split("_vs_")[0]
            expected = rows.loc[mine + fraction, metric] - rows.loc[reference + fraction, metric]
            assert rows.loc[mine + fraction, column] == pytest.approx(expected, abs=1e-9)
    assert (table["finetune_seconds"] > 0).all() and (table["seconds_per_epoch"] > 0).all()
    assert (table["epochs"] == 2).all()
    assert (table["learning_rate"] > 0).all()
    assert (table["peak_memory_mb"] >= table["baseline_memory_mb"]).all()
    assert (table["baseline_memory_mb"] > 50).all()
    assert set(table["memory_kind"]) == {"cpu_peak_rss"} and set(table["device"]) == {"cpu"}
    scratch = table[table["method"] == "scratch"]
    pretrained = table[table["method"] == "reconstruction"]
    assert (scratch["pretrain_seconds"] == 0).all()
    assert scratch["pretrain_peak_memory_mb"].isna().all()
    assert (pretrained["pretrain_seconds"] > 0).all()
    assert pretrained["pretrain_seconds"].nunique() == 1  # one pre-training, every fraction
    summed = table["pretrain_seconds"] + table["finetune_seconds"]
    assert np.allclose(table["total_seconds"], summed, rtol=1e-5)


@pytest.mark.slow
def test_test_scores_are_on_the_native_grid_against_the_native_labels(study_run):
    import nibabel as nib

    summary, output_dir, *_ = study_run
    record = json.loads((output_dir / "study" / "configurations" /
                         "reconstruction-full.json").read_text())
    assert record["test_grid"] == "native T1w"
    labels = {"L": 1, "R": 2}
    for row in record["test_rows"]:
        [t1w] = (summary.bids_dir / f"sub-{row['participant']}" / "anat").glob("*_T1w.nii*")
        [dseg] = (summary.labels_dir / f"sub-{row['participant']}" / "anat").glob(
            "*_dseg.nii*")
        image = nib.load(t1w)
        # the image's own (often anisotropic) voxel size, and the native label's voxel count
        assert row["spacing_mm"] == pytest.approx(image.header.get_zooms()[:3], abs=1e-4)
        truth = np.asanyarray(nib.load(dseg).dataobj) == labels[row["hemisphere"]]
        assert row["true_voxels"] == int(truth.sum())
        assert row["has_mask"] is True and 0.0 <= row["dice"] <= 1.0
        # the class a user would be given: the class of the measured length (the model
        # learnt masks), whatever the head says; the head's class is kept beside it
        assert row["class_rule"] == "length"
        assert row["predicted_class"] == LabelSettings().class_from_length(
            row["predicted_length_mm"])
        assert row["presence_score"] == pytest.approx(row["predicted_length_mm"])
        assert row["network_class"] == PCS_CLASSES[int(np.argmax(row["probabilities"]))]
    scores = record["test_scores"]
    with_sulcus = sum(1 for r in record["test_rows"] if r["true_voxels"] > 0)
    assert scores["dice_n"] == with_sulcus
    card = read_model_card(output_dir / "models" / "study-reconstruction-full")
    assert "val_dice_n" in card["metrics"] and not any("hd95" in k for k in card["metrics"])
    assert card["training"]["optimizer"]["schedule"]["kind"] == "cosine"


@pytest.mark.slow
def test_top_and_full_freeze_different_parameters(study_run):
    _, output_dir, *_ = study_run
    table = _table(output_dir).set_index("configuration")
    assert table["total_parameters"].nunique() == 1
    for method in GRID["methods"]:
        top, full = table.loc[f"{method}-top"], table.loc[f"{method}-full"]
        assert full["frozen_parameters"] == 0
        assert top["frozen_parameters"] > 0
        assert top["frozen_parameters"] != full["frozen_parameters"]
        assert top["trainable_parameters"] + top["frozen_parameters"] == top["total_parameters"]
        assert full["trainable_parameters"] == full["total_parameters"]
        assert top["trainable_fraction"] < 0.05 and full["trainable_fraction"] == 1.0


@pytest.mark.slow
def test_the_split_keeps_participants_apart_and_pretraining_never_sees_held_out_ones(
        study_run):
    summary, output_dir, *_ = study_run
    split_table = pd.read_csv(output_dir / "study" / "split.tsv", sep="\t", dtype=str)
    assert split_table["participant_id"].is_unique  # one part per participant
    assert len(split_table) == 6  # the labelled participants
    assert split_table["part"].value_counts().to_dict() == {"train": 4, "validation": 1,
                                                           "test": 1}
    study = json.loads((output_dir / "study" / "study.json").read_text())
    [split] = [StudySplit.from_dict(s) for s in study["splits"]]
    assert {f"sub-{s}" for s in split.train} == set(
        split_table.loc[split_table["part"] == "train", "participant_id"])
    card = read_model_card(output_dir / "models" / "study-pretrain-reconstruction")
    assert card["stage"] == "pretrain" and card["method"] == "reconstruction"
    data = card["training_data"]
    # the training participants and the unlabelled one of BIDS_DIR, never a held-out one
    assert data["participants"] == sorted([*split.train, UNLABELLED])
    assert data["datasets"]["cohort"]["n_images"] == 1  # and the --pretrain-data cohort
    assert data["n_crops"] == 2 * (len(split.train) + 2)
    assert data["pretrain_pool"] == "all"
    assert study["data"]["pretraining_pool"]["n_images"] == 8  # 7 of BIDS_DIR + 1
    assert (output_dir / "derivatives" / "cohort" / "dataset_description.json").is_file()
    # every configuration from reconstruction started from that one model
    for strategy in GRID["strategies"]:
        record = json.loads((output_dir / "study" / "configurations" /
                             f"reconstruction-{strategy}.json").read_text())
        assert record["init"].endswith("study-pretrain-reconstruction")
        assert {row["participant"] for row in record["test_rows"]} == set(split.test)
        assert (output_dir / "models" / f"study-reconstruction-{strategy}" /
                "model.safetensors").is_file()
    assert len(list((output_dir / "study" / "pretraining").glob("*.json"))) == 1


@pytest.mark.slow
def test_the_page_json_and_figures_are_written(study_run):
    _, output_dir, *_ = study_run
    study_dir = output_dir / "study"
    page = (study_dir / "study.html").read_text()
    for text in ("Reading of the results", "scratch-top", "reconstruction-full",
                 "Paired differences", "Label efficiency", "n = 2",
                 "data:image/png;base64,"):
        assert text in page
    figures = {p.stem for p in (study_dir / "figures").glob("*.png")}
    assert {"accuracy_vs_time", "accuracy_vs_memory", "heatmap_dice",
            "heatmap_presence_balanced_accuracy", "heatmap_macro_f1_3class",
            "label_efficiency"} <= figures
    study = json.loads((study_dir / "study.json").read_text())
    assert study["grid"] == {**GRID, "folds": [0], "label_fractions": [0.5, 1.0],
                             "training_seeds": [0]}
    assert [c["configuration"] for c in study["configurations"]] == _table(output_dir)[
        "configuration"].tolist()
    assert study["failed"] == []
    assert "except the validation and test participants" in study["design"][
        "pretraining_data"]
    assert "1 --pretrain-data dataset" in study["design"]["pretraining_data"]
    assert "6 images / 8 hemisphere labels" in page
    assert "native T1w grid" in study["design"]["test_scores"]
    logs = {p.name.rsplit("_", 1)[0] for p in (output_dir / "logs").glob("study-*.log")}
    assert logs == {"study-pretrain-reconstruction", *(f"study-{c}" for c in CELLS),
                    *(f"study-{c}_labels-50pct" for c in CELLS)}


@pytest.mark.slow
def test_a_rerun_skips_finished_jobs_and_gives_the_same_table(study_run):
    _, output_dir, first, first_seconds, second, second_seconds, first_table = study_run
    assert (output_dir / "study" / "study.tsv").read_text() == first_table
    assert second.stderr.count("already done") == 9
    assert "starting" not in second.stderr
    assert second_seconds < first_seconds / 2, (first_seconds, second_seconds)


def test_job_keys_follow_what_each_job_depends_on(monkeypatch):
    settings = load_settings("study-quick")
    split = StudySplit(fold=0, train=("01", "02"), validation=("03",), test=("04",))
    pre, config = Pretraining("contrastive"), Configuration("contrastive", "lora")
    key = pretraining_key(settings, pre, split, "data")
    ckey = configuration_key(settings, config, split, "data", "weights")
    longer_finetune = settings.replace(finetune={"epochs": 9})
    assert pretraining_key(longer_finetune, pre, split, "data") == key
    assert configuration_key(longer_finetune, config, split, "data", "weights") != ckey
    assert pretraining_key(settings.replace(pretrain={"epochs": 9}), pre, split, "data") != key
    # a different test participant does not change what pre-training learnt from
    other_test = StudySplit(fold=0, train=("01", "02"), validation=("04",), test=("03",))
    assert pretraining_key(settings, pre, other_test, "data") == key
    assert configuration_key(settings, config, other_test, "data", "weights") != ckey
    assert configuration_key(settings, config, split, "data", "other weights") != ckey
    assert pretraining_key(settings.replace(run={"seed": 1}), pre, split, "data") != key
    # the pool of images pre-training draws from, and how it draws, count too
    assert pretraining_key(settings, pre, split, "data", "pool") != key
    assert pretraining_key(settings.replace(study={"pretrain_pool": "train"}), pre, split,
                           "data") != key
    # records scored another way (the head's class, before the class rule) are not reused
    monkeypatch.setattr("bids_pcs.study.plan.NATIVE_SCORING", "another scoring")
    assert configuration_key(settings, config, split, "data", "weights") != ckey
    assert pretraining_key(settings, pre, split, "data") == key


@pytest.mark.slow
def test_label_fractions_fine_tune_on_nested_subsets_of_the_training_labels(study_run):
    _, output_dir, *_ = study_run
    study = json.loads((output_dir / "study" / "study.json").read_text())
    [split] = [StudySplit.from_dict(s) for s in study["splits"]]
    subsets = study["label_subsets"]["fold-0"]["seed-0"]
    assert set(subsets["0.5"]) < set(subsets["1"]) == set(split.train)
    for cell in CELLS:
        record = json.loads((output_dir / "study" / "configurations" /
                             f"{cell}_labels-50pct.json").read_text())
        assert record["n_labelled_participants"] == 2 and record["label_fraction"] == 0.5
        card = read_model_card(output_dir / "models" / f"study-{cell}_labels-50pct")
        assert card["training_data"]["participants"] == subsets["0.5"]
        assert card["training_data"]["validation"]["participants"] == list(split.validation)
    assert (output_dir / "study" / "figures" / "label_efficiency.png").is_file()


@pytest.mark.slow
def test_study_test_on_holds_a_group_out_of_training_and_scores_it(study_run, tmp_path):
    """``[study] test_on = "group=control"``: a 1 x 1 grid on the module's cohort."""
    import shutil

    summary, output_dir, *_ = study_run
    controls = set(pd.read_csv(summary.bids_dir / "participants.tsv", sep="\t")
                   .query("group == 'control'")["participant_id"].str.removeprefix("sub-")
                   ) - {UNLABELLED}  # only labelled participants are tested
    assert 0 < len(controls) < 6
    out = tmp_path / "out"
    # the preprocessed crops are reused; the study itself starts afresh
    shutil.copytree(output_dir, out, ignore=shutil.ignore_patterns("study", "models"))
    done = run_cli(summary.bids_dir, out, "study", "--labels", summary.labels_dir,
                   "--recipe", "study-quick", "--methods", "scratch", "--strategies", "top",
                   "--set", "finetune.epochs=1", "--set", "study.bootstrap_samples=50",
                   "--set", "study.test_on=group=control", "--set", "registration.n4=false",
                   "--skip-bids-validation", "-w", tmp_path / "work", "--nprocs", "2",
                   "--omp-nthreads", "2", "--device", "cpu", timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    study = json.loads((out / "study" / "study.json").read_text())
    [split] = [StudySplit.from_dict(s) for s in study["splits"]]
    assert set(split.ood_test) == controls
    assert not controls & set(split.train + split.validation + split.test)
    split_table = pd.read_csv(out / "study" / "split.tsv", sep="\t", dtype=str)
    assert set(split_table.loc[split_table["part"] == "ood_test", "participant_id"]) == {
        f"sub-{s}" for s in controls}
    record = json.loads((out / "study" / "configurations" / "scratch-top.json").read_text())
    assert {r["participant"] for r in record["ood_test_rows"]} == controls
    assert {r["participant"] for r in record["test_rows"]} == set(split.test)
    card = read_model_card(out / "models" / "study-scratch-top")
    assert not controls & set(card["training_data"]["participants"])
    row = _table(out).iloc[0]
    assert 0.0 <= row["ood_dice"] <= 1.0 and 0.0 <= row["dice"] <= 1.0
    assert row["n_ood_test_participants"] == len(controls)
    assert "Out of distribution" in (out / "study" / "study.html").read_text()
    assert study["design"]["out_of_distribution"]["test_on"] == "group=control"
