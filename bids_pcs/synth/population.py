"""Who the synthetic participants are: demographics and PCS classes.

Class prevalence per hemisphere (absent / present / prominent, with the
Yuecel et al. 2001 length protocol) is set to round numbers in the range
reported for healthy adults: left 27 / 41 / 32 %, right 45 / 35 / 20 %.
Paus et al. 1996 (Cereb Cortex 6:207) and Yuecel et al. 2001 (Cereb Cortex
11:17) found the PCS more often, and more often prominent, in the left
hemisphere (absent in roughly a quarter to a third of left and about half of
right hemispheres); Garrison et al. 2015 (Nat Commun 6:8956) report the same
leftward asymmetry. These are defaults; pass your own to
:class:`~bids_pcs.synth.cohort.SynthOptions`.

Class and group are drawn independently: the cohort carries no built-in
association between diagnosis and PCS length.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_pcs.config import HEMISPHERES, PCS_CLASSES, LabelSettings

DEFAULT_PREVALENCE: dict[str, tuple[float, float, float]] = {
    # hemisphere: P(absent), P(present), P(prominent)
    "L": (0.27, 0.41, 0.32),
    "R": (0.45, 0.35, 0.20),
}
GROUPS = ("control", "psychosis")
# lengths stay this far from a class threshold, so any reasonable way of
# measuring a mask (skeleton, principal axis, native or template space) agrees
LENGTH_MARGIN_MM = 3.5
ABSENT_DIMPLE_MM = (6.0, 14.0)
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


def draw_class(rng: np.random.Generator, prevalence: tuple[float, float, float]) -> str:
    """One PCS class with the given probabilities (absent, present, prominent)."""
    p = np.asarray(prevalence, dtype=float)
    return str(PCS_CLASSES[int(rng.choice(3, p=p / p.sum()))])


def draw_length(rng: np.random.Generator, pcs_class: str, labels: LabelSettings,
                dimple_probability: float) -> float | None:
    """Native length (mm) for a class, or ``None`` for no sulcus at all."""
    low, high = labels.present_min_mm, labels.prominent_min_mm
    if pcs_class == "absent":
        if rng.uniform() >= dimple_probability:
            return None
        top = min(ABSENT_DIMPLE_MM[1], low - LENGTH_MARGIN_MM)
        return float(rng.uniform(min(ABSENT_DIMPLE_MM[0], top), top))
    if pcs_class == "present":
        return float(rng.uniform(low + LENGTH_MARGIN_MM, high - LENGTH_MARGIN_MM))
    if pcs_class == "prominent":
        return float(rng.uniform(high + LENGTH_MARGIN_MM, high + PROMINENT_SPAN_MM))
    raise ValueError(f"unknown PCS class {pcs_class!r}")


def draw_participant(rng: np.random.Generator, *, index: int, label: str,
                     sources: tuple[str, ...], source_weights: tuple[float, ...],
                     prevalence: dict[str, tuple[float, float, float]],
                     labels: LabelSettings, dimple_probability: float,
                     sessions_fraction: float) -> ParticipantSpec:
    """Demographics, anatomy source, classes and lengths of one participant."""
    sex = str(rng.choice(["F", "M"]))
    age = int(rng.integers(18, 66))
    group = str(rng.choice(GROUPS))
    weights = np.asarray(source_weights, dtype=float)
    source = sources[int(rng.choice(len(sources), p=weights / weights.sum()))]
    classes = {h: draw_class(rng, prevalence[h]) for h in HEMISPHERES}
    lengths = {h: draw_length(rng, classes[h], labels, dimple_probability)
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
    return ParticipantSpec(label=label, index=index, age=age, sex=sex, group=group,
                           source=source, classes=classes, target_length_mm=lengths,
                           sessions=sessions, head_scale=head_scale)
