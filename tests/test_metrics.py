"""Mask, presence and class metrics on cases whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bids_pcs.metrics import (
    bootstrap_ci,
    bootstrap_cis,
    bootstrap_draws,
    classification_metrics,
    dice,
    encode_classes,
    hd95,
    hemisphere_scores,
    mask_metrics,
    presence_metrics,
    presence_probability,
    roc_auc,
    three_class_accuracy,
)

# ------------------------------------------------------------------ masks


def cube(shape=(40, 40, 40), start=(10, 10, 10), size=10):
    mask = np.zeros(shape, dtype=bool)
    mask[tuple(slice(s, s + size) for s in start)] = True
    return mask


def test_dice_of_shifted_cubes():
    truth = cube()
    assert dice(truth, truth) == 1.0
    # shifted by 2 of 10 voxels: overlap 8 x 10 x 10 of 1000 each
    assert dice(cube(start=(12, 10, 10)), truth) == pytest.approx(0.8)
    assert dice(cube(start=(13, 13, 10)), truth) == pytest.approx(2 * 7 * 7 * 10 / 2000)
    assert dice(cube(start=(25, 25, 25)), truth) == 0.0


def test_hd95_of_parallel_plates_is_their_distance_in_mm():
    # two one-voxel-thick plates: every surface voxel is 3 voxels from the other plate
    a = np.zeros((20, 20, 20), dtype=bool)
    b = np.zeros_like(a)
    a[4:16, 4:16, 5] = True
    b[4:16, 4:16, 8] = True
    assert hd95(a, b) == pytest.approx(3.0)
    assert hd95(a, b, spacing=(0.5, 0.7, 2.5)) == pytest.approx(7.5)
    # the same plates across the first axis, with its own spacing
    assert hd95(a.transpose(2, 0, 1), b.transpose(2, 0, 1),
                spacing=(1.3, 0.5, 0.5)) == pytest.approx(3.9)


def test_hausdorff_of_shifted_cubes_with_anisotropic_spacing():
    truth = cube()
    moved = cube(start=(10, 10, 12))
    # the end faces are two slices of 2.5 mm apart, nothing is farther
    spacing = (1.0, 1.0, 2.5)
    assert hd95(moved, truth, spacing, percentile=100) == pytest.approx(5.0)
    # most surface voxels lie on shared side walls, so HD95 is smaller but positive
    assert 0.0 < hd95(moved, truth, spacing) <= 5.0
    assert hd95(moved, truth, spacing) == pytest.approx(hd95(truth, moved, spacing))


def test_hd95_agrees_with_a_brute_force_surface_distance_on_random_blobs():
    """HD95 (MONAI's) against every pairwise distance between the two surfaces, in mm."""
    from scipy import ndimage
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(7)
    spacing = np.array([0.8, 1.1, 2.0])
    for _ in range(3):
        noise = ndimage.gaussian_filter(rng.normal(size=(20, 18, 14)), 2.5)
        pred = noise > 0.02
        truth = ndimage.shift(noise, (1.5, -1.0, 0.5), order=1) > 0.0
        edges = [np.argwhere(m & ~ndimage.binary_erosion(m)) * spacing for m in (pred, truth)]
        distances = cdist(edges[0], edges[1])
        expected = max(np.percentile(distances.min(axis=1), 95),
                       np.percentile(distances.min(axis=0), 95))
        assert hd95(pred, truth, tuple(spacing)) == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_empty_masks():
    empty = np.zeros((10, 10, 10), dtype=bool)
    full = cube((10, 10, 10), (2, 2, 2), 3)
    assert dice(empty, empty) == 1.0
    assert hd95(empty, empty) == 0.0
    assert dice(full, empty) == 0.0 and dice(empty, full) == 0.0
    assert np.isnan(hd95(full, empty)) and np.isnan(hd95(empty, full))
    both = mask_metrics(empty, empty)
    assert (both.dice, both.hd95_mm, both.pred_voxels, both.true_voxels) == (1.0, 0.0, 0, 0)


def test_masks_as_torch_tensors_and_shape_checks():
    truth = cube()
    pred = cube(start=(12, 10, 10))
    result = mask_metrics(torch.from_numpy(pred).float(), torch.from_numpy(truth),
                          spacing=(2.0, 1.0, 1.0))
    assert result.dice == pytest.approx(0.8)
    assert result.hd95_mm == pytest.approx(hd95(pred, truth, (2.0, 1.0, 1.0)))
    assert (result.pred_voxels, result.true_voxels) == (1000, 1000)
    with pytest.raises(ValueError, match="shape"):
        dice(truth, truth[:-1])
    with pytest.raises(ValueError, match="spacing"):
        hd95(truth, truth, spacing=(1.0, 1.0))


# ----------------------------------------------------------- presence, classes

def test_presence_metrics_on_a_known_confusion_matrix():
    # 4 hemispheres with a sulcus (present or prominent), 3 without
    truth = ["present", "prominent", "present", "prominent", "absent", "absent", "absent"]
    pred = ["prominent", "prominent", "present", "absent", "absent", "absent", "present"]
    m = presence_metrics(truth, pred)
    assert (m.tp, m.fn, m.tn, m.fp) == (3, 1, 2, 1)
    assert (m.n, m.n_present) == (7, 4)
    assert m.accuracy == pytest.approx(5 / 7)
    assert m.sensitivity == pytest.approx(3 / 4)
    assert m.specificity == pytest.approx(2 / 3)
    assert m.balanced_accuracy == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert m.f1 == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert np.isnan(m.roc_auc)  # no scores given
    # indices mean the same as names
    again = presence_metrics(encode_classes(truth), encode_classes(pred))
    assert (again.tp, again.fn, again.tn, again.fp, again.f1) == (m.tp, m.fn, m.tn, m.fp, m.f1)
    assert three_class_accuracy(truth, pred) == pytest.approx(4 / 7)


def test_presence_metrics_agree_with_scikit_learn():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 3, size=60)
    pred = np.where(rng.random(60) < 0.7, truth, rng.integers(0, 3, size=60))
    score = (truth > 0) * 0.3 + rng.random(60)
    m = presence_metrics(truth, pred, score)
    y, p = truth > 0, pred > 0
    assert m.accuracy == pytest.approx(sklearn_metrics.accuracy_score(y, p))
    assert m.balanced_accuracy == pytest.approx(sklearn_metrics.balanced_accuracy_score(y, p))
    assert m.f1 == pytest.approx(sklearn_metrics.f1_score(y, p))
    assert m.sensitivity == pytest.approx(sklearn_metrics.recall_score(y, p))
    assert m.specificity == pytest.approx(sklearn_metrics.recall_score(~y, ~p))
    assert m.roc_auc == pytest.approx(sklearn_metrics.roc_auc_score(y, score))


