"""The study's participant-level splits: no overlap, the asked fractions, seeded, stratified."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bids_pcs.config import RecipeError, StudySettings
from bids_pcs.errors import InputDataError
from bids_pcs.finetuning.data import CropInfo
from bids_pcs.splits import (
    StudySplit,
    check_fractions,
    check_label_fractions,
    held_out_by_value,
    kfold_splits,
    label_subsets,
    labelled_split,
    make_splits,
    parse_test_on,
    part_sizes,
    participant_strata,
    split_participants,
)

strata_maps = st.dictionaries(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True),
                              st.integers(0, 2), min_size=3, max_size=80)
fraction_triples = st.tuples(st.integers(1, 8), st.integers(0, 4), st.integers(1, 4)).map(
    lambda t: tuple(v / sum(t) for v in t))


@given(strata=strata_maps, fractions=fraction_triples, seed=st.integers(0, 2**31))
@settings(max_examples=150, deadline=None)
def test_a_split_covers_every_participant_once_at_the_asked_fractions(strata, fractions, seed):
    split = split_participants(strata, fractions, seed=seed)
    parts = [set(split.train), set(split.validation), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(strata)
    n = len(strata)
    for members, fraction in zip(parts, fractions, strict=True):
        # largest-remainder rounding, plus at most one borrowed per empty part
        assert abs(len(members) - fraction * n) <= 2
        if fraction > 0:
            assert members
    assert split == split_participants(strata, fractions, seed=seed)  # seeded


@given(strata=strata_maps, k=st.integers(2, 6), seed=st.integers(0, 1000))
@settings(max_examples=100, deadline=None)
def test_k_folds_test_every_participant_exactly_once(strata, k, seed):
    if k > len(strata):
        with pytest.raises(InputDataError):
            kfold_splits(strata, k, seed=seed)
        return
    folds = kfold_splits(strata, k, seed=seed, validation_share=0.25)
    assert [f.fold for f in folds] == list(range(1, k + 1))
    tested = [s for fold in folds for s in fold.test]
    assert sorted(tested) == sorted(strata)
    for fold in folds:
        assert set(fold.participants) == set(strata)
        assert fold.train  # always something to train on
        assert max(len(f.test) for f in folds) - min(len(f.test) for f in folds) <= 1


def test_the_seed_changes_the_split_and_strata_are_balanced():
    strata = {f"{i:02d}": i % 3 for i in range(60)}
    first = split_participants(strata, (0.6, 0.2, 0.2), seed=0)
    assert (len(first.train), len(first.validation), len(first.test)) == (36, 12, 12)
    assert first != split_participants(strata, (0.6, 0.2, 0.2), seed=1)
    for part in (first.validation, first.test):
        counts = [sum(strata[s] == k for s in part) for k in range(3)]
        assert counts == [4, 4, 4]  # 20 per stratum: each part takes a fifth of each


def test_participant_strata_count_pcs_hemispheres_over_sessions():
    def crop(subject, session, hemisphere, pcs_class):
        prefix = f"sub-{subject}_ses-{session}"
        return CropInfo(name=f"{prefix}_hemi-{hemisphere}", subject=subject, session=session,
                        prefix=prefix, hemisphere=hemisphere, pcs_class=pcs_class,
                        class_source="participants.tsv", pcs_voxels=0)

    info = [crop("01", "1", "L", "present"), crop("01", "1", "R", "absent"),
            crop("01", "2", "L", "present"), crop("01", "2", "R", "prominent"),
            crop("02", "1", "L", "absent"), crop("02", "1", "R", "absent")]
    assert participant_strata(info) == {"01": 2, "02": 0}


def test_part_sizes_round_by_largest_remainder_and_never_leave_a_part_empty():
    assert part_sizes(6, (0.6, 0.2, 0.2)) == (4, 1, 1)
    assert part_sizes(10, (0.6, 0.2, 0.2)) == (6, 2, 2)
    assert part_sizes(3, (0.6, 0.2, 0.2)) == (1, 1, 1)
    assert part_sizes(4, (0.8, 0.0, 0.2)) == (3, 0, 1)
    with pytest.raises(InputDataError, match="at least 3"):
        part_sizes(2, (0.6, 0.2, 0.2))


def test_settings_choose_one_split_or_folds_and_bad_fractions_are_refused():
    strata = {f"{i:02d}": 0 for i in range(10)}
    [single] = make_splits(strata, StudySettings(), seed=0)
    assert single.fold == 0 and len(single.test) == 2
    folds = make_splits(strata, StudySettings(folds=5), seed=0)
    assert len(folds) == 5 and all(len(f.test) == 2 and len(f.validation) == 2 for f in folds)
    with pytest.raises(RecipeError, match="sum to 1"):
        check_fractions(StudySettings(train_fraction=0.7))
    with pytest.raises(RecipeError, match="test_fraction > 0"):
        check_fractions(StudySettings(train_fraction=0.8, test_fraction=0.0))


def test_a_split_refuses_a_participant_in_two_parts():
    with pytest.raises(ValueError, match="both train and test"):
        StudySplit(fold=0, train=("01", "02"), validation=(), test=("02",))
    split = StudySplit(fold=0, train=("01",), validation=("02",), test=("03",))
    assert StudySplit.from_dict(split.to_dict()) == split
    assert split.part_of("02") == "validation"


def test_finetuning_the_study_and_the_demo_hold_out_with_the_one_split():
    """Fine-tuning's validation part and the demo's held-out part are ``split_participants``."""
    from finetune_helpers import labelled_crops

    from bids_pcs.demo import split_participants as demo_split
    from bids_pcs.finetuning import split_by_participant

    subjects = [f"{s:02d}" for s in range(1, 11) for _ in range(4)]
    data = labelled_crops(40, subjects=subjects)
    strata = participant_strata(data.info)
    expected = split_participants(strata, (0.7, 0.3, 0.0), seed=4)
    train, validation = split_by_participant(data, 0.3, seed=4)
    assert validation.participants == list(expected.validation)
    assert train.participants == list(expected.train)

    class Cohort:  # the demo reads participants.tsv rows
        participants = [{"participant_id": f"sub-{i:02d}",
                         "pcs_left": ("absent", "present")[i % 2],
                         "pcs_right": ("absent", "prominent")[i % 3 == 0]}
                        for i in range(1, 13)]

    train, held = demo_split(Cohort, 0.25, seed=2)
    demo_strata = {f"{i:02d}": (i % 2) + (i % 3 == 0) for i in range(1, 13)}
    reference = split_participants(demo_strata, (9, 0, 3), seed=2 + 7919)
    assert held == list(reference.test) and len(held) == 3
    assert train == list(reference.train)
    counts = [sum(demo_strata[s] == k for s in held) for k in range(3)]
    assert counts == [1, 1, 1]  # strata of 4, 6 and 2 participants: one of each held out


@given(strata=strata_maps, seed=st.integers(0, 2**31),
       fractions=st.lists(st.sampled_from([0.05, 0.1, 0.25, 0.5, 0.75, 1.0]), min_size=1,
                          max_size=5, unique=True))
@settings(max_examples=150, deadline=None)
def test_label_subsets_are_nested_stratified_and_of_the_asked_size(strata, seed, fractions):
    participants = sorted(strata)
    subsets = label_subsets(strata, participants, fractions, seed=seed)
    n = len(participants)
    ordered = sorted(subsets)
    for small, large in zip(ordered, ordered[1:], strict=False):
        assert set(subsets[small]) <= set(subsets[large])  # labels are added, never swapped
    for fraction, subset in subsets.items():
        size = n if fraction == 1.0 else max(1, round(fraction * n))
        assert len(subset) == size and len(set(subset)) == size
        assert set(subset) <= set(participants)
        for stratum in set(strata.values()):  # each stratum within one of its share
            share = sum(strata[p] == stratum for p in participants) / n
            count = sum(strata[p] == stratum for p in subset)
            assert abs(count - share * size) < 1 + 1e-9, (fraction, stratum)
    assert label_subsets(strata, participants, fractions, seed=seed) == subsets


def test_label_subsets_follow_the_seed_and_keep_validation_and_test():
    strata = {f"{i:02d}": i % 3 for i in range(40)}
    split = StudySplit(fold=2, train=tuple(sorted(strata))[:30], validation=("30", "31"),
                       test=tuple(f"{i}" for i in range(32, 40)))
    a, b = (label_subsets(strata, split.train, (0.1, 0.5), seed=s) for s in (0, 1))
    assert a != b
    assert sorted(strata[p] for p in a[0.1]) == [0, 1, 2]
    cut = labelled_split(split, strata, 0.5, seed=0)
    assert cut.train == a[0.5] and (cut.validation, cut.test, cut.fold) == (
        split.validation, split.test, 2)
    assert labelled_split(split, strata, 1.0, seed=0) is split


@pytest.mark.bad_input("recipe:label fraction 0", "recipe:label fraction above 1")
def test_label_fractions_outside_zero_to_one_are_refused():
    assert check_label_fractions([0.5, 1, 0.5]) == (0.5, 1.0)
    for bad in ([0.0, 1.0], [1.5], []):
        with pytest.raises(RecipeError, match="label_fractions must hold shares"):
            check_label_fractions(bad)


@given(strata=st.dictionaries(st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True),
                              st.integers(0, 2), min_size=8, max_size=60),
       chosen=st.integers(0, 2**31), folds=st.sampled_from([0, 2, 3]),
       seed=st.integers(0, 2**31))
@settings(max_examples=100, deadline=None)
def test_out_of_distribution_participants_never_train_validate_or_test_in_distribution(
        strata, chosen, folds, seed):
    subjects = sorted(strata)
    site = {s: "B" if (sum(map(ord, s)) + chosen) % 3 == 0 else "A" for s in subjects}
    site[subjects[0]], site[subjects[-1]] = "B", "A"  # both values occur
    ood = held_out_by_value(site, "B", column="site", participants=subjects)
    assert ood == {s for s in subjects if site[s] == "B"}
    rest = len(subjects) - len(ood)
    if rest < max(3, folds):
        return
    study = StudySettings(folds=folds, test_on="site=B")
    for split in make_splits(strata, study, seed=seed, ood=ood):
        assert set(split.ood_test) == ood
        assert not ood & set(split.train + split.validation + split.test)
        assert set(split.train + split.validation + split.test) == set(subjects) - ood
        assert StudySplit.from_dict(split.to_dict()) == split
    # the in-distribution split is the one the others alone would get
    plain = make_splits({s: k for s, k in strata.items() if s not in ood}, study, seed=seed)
    assert [s.test for s in make_splits(strata, study, seed=seed, ood=ood)] == \
        [s.test for s in plain]


def test_test_on_is_column_equals_value_and_must_split_the_participants():
    assert parse_test_on("anatomy_source=Colin27") == ("anatomy_source", "Colin27")
    assert parse_test_on(" site = B ") == ("site", "B")
    for bad in ("site", "=B", "site=", ""):
        with pytest.raises(RecipeError, match="COLUMN=VALUE"):
            parse_test_on(bad)
    values = {"01": "A", "02": "B", "03": "A"}
    with pytest.raises(InputDataError, match="No participant has site=C"):
        held_out_by_value(values, "C", column="site")
    with pytest.raises(InputDataError, match="nothing is left to train on"):
        held_out_by_value({"01": "B", "02": "B"}, "B", column="site")
    with pytest.raises(InputDataError, match="no value for participant"):
        held_out_by_value(values, "B", column="site", participants=["01", "04"])
    with pytest.raises(InputDataError, match="without labelled crops"):
        make_splits({"01": 0, "02": 1, "03": 2, "04": 0}, StudySettings(), ood={"09"})
    # an old split record (before ood_test existed) still reads
    assert StudySplit.from_dict({"fold": 0, "train": ["01"], "validation": [],
                                 "test": ["02"]}).ood_test == ()
