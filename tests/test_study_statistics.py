"""The study's statistics from job records: rows per label fraction, seeds, paired differences.

No training here: the records are written by hand so that every number is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bids_pcs.config import load_settings
from bids_pcs.splits import StudySplit
from bids_pcs.study.plan import (
    Configuration,
    Grid,
    Pretraining,
    configuration_key,
    plan_grid,
)
from bids_pcs.study.reading import differences, reading
from bids_pcs.study.scoring import METRICS, PAIRED_METRICS, ScoredRuns
from bids_pcs.study.table import COLUMNS, results_table, table_to_tsv

SUBJECTS = [f"{i:02d}" for i in range(40)]


def _rows(subjects, dice_of, *, present_every=2, p_right=0.8):
    """Two hemispheres per participant; every ``present_every``-th hemisphere has a sulcus."""
    rows = []
    for i, subject in enumerate(subjects):
        for hemisphere in "LR":
            k = 2 * i + (hemisphere == "R")
            present = k % present_every == 0
            right = (k * 7919) % 100 < 100 * p_right
            says_present = present == right
            rows.append({
                "crop": f"sub-{subject}_hemi-{hemisphere}", "participant": subject,
                "true_class": "present" if present else "absent",
                "probabilities": [0.2, 0.7, 0.1] if says_present else [0.7, 0.2, 0.1],
                "has_mask": True, "true_voxels": 40 if present else 0,
                "dice": dice_of(k) if present else 1.0,
                "hd95_mm": 3.0 if present else 0.0,
            })
    return rows


def _record(rows, *, seconds=10.0, n_train=20, n_labelled=20):
    return {"test_rows": rows, "finetune_seconds": seconds, "seconds_per_epoch": seconds / 2,
            "epochs": 2, "best_epoch": 2, "peak_memory_mb": 600.0, "baseline_memory_mb": 400.0,
            "memory_kind": "cpu_peak_rss", "device": "cpu", "trainable_parameters": 10,
            "training_parameters": 100, "total_parameters": 100, "trainable_fraction": 0.1,
            "n_train_participants": n_train, "n_labelled_participants": n_labelled,
            "learning_rate": 1e-3}


def _participant_dice(k):
    # participants differ a lot (0.3 .. 0.9), which widens every marginal interval
    return 0.3 + 0.6 * ((k // 2) % 10) / 9


def test_folds_and_seeds_pool_into_one_row_with_their_spread():
    grid = Grid(methods=("scratch",), strategies=("lora",), folds=(1, 2), seeds=(0, 1))
    halves = (SUBJECTS[:20], SUBJECTS[20:])
    configurations = {}
    for seed, shift in ((0, 0.0), (1, 0.1)):
        for fold, subjects in zip((1, 2), halves, strict=True):
            configurations[Configuration("scratch", "lora", fold, 1.0, seed)] = _record(
                _rows(subjects, lambda k, s=shift: 0.5 + s), seconds=10.0 * fold)
    table = results_table(grid, configurations, {}, n_resamples=100, seed=0)
    [row] = table.to_dict("records")
    assert (row["n_seeds"], row["n_folds"], row["n_test_participants"],
            row["n_test_hemispheres"]) == (2, 2, 40, 80)
    assert row["dice"] == pytest.approx(0.55)  # mean over the seeds of each seed's Dice
    assert row["dice_seed_sd"] == pytest.approx(np.std([0.5, 0.6], ddof=1))
    assert row["dice_n"] == 40  # only the hemispheres with a sulcus
    assert row["presence_sensitivity_n"] == 40 and row["presence_specificity_n"] == 40
    assert row["finetune_seconds"] == 15.0
    assert list(table.columns) == list(COLUMNS)
    assert np.isnan(row["dice_vs_scratch"])  # scratch is its own reference
    missing = dict(configurations)
    del missing[Configuration("scratch", "lora", 2, 1.0, 1)]  # one seed of one fold failed
    assert results_table(grid, missing, {}, n_resamples=0).empty


def test_paired_differences_find_what_overlapping_marginal_intervals_hide():
    grid = Grid(methods=("scratch", "reconstruction"), strategies=("top", "full"), folds=(0,))
    gains = {("scratch", "top"): 0.0, ("scratch", "full"): 0.0,
             ("reconstruction", "top"): 0.03, ("reconstruction", "full"): 0.0}
    configurations = {
        Configuration(m, s): _record(_rows(SUBJECTS, lambda k, g=g: _participant_dice(k) + g))
        for (m, s), g in gains.items()}
    pretrainings = {Pretraining("reconstruction"): {"seconds": 30.0, "peak_memory_mb": 900.0,
                                                    "n_crops": 80, "n_images": 40}}
    table = results_table(grid, configurations, pretrainings, n_resamples=300, seed=1)
    rows = table.set_index("configuration")
    top = rows.loc["reconstruction-top"]
    assert top["dice_vs_scratch"] == pytest.approx(0.03)
    assert top["dice_vs_scratch_ci_lower"] == pytest.approx(0.03)  # the same gain everywhere
    # ... while the marginal intervals overlap widely
    assert top["dice_ci_lower"] < rows.loc["scratch-top", "dice_ci_upper"]
    assert top["dice_vs_full"] == pytest.approx(0.03)
    assert rows.loc["reconstruction-full", "dice_vs_scratch"] == pytest.approx(0.0)
    assert np.isnan(rows.loc["scratch-full", "dice_vs_full"])
    assert rows.loc["reconstruction-top", "pretrain_images"] == 40
    assert rows.loc["scratch-top", "pretrain_images"] == 0
    for metric in PAIRED_METRICS:
        assert f"{metric}_vs_scratch_ci_upper" in table
    text = " ".join(reading(table))
    assert "reconstruction-top +0.030 (paired 95 % CI +0.030 to +0.030)" in text
    assert "better: reconstruction-top" in text
    called = [d for d in differences(table, "dice", "scratch") if d.called]
    assert [d.configuration for d in called] == ["reconstruction-top"]
    assert "overlap" not in text


def test_a_noisy_difference_is_not_called():
    grid = Grid(methods=("scratch", "contrastive"), strategies=("top",), folds=(0,))
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.15, size=80)
    configurations = {
        Configuration("scratch", "top"): _record(_rows(SUBJECTS, _participant_dice)),
        Configuration("contrastive", "top"): _record(_rows(
            SUBJECTS, lambda k: float(np.clip(_participant_dice(k) + noise[k], 0, 1)))),
    }
    table = results_table(grid, configurations, {}, n_resamples=300, seed=0)
    [found] = differences(table, "dice", "scratch")
    assert found.lower < 0 < found.upper and found.called is None
    text = " ".join(reading(table))
    assert "no difference is established (every paired 95 % interval includes 0" in text
    assert "better:" not in text and "worse:" not in text


def test_label_fractions_give_rows_compared_at_the_same_fraction():
    study = load_settings("study-quick").study
    grid = plan_grid(study.__class__(methods=("scratch", "diffusion"), strategies=("full",),
                                     label_fractions=(0.25, 1.0), seeds=(3, 4)), [0],
                     study_seed=3)
    assert grid.rows == [("scratch", "full", 1.0), ("diffusion", "full", 1.0),
                         ("scratch", "full", 0.25), ("diffusion", "full", 0.25)]
    assert len(grid.configurations) == 8 and len(grid.pretrainings) == 1
    names = {c.name for c in grid.configurations}
    # the study's own seed (3) names its jobs as a study without seeds would: they are reused
    assert "diffusion-full_labels-25pct_seed-4" in names and "scratch-full" in names
    assert "scratch-full_seed-3" not in names
    configurations = {}
    for job in grid.configurations:
        labelled = 5 if job.label_fraction < 1 else 20
        gain = 0.1 if (job.method, job.label_fraction) == ("diffusion", 0.25) else 0.0
        base = 0.4 if job.label_fraction < 1 else 0.7
        configurations[job] = _record(_rows(SUBJECTS[:30], lambda k, v=base + gain: v),
                                      n_labelled=labelled)
    table = results_table(grid, configurations, {}, n_resamples=200, seed=0)
    rows = table.set_index("configuration")
    assert rows.loc["diffusion-full_labels-25pct", "n_labelled_participants"] == 5
    assert rows.loc["diffusion-full_labels-25pct", "dice_vs_scratch"] == pytest.approx(0.1)
    assert rows.loc["diffusion-full", "dice_vs_scratch"] == pytest.approx(0.0)
    text = " ".join(reading(table))
    assert "With 25% of the training labels (5 labelled participants)" in text
    assert "diffusion-full_labels-25pct +0.100" in text
    assert "Over 2 training seeds" in text
    tsv = table_to_tsv(table)
    assert tsv.splitlines()[0].split("\t") == list(COLUMNS)


def test_job_keys_follow_the_seed_the_fraction_and_only_the_own_learning_rate():
    settings = load_settings("study-quick").replace(
        finetune={"learning_rates": {"top": 3e-3, "full": 1e-3}})
    split = StudySplit(fold=0, train=("01", "02"), validation=("03",), test=("04",))
    job = Configuration("contrastive", "top", 0, 1.0, 0)
    key = configuration_key(settings, job, split, "data", "weights")
    assert configuration_key(settings, Configuration("contrastive", "top", 0, 1.0, 1), split,
                             "data", "weights") != key
    fewer = StudySplit(fold=0, train=("01",), validation=("03",), test=("04",))
    assert configuration_key(settings, Configuration("contrastive", "top", 0, 0.5, 0), fewer,
                             "data", "weights") != key
    other_full_rate = settings.replace(finetune={"learning_rates": {"top": 3e-3, "full": 5e-4}})
    assert configuration_key(other_full_rate, job, split, "data", "weights") == key
    other_top_rate = settings.replace(finetune={"learning_rates": {"top": 1e-2, "full": 1e-3}})
    assert configuration_key(other_top_rate, job, split, "data", "weights") != key


def test_rows_of_images_without_masks_count_for_presence_only():
    rows = _rows(SUBJECTS[:4], lambda k: 0.6)
    for row in rows[:4]:  # two participants with class-only labels
        row.update(has_mask=False, true_voxels=None, dice=None, hd95_mm=None)
    scores = ScoredRuns.from_records([rows]).scores()
    assert scores["dice_n"] == 2 and scores["presence_balanced_accuracy_n"] == 8
    assert scores["dice"] == pytest.approx(0.6)
    assert set(METRICS) <= set(scores)
    assert isinstance(pd.DataFrame([scores]), pd.DataFrame)


def test_presence_scores_the_reported_class_and_ranks_by_the_presence_score():
    rows = _rows(SUBJECTS[:10], lambda k: 0.6, p_right=1.0)
    head_only = ScoredRuns.from_records([rows]).scores()
    assert head_only["presence_balanced_accuracy"] == 1.0  # rows without a reported class
    for row in rows:  # the head says "absent" everywhere, the lengths tell them apart
        present = row["true_class"] == "present"
        row.update(probabilities=[0.5, 0.3, 0.2], network_class="absent",
                   predicted_class="present" if present else "absent",
                   presence_score=30.0 if present else 5.0)
    scores = ScoredRuns.from_records([rows]).scores()
    assert scores["presence_balanced_accuracy"] == 1.0 and scores["presence_auc"] == 1.0
    for row in rows:  # a reported class that is wrong where the head would be right
        row["predicted_class"] = "absent"
    assert ScoredRuns.from_records([rows]).scores()["presence_balanced_accuracy"] == 0.5


def test_out_of_distribution_scores_sit_beside_the_in_distribution_ones():
    grid = Grid(methods=("scratch",), strategies=("top",), folds=(0,))
    record = _record(_rows(SUBJECTS[:20], lambda k: 0.6))
    record["ood_test_rows"] = _rows(SUBJECTS[20:30], lambda k: 0.1)
    table = results_table(grid, {Configuration("scratch", "top"): record}, {}, n_resamples=50,
                          seed=0)
    [row] = table.to_dict("records")
    assert row["dice"] == pytest.approx(0.6) and row["ood_dice"] == pytest.approx(0.1)
    assert (row["n_ood_test_participants"], row["n_ood_test_hemispheres"]) == (10, 20)
    assert row["ood_dice_ci_lower"] <= row["ood_dice"] <= row["ood_dice_ci_upper"]
    # without test_on the columns exist and are empty
    plain = results_table(grid, {Configuration("scratch", "top"): _record(
        _rows(SUBJECTS[:20], lambda k: 0.6))}, {}, n_resamples=0)
    assert np.isnan(plain.iloc[0]["ood_dice"]) and "ood_dice" in table_to_tsv(plain)