def test_roc_auc_on_known_rankings():
    truth = [1, 1, 0, 0]
    assert roc_auc(truth, [0.9, 0.8, 0.2, 0.1]) == 1.0
    assert roc_auc(truth, [0.1, 0.2, 0.8, 0.9]) == 0.0
    # pairs (pos, neg): 0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1
    assert roc_auc(truth, [0.9, 0.4, 0.5, 0.1]) == pytest.approx(0.75)
    # a tie between a positive and a negative counts one half
    assert roc_auc([1, 0], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([1, 1, 0], [0.7, 0.5, 0.5]) == pytest.approx(0.75)


def test_single_class_truth_gives_nan_where_undefined():
    m = presence_metrics(["present"] * 4, ["present", "absent", "present", "present"],
                         [0.9, 0.2, 0.8, 0.7])
    assert m.sensitivity == pytest.approx(0.75)
    assert np.isnan(m.specificity)
    assert m.balanced_accuracy == pytest.approx(0.75)  # recall of the only class
    assert np.isnan(m.roc_auc)
    nobody = presence_metrics(["absent"] * 3, ["absent"] * 3)
    assert nobody.accuracy == 1.0 and nobody.specificity == 1.0
    assert np.isnan(nobody.f1) and np.isnan(nobody.sensitivity)


def test_classification_metrics_from_probabilities():
    truth = ["absent", "present", "prominent", "present", "absent"]
    probs = np.array([
        [0.7, 0.2, 0.1],   # absent, right
        [0.2, 0.5, 0.3],   # present, right
        [0.1, 0.6, 0.3],   # predicted present, truly prominent: presence right
        [0.5, 0.3, 0.2],   # predicted absent, truly present; presence p = 0.5
        [0.3, 0.1, 0.6],   # predicted prominent, truly absent; presence p = 0.7
    ])
    m = classification_metrics(truth, torch.from_numpy(probs))
    assert m.accuracy_3class == pytest.approx(2 / 5)
    assert m.confusion == ((1, 0, 1), (1, 1, 0), (0, 1, 0))
    assert (m.presence.tp, m.presence.fn, m.presence.tn, m.presence.fp) == (2, 1, 1, 1)
    np.testing.assert_allclose(presence_probability(probs), [0.3, 0.8, 0.9, 0.5, 0.7])
    # presence scores: positives 0.8, 0.9, 0.5; negatives 0.3, 0.7: 5 of 6 pairs
    # ranked right (only 0.5 < 0.7 is not)
    assert m.presence.roc_auc == pytest.approx(5 / 6)


def test_three_class_balanced_accuracy_and_macro_f1_agree_with_scikit_learn():
    from sklearn.metrics import balanced_accuracy_score, f1_score

    rng = np.random.default_rng(3)
    for _ in range(20):
        truth = rng.choice(3, size=30, p=[0.5, 0.4, 0.1])
        probs = rng.dirichlet([1, 1, 1], size=30)
        m = classification_metrics(truth, probs)
        pred = probs.argmax(axis=1)
        assert m.balanced_accuracy_3class == pytest.approx(balanced_accuracy_score(truth, pred))
        assert m.macro_f1_3class == pytest.approx(
            f1_score(truth, pred, average="macro", zero_division=0))
    # a model that always says "present" on a mostly absent set: accuracy hides it
    always = classification_metrics([0] * 8 + [1, 2], np.tile([0.1, 0.8, 0.1], (10, 1)))
    assert always.accuracy_3class == pytest.approx(0.1)
    assert always.balanced_accuracy_3class == pytest.approx(1 / 3)
    assert always.macro_f1_3class == pytest.approx((0 + 2 / 11 + 0) / 3)


def test_hemisphere_scores_count_each_score_where_it_means_something():
    # 0: sulcus found; 1: sulcus missed (empty prediction); 2: no sulcus, empty
    # prediction (Dice would be a free 1); 3: class-only label (no mask)
    truth = ["present", "prominent", "absent", "present"]
    probs = [[0.1, 0.8, 0.1], [0.7, 0.2, 0.1], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]
    scores = hemisphere_scores(truth, probs, dice=[0.8, 0.0, 1.0, np.nan],
                               hd95_mm=[2.5, np.nan, 0.0, np.nan], true_voxels=[50, 40, 0, 0],
                               has_mask=[True, True, True, False])
    flat = scores.as_dict()
    assert (flat["dice"], flat["dice_n"]) == (pytest.approx(0.4), 2)
    assert (flat["hd95_mm"], flat["hd95_mm_n"]) == (2.5, 1)
    assert (flat["presence_sensitivity"], flat["presence_sensitivity_n"]) == (
        pytest.approx(2 / 3), 3)
    assert (flat["presence_specificity"], flat["presence_specificity_n"]) == (1.0, 1)
    assert flat["presence_balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert flat["presence_auc_n"] == flat["macro_f1_3class_n"] == 4
    # a mask without a class (index -1): Dice only
    unclassed = hemisphere_scores(np.array([1, -1]), [[0.1, 0.8, 0.1], [0.8, 0.1, 0.1]],
                                  dice=[0.5, 0.7], hd95_mm=[2.0, 3.0], true_voxels=[9, 9])
    assert (unclassed.dice_n, unclassed.presence.n) == (2, 1)
    assert unclassed.as_dict()["presence_specificity_n"] == 0
    nothing = hemisphere_scores(["absent"], [[0.9, 0.05, 0.05]], dice=[1.0], hd95_mm=[0.0],
                                true_voxels=[0])
    assert np.isnan(nothing.dice) and nothing.dice_n == 0 and nothing.hd95_n == 0
    with pytest.raises(ValueError, match="differ in length"):
        hemisphere_scores(truth, probs, dice=[1.0], hd95_mm=[0.0] * 4, true_voxels=[1] * 4)


def test_unknown_classes_and_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="unknown class 'maybe'"):
        encode_classes(["present", "maybe"])
    with pytest.raises(ValueError, match="not in 0..2"):
        encode_classes([0, 3])
    assert encode_classes([" Present", "ABSENT", 2]).tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match="shape"):
        presence_probability(np.ones((3, 4)))
    # the binary scheme (absent, present) reads p_present
    np.testing.assert_allclose(presence_probability([[0.7, 0.3], [0.1, 0.9]]), [0.3, 0.9])
    binary = classification_metrics(["absent", "present", "present"],
                                    [[0.7, 0.3], [0.4, 0.6], [0.8, 0.2]])
    assert binary.confusion == ((1, 0), (1, 1)) and binary.classes == ("absent", "present")
    assert binary.presence.accuracy == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        presence_metrics(["present"], ["present", "absent"])


