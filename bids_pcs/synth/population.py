"""Who the synthetic participants are: demographics, site and PCS classes.

Everything here is drawn before any image is made, so the population of a
cohort can be sampled without rendering (:func:`bids_pcs.synth.cohort.draw_population`).

Class prevalence: :mod:`bids_pcs.synth.prevalence` (the cited figures of the
benchmark preset and their source). The easy preset keeps round numbers in
the range reported for healthy adults, drawn independently per hemisphere:
left 27 / 41 / 32 %, right 45 / 35 / 20 % (absent / present / prominent).

Class and group are drawn independently: the cohort carries no built-in
association between diagnosis and PCS length.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bids_pcs.config import HEMISPHERES, LabelSettings
from bids_pcs.synth.prevalence import draw_classes

EASY_PREVALENCE: dict[str, tuple[float, float, float]] = {
    # hemisphere: P(absent), P(present), P(prominent)
    "L": (0.27, 0.41, 0.32),
    "R": (0.45, 0.35, 0.20),
}
GROUPS = ("control", "psychosis")
# lengths stay this far from a class threshold, so any reasonable way of
# measuring a mask (skeleton, principal axis, native or template space) agrees
LENGTH_MARGIN_MM = 3.5
ABSENT_SULCUS_MM = (6.0, 14.0)
PROMINENT_SPAN_MM = 20.0


@dataclass(frozen=True)
class ParticipantSpec:
    """What is drawn for one participant before any image is made."""

    label: str
    index: int
    age: int
    sex: str
    group: str
    source: str
    classes: dict[str, str]
    target_length_mm: dict[str, float | None]
    sessions: tuple[str | None, ...]
    head_scale: float
    site: str = "A"


def draw_length(rng: np.random.Generator, pcs_class: str, labels: LabelSettings,
                dimple_probability: float,
                absent_sulcus_mm: tuple[float, float] = ABSENT_SULCUS_MM) -> float | None:
    """Native length (mm) for a class, or ``None`` for no sulcus at all.

    An absent hemisphere has, with ``dimple_probability``, a short PCS-like
    sulcus of ``absent_sulcus_mm`` (kept below the present threshold minus
    the margin).
    """
    low, high = labels.present_min_mm, labels.prominent_min_mm
    if pcs_class == "absent":
        if rng.uniform() >= dimple_probability:
            return None
        top = min(absent_sulcus_mm[1], low - LENGTH_MARGIN_MM)
        return float(rng.uniform(min(absent_sulcus_mm[0], top), top))
    if pcs_class == "present":
        return float(rng.uniform(low + LENGTH_MARGIN_MM, high - LENGTH_MARGIN_MM))
    if pcs_class == "prominent":
        return float(rng.uniform(high + LENGTH_MARGIN_MM, high + PROMINENT_SPAN_MM))
    raise ValueError(f"unknown PCS class {pcs_class!r}")


def draw_participant(rng: np.random.Generator, *, index: int, label: str,
                     sources: tuple[str, ...], source_weights: tuple[float, ...],
                     prevalence: Mapping[str, tuple[float, float, float]],
                     labels: LabelSettings, dimple_probability: float,
                     sessions_fraction: float,
                     concordance: tuple[float, float, float] | None = None,
                     absent_sulcus_mm: tuple[float, float] = ABSENT_SULCUS_MM,
                     sites: tuple[str, ...] = ("A",),
                     site_weights: tuple[float, ...] = (1.0,)) -> ParticipantSpec:
    """Demographics, anatomy source, site, classes and lengths of one participant.

    With one site, no random number is drawn for it (the easy preset's
    stream stays that of earlier versions).
    """
    sex = str(rng.choice(["F", "M"]))
    age = int(rng.integers(18, 66))
    group = str(rng.choice(GROUPS))
    weights = np.asarray(source_weights, dtype=float)
    source = sources[int(rng.choice(len(sources), p=weights / weights.sum()))]
    classes = draw_classes(rng, prevalence, concordance)
    lengths = {h: draw_length(rng, classes[h], labels, dimple_probability, absent_sulcus_mm)
               for h in HEMISPHERES}
    if sessions_fraction <= 0:
        sessions: tuple[str | None, ...] = (None,)
    elif rng.uniform() < sessions_fraction:
        sessions = ("1", "2")
    else:
        sessions = ("1",)
    # intracranial volume is ~10 % larger in men; 3 % spread in linear size
    mean_scale = 1.0 if sex == "M" else 0.965
    head_scale = float(np.clip(rng.normal(mean_scale, 0.03), 0.9, 1.08))
    site = sites[0]
    if len(sites) > 1:
        w = np.asarray(site_weights, dtype=float)
        site = sites[int(rng.choice(len(sites), p=w / w.sum()))]
    return ParticipantSpec(label=label, index=index, age=age, sex=sex, group=group,
                           source=source, classes=classes, target_length_mm=lengths,
                           sessions=sessions, head_scale=head_scale, site=site)
