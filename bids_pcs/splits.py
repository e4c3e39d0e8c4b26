"""Participant-level splits: train / validation / test, or k folds (the one split module).

Every part of the app that holds participants out uses this module: the
fine-tuning level's validation participants
(:func:`bids_pcs.finetuning.split_by_participant`), the study's
train/validation/test split or folds (:mod:`bids_pcs.levels.study`) and the
demo's held-out participants (:mod:`bids_pcs.demo`).

The unit is the *participant*: both hemispheres and every session of a
participant land in the same part, so no test participant's anatomy is ever
seen in training (their two hemispheres and repeated scans are not
independent).  Splits are seeded and stratified by how many hemispheres of a
participant have a PCS (0, 1 or 2, the most over their sessions), so every
part sees absent and present sulci in similar proportions:

1. participants are shuffled with the seed, then ordered by stratum (stable,
   so the order is random within a stratum);
2. a single split takes the test participants at even steps along that order,
   then the validation participants at even steps along what is left;
3. k folds deal the ordered participants round-robin into k test folds; in
   each fold the validation participants are taken at even steps along the
   remaining ones, in the ratio ``validation_fraction : train_fraction``.

Label efficiency (``[study] label_fractions``): :func:`label_subsets` draws,
from a split's training participants, nested subsets holding each fraction of
them (every smaller subset inside every larger one, so a curve adds labels
rather than swapping participants), each stratified like the split: the
participants are shuffled within their stratum and interleaved so that every
prefix of that order holds the strata in the training part's proportions; a
subset is a prefix.  :func:`labelled_split` is the split a configuration
fine-tunes on (validation and test unchanged).

Out of distribution (``[study] test_on = "COLUMN=VALUE"``): the participants
whose ``participants.tsv`` COLUMN equals VALUE (a site, an anatomy source,
a scanner) are the ``ood_test`` part of every split and nothing else: the
others alone are split (or folded) as above, so a model trains and validates
on them, is tested in distribution on their ``test`` part and out of
distribution on ``ood_test``.

Usage::

    strata = participant_strata(labelled.info)           # {"01": 2, "02": 0, ...}
    [split] = make_splits(strata, settings.study, seed=0)
    split.train, split.validation, split.test             # participant labels
    label_subsets(strata, split.train, (0.25, 1.0), seed=0)   # {0.25: (...), 1.0: (...)}
    column, value = parse_test_on("site=B")
    ood = held_out_by_value(values_of_column, value)      # {"04", "07"}
    [split] = make_splits(strata, settings.study, seed=0, ood=ood)
    split.ood_test                                        # ("04", "07")
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from bids_pcs.config import RecipeError, StudySettings
from bids_pcs.errors import InputDataError

PARTS: tuple[str, ...] = ("train", "validation", "test", "ood_test")
_TOLERANCE = 1e-6


@dataclass(frozen=True)
class StudySplit:
    """One partition of the participants.

    Args:
        fold: 0 for the single train/validation/test split, 1..k for the folds.
        train, validation, test: participant labels (without ``sub-``), sorted.
        ood_test: the out-of-distribution test participants (``[study]
            test_on``), sorted; empty without one.
    """

    fold: int
    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]
    ood_test: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for part in PARTS:
            for subject in getattr(self, part):
                if subject in seen:
                    raise ValueError(f"participant {subject} is in both {seen[subject]} and "
                                     f"{part}")
                seen[subject] = part

    def part_of(self, subject: str) -> str:
        """``"train"``, ``"validation"`` or ``"test"``."""
        for part in PARTS:
            if subject in getattr(self, part):
                return part
        raise KeyError(subject)

    @property
    def participants(self) -> tuple[str, ...]:
        return tuple(sorted(self.train + self.validation + self.test))

    def to_dict(self) -> dict[str, Any]:
        return {"fold": self.fold, **{part: list(getattr(self, part)) for part in PARTS}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StudySplit:
        return cls(fold=int(data["fold"]),
                   **{part: tuple(data.get(part, ())) for part in PARTS})


class LabelledHemisphere(NamedTuple):
    """The least a stratum needs to know about one labelled hemisphere.

    :class:`bids_pcs.finetuning.CropInfo` carries the same three fields.
    """

    subject: str
    prefix: str
    pcs_class: str


def participant_strata(info: Iterable[Any]) -> dict[str, int]:
    """Stratum of each participant: the most hemispheres with a PCS in any of their images.

    Args:
        info: hemisphere records with ``subject``, ``prefix`` (the image) and
            ``pcs_class`` (:class:`LabelledHemisphere`,
            :class:`bids_pcs.finetuning.CropInfo`).
    """
    per_image: dict[tuple[str, str], int] = {}
    for item in info:
        key = (item.subject, item.prefix)
        # a hemisphere without a known class (None) counts as no PCS
        per_image[key] = per_image.get(key, 0) + (item.pcs_class not in ("absent", None))
    strata: dict[str, int] = {}
    for (subject, _), count in per_image.items():
        strata[subject] = max(strata.get(subject, 0), count)
    return dict(sorted(strata.items()))


def check_fractions(study: StudySettings) -> None:
    """Refuse fractions that are negative, do not sum to 1, or leave no train or test part."""
    fractions = (study.train_fraction, study.validation_fraction, study.test_fraction)
    if min(fractions) < 0 or abs(sum(fractions) - 1.0) > _TOLERANCE:
        raise RecipeError(
            f"[study] train_fraction, validation_fraction and test_fraction must be >= 0 and "
            f"sum to 1, not {fractions}; fix the recipe or --set them.")
    if study.train_fraction <= 0 or (study.folds < 2 and study.test_fraction <= 0):
        raise RecipeError("[study] needs train_fraction > 0 and test_fraction > 0 (or "
                             "folds >= 2): a study trains and tests on separate participants.")
    if study.folds < 0:
        raise RecipeError(f"[study] folds must be 0 (one split) or at least 2, not "
                             f"{study.folds}.")


def make_splits(strata: Mapping[str, int], study: StudySettings, seed: int = 0,
                ood: Iterable[str] = ()) -> list[StudySplit]:
    """The study's split(s): one train/validation/test split, or ``study.folds`` folds.

    Args:
        strata: participant -> stratum (see :func:`participant_strata`).
        study: fractions and folds.
        seed: the same seed and participants give the same split.
        ood: out-of-distribution participants (see :func:`held_out_by_value`):
            the ``ood_test`` part of every split; only the others are split.

    Raises:
        InputDataError: an ``ood`` participant without labels, or too few
            participants left in distribution.
    """
    check_fractions(study)
    ood = set(ood)
    unknown = sorted(ood - set(strata))
    if unknown:
        raise InputDataError(f"[study] test_on names participant(s) without labelled crops "
                             f"({', '.join(unknown[:5])}); check the label dataset.")
    rest = {s: k for s, k in strata.items() if s not in ood}
    if study.folds >= 2:
        splits = kfold_splits(rest, study.folds, seed=seed,
                              validation_share=_validation_share(study))
    else:
        splits = [split_participants(rest, (study.train_fraction, study.validation_fraction,
                                            study.test_fraction), seed=seed)]
    if not ood:
        return splits
    return [dataclasses.replace(split, ood_test=tuple(sorted(ood))) for split in splits]


def parse_test_on(text: str) -> tuple[str, str]:
    """``"site=B"`` -> ``("site", "B")``: the ``[study] test_on`` setting.

    Raises:
        RecipeError: not of the form COLUMN=VALUE.
    """
    column, sep, value = text.partition("=")
    column, value = column.strip(), value.strip()
    if not sep or not column or not value:
        raise RecipeError(f"[study] test_on must be COLUMN=VALUE of participants.tsv, e.g. "
                          f"'site=B' or 'anatomy_source=Colin27', not {text!r}.")
    return column, value


def held_out_by_value(values: Mapping[str, str], value: str, *, column: str = "",
                      participants: Iterable[str] | None = None) -> set[str]:
    """The participants whose ``column`` (``values``: participant -> its value) is ``value``.

    Args:
        values: participant label (without ``sub-``) -> value of the column.
        value: the value that marks the out-of-distribution participants.
        column: the column's name, for the error messages.
        participants: the labelled participants; every one of them needs a value.

    Raises:
        InputDataError: no participant has ``value``, or every participant has
            it, or a labelled participant has no value in the column.
    """
    where = f"participants.tsv column {column!r}" if column else "participants.tsv"
    if participants is not None:
        missing = sorted(set(participants) - set(values))
        if missing:
            raise InputDataError(f"{where} has no value for participant(s) "
                                 f"{', '.join(missing[:5])}; add them or drop [study] test_on.")
        values = {s: values[s] for s in participants}
    held = {s for s, v in values.items() if str(v) == value}
    if not held:
        seen = ", ".join(sorted({str(v) for v in values.values()})[:8])
        raise InputDataError(f"No participant has {column or 'the column'}={value} in "
                             f"{where} (values: {seen}); fix [study] test_on.")
    if len(held) == len(values):
        raise InputDataError(f"Every participant has {column or 'the column'}={value} in "
                             f"{where}: nothing is left to train on; fix [study] test_on.")
    return held


def split_participants(strata: Mapping[str, int],
                       fractions: Sequence[float] = (0.6, 0.2, 0.2), *, seed: int = 0,
                       fold: int = 0) -> StudySplit:
    """A seeded, stratified train/validation/test split of the participants.

    Args:
        strata: participant -> stratum (see :func:`participant_strata`).
        fractions: shares of participants in train, validation and test
            (relative weights: they are divided by their sum, so participant
            counts work too).  Part sizes are the fractions times the count,
            rounded by largest remainder; a part with a positive fraction gets
            at least one participant and train is never empty.
        seed: the same seed and participants give the same split.
        fold: stored in the result.

    Raises:
        InputDataError: too few participants for the parts asked for.
    """
    order = stratified_order(strata, seed)
    n_train, n_validation, n_test = part_sizes(len(order), fractions)
    test = _even_steps(order, n_test)
    rest = [s for s in order if s not in test]
    validation = _even_steps(rest, n_validation)
    train = [s for s in rest if s not in validation]
    assert len(train) == n_train
    return StudySplit(fold=fold, train=tuple(sorted(train)),
                      validation=tuple(sorted(validation)), test=tuple(sorted(test)))


def kfold_splits(strata: Mapping[str, int], k: int, *, seed: int = 0,
                 validation_share: float = 0.25) -> list[StudySplit]:
    """``k`` seeded, stratified folds: every participant is tested in exactly one fold.

    Args:
        strata: participant -> stratum.
        k: number of folds (2 <= k <= participants).
        seed: the same seed and participants give the same folds.
        validation_share: share of each fold's non-test participants used for
            validation (at least one when above 0, never all).
    """
    order = stratified_order(strata, seed)
    if not 2 <= k <= len(order):
        raise InputDataError(f"[study] folds = {k} needs between 2 and {len(order)} "
                             f"participants per fold; there are {len(order)} participants.")
    test_folds = [order[i::k] for i in range(k)]  # round-robin along strata: stratified folds
    splits = []
    for index, test in enumerate(test_folds, start=1):
        rest = [s for s in order if s not in test]
        n_validation = _at_least_one(validation_share * len(rest), validation_share > 0)
        n_validation = min(n_validation, len(rest) - 1)
        validation = _even_steps(rest, n_validation)
        train = [s for s in rest if s not in validation]
        splits.append(StudySplit(fold=index, train=tuple(sorted(train)),
                                 validation=tuple(sorted(validation)),
                                 test=tuple(sorted(test))))
    return splits


def stratified_order(strata: Mapping[str, int], seed: int) -> list[str]:
    """Participants shuffled with ``seed``, then stably sorted by stratum."""
    subjects = sorted(strata)
    rng = np.random.default_rng(seed)
    shuffled = [subjects[i] for i in rng.permutation(len(subjects))]
    return sorted(shuffled, key=lambda s: strata[s])


def part_sizes(n: int, fractions: Sequence[float]) -> tuple[int, ...]:
    """Participants per part: largest-remainder rounding, at least one where the fraction is > 0.

    Raises:
        InputDataError: fewer participants than parts with a positive fraction.
    """
    fractions = [float(f) for f in fractions]
    needed = sum(1 for f in fractions if f > 0)
    if n < needed:
        raise InputDataError(
            f"The split needs at least {needed} labelled participants for its "
            f"{needed} parts (train, validation, test); only {n} passed preprocessing.")
    exact = [f * n / sum(fractions) for f in fractions]
    sizes = [int(np.floor(e)) for e in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (exact[i] - sizes[i], -i),
                          reverse=True)
    for i in by_remainder[: n - sum(sizes)]:
        sizes[i] += 1
    # an empty part with a positive fraction borrows from the largest part
    for i, fraction in enumerate(fractions):
        if fraction > 0 and sizes[i] == 0:
            donor = max(range(len(sizes)), key=lambda j: sizes[j])
            sizes[donor] -= 1
            sizes[i] += 1
    return tuple(sizes)


def _validation_share(study: StudySettings) -> float:
    # with folds the test part is one fold; the other two fractions keep their ratio
    denominator = study.train_fraction + study.validation_fraction
    return study.validation_fraction / denominator if denominator > 0 else 0.0


def _at_least_one(value: float, positive: bool) -> int:
    return max(1, int(round(value))) if positive else 0


def _even_steps(order: Sequence[str], count: int) -> list[str]:
    """``count`` items spread evenly along ``order`` (so along the strata)."""
    if count <= 0:
        return []
    step = len(order) / count
    return [order[int((j + 0.5) * step)] for j in range(count)]


def check_label_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """The label fractions, each in (0, 1], without repeats, in the recipe's order.

    Raises:
        RecipeError: empty, or a fraction outside (0, 1].
    """
    values = tuple(dict.fromkeys(float(f) for f in fractions))
    if not values or any(not 0.0 < f <= 1.0 for f in values):
        raise RecipeError(f"[study] label_fractions must hold shares in (0, 1], such as "
                          f"[0.25, 0.5, 1.0], not {list(fractions)}.")
    return values


def label_order(strata: Mapping[str, int], participants: Sequence[str], seed: int,
                ) -> list[str]:
    """``participants`` in an order whose every prefix is stratified like the whole.

    Shuffled with ``seed`` within each stratum, then interleaved: position k
    takes the next participant of the stratum furthest below its share of the
    first k + 1 (ties: the larger stratum, then the lower one).
    """
    rng = np.random.default_rng(seed)
    groups: dict[int, list[str]] = {}
    for subject in sorted(participants):
        groups.setdefault(strata[subject], []).append(subject)
    queues = {stratum: [members[i] for i in rng.permutation(len(members))]
              for stratum, members in sorted(groups.items())}
    total = len(participants)
    share = {stratum: len(members) / total for stratum, members in queues.items()}
    taken = dict.fromkeys(queues, 0)
    order: list[str] = []
    for position in range(total):
        open_strata = [s for s in queues if taken[s] < len(queues[s])]
        stratum = max(open_strata, key=lambda s: ((position + 1) * share[s] - taken[s],
                                                  len(queues[s]), -s))
        order.append(queues[stratum][taken[stratum]])
        taken[stratum] += 1
    return order


def label_subsets(strata: Mapping[str, int], participants: Sequence[str],
                  fractions: Sequence[float], seed: int = 0) -> dict[float, tuple[str, ...]]:
    """Nested, stratified subsets of ``participants`` holding each share of them.

    Args:
        strata: participant -> stratum (see :func:`participant_strata`).
        participants: the training participants of a split.
        fractions: shares in (0, 1]; a subset holds ``round(f * n)`` of them,
            at least one (1.0 is all of them).
        seed: the same seed and participants give the same subsets.

    Returns:
        fraction -> sorted participant labels; a smaller fraction's subset
        lies inside every larger one's.
    """
    order = label_order(strata, participants, seed)
    n = len(order)
    out = {}
    for fraction in check_label_fractions(fractions):
        size = n if fraction >= 1.0 else min(n, max(1, int(round(fraction * n))))
        out[fraction] = tuple(sorted(order[:size]))
    return out


def labelled_split(split: StudySplit, strata: Mapping[str, int], fraction: float,
                   seed: int = 0) -> StudySplit:
    """``split`` with its training part cut to the ``fraction`` subset of :func:`label_subsets`."""
    if fraction >= 1.0:
        return split
    train = label_subsets(strata, split.train, (fraction,), seed=seed)[float(fraction)]
    return StudySplit(fold=split.fold, train=train, validation=split.validation,
                      test=split.test)