# ----------------------------------------------------------------- bootstrap

def paired_data(n_participants=40, seed=1):
    """Two hemispheres per participant: classes, predictions, participant ids."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 3, size=2 * n_participants)
    pred = np.where(rng.random(truth.size) < 0.8, truth, rng.integers(0, 3, size=truth.size))
    participants = np.repeat([f"sub-{i:02d}" for i in range(n_participants)], 2)
    return truth, pred, participants


def test_bootstrap_interval_contains_estimate_and_is_reproducible():
    truth, pred, participants = paired_data()

    def accuracy(rows):
        return presence_metrics(truth[rows], pred[rows]).accuracy

    ci = bootstrap_ci(accuracy, participants, n_resamples=300, seed=5)
    assert ci.estimate == pytest.approx(presence_metrics(truth, pred).accuracy)
    assert ci.lower <= ci.estimate <= ci.upper
    assert 0.0 < ci.upper - ci.lower < 0.4
    assert (ci.n_resamples, ci.n_defined, ci.level) == (300, 300, 0.95)
    assert bootstrap_ci(accuracy, participants, n_resamples=300, seed=5) == ci
    other = bootstrap_ci(accuracy, participants, n_resamples=300, seed=6)
    assert (other.lower, other.upper) != (ci.lower, ci.upper)
    wider = bootstrap_ci(accuracy, participants, n_resamples=300, seed=5, level=0.99)
    assert wider.lower <= ci.lower and wider.upper >= ci.upper


def test_bootstrap_keeps_the_hemispheres_of_a_participant_together():
    truth, pred, participants = paired_data(n_participants=15)
    seen = []

    def check(rows):
        ids, counts = np.unique(participants[rows], return_counts=True)
        seen.append(len(rows))
        assert np.all(counts % 2 == 0), "a participant lost one hemisphere"
        return float(len(ids))

    bootstrap_ci(check, participants, n_resamples=50, seed=0)
    assert set(seen) == {30}  # every resample has as many rows as the data


def test_bootstrap_of_several_statistics_counts_undefined_resamples():
    # 3 of 4 participants have a sulcus on both sides: some resamples have no
    # absent hemisphere and no AUC
    truth = np.array([1, 1, 2, 1, 1, 2, 0, 0])
    score = np.array([0.9, 0.8, 0.6, 0.7, 0.95, 0.4, 0.3, 0.5])
    participants = np.repeat(["a", "b", "c", "d"], 2)

    def stats(rows):
        m = presence_metrics(truth[rows], (score[rows] > 0.55).astype(int), score[rows])
        return {"accuracy": m.accuracy, "auc": m.roc_auc}

    cis = bootstrap_cis(stats, participants, n_resamples=200, seed=0)
    assert cis["auc"].estimate == pytest.approx(roc_auc(truth > 0, score))
    assert 0 < cis["auc"].n_defined < 200
    assert cis["accuracy"].n_defined == 200
    with pytest.raises(ValueError, match="level"):
        bootstrap_ci(lambda rows: 0.0, participants, level=1.5)


def test_paired_differences_resample_the_same_participants():
    """A constant gain per hemisphere: the paired interval is tight, the marginal ones overlap."""
    rng = np.random.default_rng(0)
    participants = np.repeat([f"{i:02d}" for i in range(30)], 2)
    base = rng.uniform(0.2, 0.9, size=60)  # participants differ a lot
    better = base + 0.03

    def mean_of(values):
        return lambda rows: {"dice": float(values[rows].mean())}

    shuffled = rng.permutation(60)  # the row order must not matter, only the participants
    a = bootstrap_draws(mean_of(better[shuffled]), participants[shuffled], n_resamples=400,
                        seed=2)
    b = bootstrap_draws(mean_of(base), participants, n_resamples=400, seed=2)
    paired = a.difference(b, "dice")
    assert paired.estimate == pytest.approx(0.03)
    assert paired.lower == pytest.approx(0.03) and paired.upper == pytest.approx(0.03)
    marginal_a, marginal_b = a.interval("dice"), b.interval("dice")
    assert marginal_a.lower < marginal_b.upper  # the marginal intervals overlap
    assert bootstrap_cis(mean_of(base), participants, n_resamples=400, seed=2)["dice"] == \
        marginal_b
    other = bootstrap_draws(mean_of(base[:58]), participants[:58], n_resamples=400, seed=2)
    with pytest.raises(ValueError, match="same participants"):
        a.difference(other, "dice")
