"""How often each PCS class occurs, per hemisphere and in both: the cited figures.

Source of every number below (its abstract):

    Cingulate sulcus morphology and paracingulate sulcus variations:
    Anatomical and radiological studies. Clinical Anatomy, 2023
    (PMID 36403099). MRI of 149 healthy volunteers: left hemisphere
    prominent 48 (32.21 %), absent 57 (38.26 %); right hemisphere absent 73
    (48.99 %); both hemispheres prominent 10 (6.71 %), both present 19
    (12.75 %), both absent 35 (23.49 %).

The left hemisphere's present class is what remains: 44 (29.53 %).

**Assumption, not a cited figure:** the abstract does not split the right
hemisphere's 76 sulci into present and prominent. Here 44 are present (as
many as on the left) and 32 prominent: the right's excess of absent sulci
(73 against 57) is taken from the prominent class, because the consistent
finding of the literature is a leftward asymmetry of the PCS, and of
prominent sulci in particular (Paus et al. 1996, Cereb Cortex; Yuecel et al.
2001; Le Provost et al. 2003; Fornito et al. 2004).

Both hemispheres: the three cited both-hemisphere counts fix the diagonal of
the 3 x 3 table (left class x right class); its six other cells are fitted to
the per-hemisphere figures by iterative proportional fitting started from
the product of the two hemispheres' figures (the table closest to
independent hemispheres that agrees with every cited number). Drawing a
participant's classes from that table gives the cited concordance: the two
hemispheres of one brain are correlated.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from bids_pcs.config import PCS_CLASSES

CITED_SOURCE = ("Cingulate sulcus morphology and paracingulate sulcus variations: "
                "Anatomical and radiological studies. Clinical Anatomy 2023, PMID 36403099 "
                "(MRI, 149 healthy volunteers)")
CITED_N = 149
# (absent, present, prominent) counts; the right present/prominent split is assumed
CITED_COUNTS: dict[str, tuple[int, int, int]] = {
    "L": (57, 149 - 57 - 48, 48),
    "R": (73, 44, 32),
}
RIGHT_SPLIT_ASSUMED = True
# both hemispheres absent, both present, both prominent
CITED_BOTH_COUNTS: tuple[int, int, int] = (35, 19, 10)

CITED_PREVALENCE: dict[str, tuple[float, float, float]] = {
    hemi: tuple(round(c / CITED_N, 4) for c in counts)  # type: ignore[misc]
    for hemi, counts in CITED_COUNTS.items()
}
CITED_CONCORDANCE: tuple[float, float, float] = tuple(  # type: ignore[assignment]
    round(c / CITED_N, 4) for c in CITED_BOTH_COUNTS)


def joint_table(prevalence: Mapping[str, tuple[float, float, float]],
                concordance: tuple[float, float, float] | None) -> np.ndarray:
    """P(left class, right class) as a 3 x 3 array (rows left, columns right), summing to 1.

    Args:
        prevalence: per hemisphere P(absent), P(present), P(prominent).
        concordance: P(both absent), P(both present), P(both prominent); ``None``
            for independent hemispheres.

    Raises:
        ValueError: the concordance exceeds what the per-hemisphere figures allow.
    """
    left = _normalised(prevalence["L"])
    right = _normalised(prevalence["R"])
    if concordance is None:
        return np.outer(left, right)
    diagonal = np.asarray(concordance, dtype=float)
    rows, cols = left - diagonal, right - diagonal
    if (diagonal < 0).any() or (rows < -1e-9).any() or (cols < -1e-9).any():
        raise ValueError(
            f"concordance {tuple(concordance)} does not fit the per-hemisphere prevalence "
            f"{tuple(left)} / {tuple(right)}: P(both in a class) cannot exceed either "
            "hemisphere's P(class).")
    rows, cols = np.clip(rows, 0, None), np.clip(cols, 0, None)
    off = np.outer(left, right)
    np.fill_diagonal(off, 0.0)
    for _ in range(2000):  # iterative proportional fitting of the off-diagonal cells
        off *= _ratio(rows, off.sum(1))[:, None]
        off *= _ratio(cols, off.sum(0))[None, :]
        if np.abs(off.sum(1) - rows).max() < 1e-12:
            break
    if np.abs(off.sum(1) - rows).max() > 1e-6:
        raise ValueError(f"concordance {tuple(concordance)} leaves no table with the "
                         "per-hemisphere prevalence given; lower it.")
    table = off + np.diag(diagonal)
    return table / table.sum()


def draw_classes(rng: np.random.Generator, prevalence: Mapping[str, tuple[float, float, float]],
                 concordance: tuple[float, float, float] | None) -> dict[str, str]:
    """Both hemispheres' classes: left from its prevalence, right given the left."""
    left = draw_class(rng, prevalence["L"])
    if concordance is None:
        return {"L": left, "R": draw_class(rng, prevalence["R"])}
    row = joint_table(prevalence, concordance)[PCS_CLASSES.index(left)]
    return {"L": left, "R": draw_class(rng, tuple(row))}  # type: ignore[arg-type]


def draw_class(rng: np.random.Generator, prevalence: tuple[float, float, float]) -> str:
    """One PCS class with the given probabilities (absent, present, prominent)."""
    p = np.asarray(prevalence, dtype=float)
    return str(PCS_CLASSES[int(rng.choice(3, p=p / p.sum()))])


def _normalised(p) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return p / p.sum()


def _ratio(target: np.ndarray, current: np.ndarray) -> np.ndarray:
    return np.divide(target, current, out=np.zeros_like(target), where=current > 0)
