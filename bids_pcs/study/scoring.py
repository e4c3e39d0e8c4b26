"""Test scores of one row of the results, with participant bootstrap draws for pairing.

A row (method x strategy x label fraction) pools its folds (each participant
is tested exactly once) and is run once per training seed.  Its test
hemispheres, scored on the native T1w grid by the worker
(:mod:`bids_pcs.study.native`), become a :class:`ScoredRuns`: per-hemisphere
truth, and per seed the Dice, HD95 and class probabilities.  Every score
comes from :func:`bids_pcs.metrics.hemisphere_scores`, each with the number of
hemispheres it rests on (``<score>_n``):

- ``dice`` over hemispheres whose true mask has a sulcus; ``hd95_mm`` (mm,
  with each image's voxel spacing) over those where the prediction is not
  empty; images without a mask never count for either;
- presence (absent vs present/prominent) and class, of the class each
  hemisphere would be *reported* with (the row's ``predicted_class``: the
  class rule of :mod:`bids_pcs.inference.calls`, the class of the measured
  length for a model that learnt masks; rows written before the rule, the
  most probable class), the AUC ranking by the row's ``presence_score`` (the
  measured length under the length rule, else ``p_present + p_prominent``):
  ``presence_sensitivity``,
  ``presence_specificity``, ``presence_balanced_accuracy``, ``presence_auc``,
  ``presence_accuracy``, ``presence_f1``; the three classes:
  ``accuracy_3class``, ``balanced_accuracy_3class``, ``macro_f1_3class``.

With several seeds, a score is the mean over the seeds of the score of each
seed (``<score>_seed_sd``: their standard deviation).  The intervals resample
*participants* (both hemispheres, every session, every seed together):
:meth:`ScoredRuns.draws` keeps each resample's value, and since every row of a
study is scored on the same test participants with the same resampling seed,
two rows' draws pair resample by resample (:mod:`bids_pcs.study.table` takes
their paired differences).

Usage::

    runs = ScoredRuns.from_records([[rows of seed 0, all folds], [rows of seed 1, ...]])
    runs.scores()["dice"], runs.seed_scores()
    draws = runs.draws(n_resamples=1000, seed=0)
    draws.interval("dice"), draws.difference(other_draws, "dice")
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_pcs import metrics
from bids_pcs.metrics import BootstrapDraws

METRICS: tuple[str, ...] = (
    "dice", "hd95_mm", "presence_sensitivity", "presence_specificity",
    "presence_balanced_accuracy", "presence_auc", "presence_accuracy", "presence_f1",
    "accuracy_3class", "balanced_accuracy_3class", "macro_f1_3class",
)
# the differences the table pairs against scratch and against full fine-tuning
PAIRED_METRICS: tuple[str, ...] = (
    "dice", "hd95_mm", "presence_balanced_accuracy", "presence_auc",
    "balanced_accuracy_3class", "macro_f1_3class",
)
LOWER_IS_BETTER: frozenset[str] = frozenset({"hd95_mm"})
LEVEL = 0.95
# part of every configuration's key (bids_pcs.study.plan): records whose rows were made or
# are scored another way (before the class rule: the head's class) are recomputed, not
# mixed in; change it when what a test row holds or how it is scored changes
NATIVE_SCORING = "native T1w grid, reported class (class rule), v1"


@dataclass(frozen=True)
class ScoredRuns:
    """The test hemispheres of one row, scored once per training seed.

    Args:
        crops: hemisphere names, sorted (the same for every seed).
        participants: the participant of each hemisphere.
        true_classes: class indices (-1 where the label gives no class).
        true_voxels: voxels of the true native mask (0 without a sulcus or a mask).
        has_mask: whether the hemisphere's image has a label mask at all.
        dice, hd95_mm: (seeds, hemispheres), ``nan`` where undefined.
        probabilities: (seeds, hemispheres, 3) class probabilities of the head.
        predicted: (seeds, hemispheres) indices of the reported classes.
        presence_score: (seeds, hemispheres) what ranks presence for the AUC.
    """

    crops: tuple[str, ...]
    participants: np.ndarray
    true_classes: np.ndarray
    true_voxels: np.ndarray
    has_mask: np.ndarray
    dice: np.ndarray
    hd95_mm: np.ndarray
    probabilities: np.ndarray
    predicted: np.ndarray
    presence_score: np.ndarray

    @classmethod
    def from_records(cls, runs: Sequence[Sequence[dict[str, Any]]]) -> ScoredRuns:
        """From the test rows of each seed (every fold's rows pooled per seed).

        Raises:
            ValueError: no rows, or seeds that tested different hemispheres.
        """
        ordered = [sorted(rows, key=lambda r: r["crop"]) for rows in runs]
        if not ordered or not ordered[0]:
            raise ValueError("no test rows to score")
        crops = tuple(r["crop"] for r in ordered[0])
        for rows in ordered[1:]:
            if tuple(r["crop"] for r in rows) != crops:
                raise ValueError("the seeds of a row tested different hemispheres")
        first = ordered[0]
        probabilities = np.array([[r["probabilities"] for r in rows] for rows in ordered],
                                 dtype=float)
        return cls(
            crops=crops,
            participants=np.array([r["participant"] for r in first], dtype=object),
            true_classes=np.array([-1 if r["true_class"] is None else
                                   int(metrics.encode_classes([r["true_class"]])[0])
                                   for r in first], dtype=np.int64),
            true_voxels=np.array([r.get("true_voxels") or 0 for r in first], dtype=np.int64),
            has_mask=np.array([bool(r.get("has_mask", True)) for r in first]),
            dice=np.array([[_number(r["dice"]) for r in rows] for rows in ordered]),
            hd95_mm=np.array([[_number(r["hd95_mm"]) for r in rows] for rows in ordered]),
            probabilities=probabilities,
            # rows written before the class rule hold neither: the head's answer stands in
            predicted=_per_row(ordered, "predicted_class", np.argmax(probabilities, axis=-1),
                               lambda names: metrics.encode_classes(names)),
            presence_score=_per_row(
                ordered, "presence_score",
                metrics.presence_probability(probabilities.reshape(-1, probabilities.shape[-1])
                                             ).reshape(probabilities.shape[:2]),
                lambda values: np.asarray(values, dtype=float)),
        )

    @property
    def n_seeds(self) -> int:
        return int(self.dice.shape[0])

    def seed_scores(self, index: np.ndarray | None = None) -> list[dict[str, float]]:
        """Every score and count of each seed on the hemispheres ``index`` (default all)."""
        index = np.arange(len(self.crops)) if index is None else index
        return [metrics.hemisphere_scores(
            self.true_classes[index], self.probabilities[s, index], dice=self.dice[s, index],
            hd95_mm=self.hd95_mm[s, index], true_voxels=self.true_voxels[index],
            has_mask=self.has_mask[index], predicted_classes=self.predicted[s, index],
            presence_score=self.presence_score[s, index]).as_dict()
            for s in range(self.n_seeds)]

    def scores(self, index: np.ndarray | None = None) -> dict[str, float]:
        """Scores and counts averaged over the seeds (a seed where one is undefined skipped)."""
        per_seed = self.seed_scores(index)
        if len(per_seed) == 1:
            return per_seed[0]
        keys = list(per_seed[0])
        values = np.array([[s[key] for key in keys] for s in per_seed])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all seeds undefined: nan
            means = np.nanmean(values, axis=0)
        return dict(zip(keys, (float(v) for v in means), strict=True))

    def seed_spread(self) -> dict[str, float]:
        """Standard deviation over the seeds of each score (``nan`` with one seed)."""
        per_seed = self.seed_scores()
        out = {}
        for key in METRICS:
            values = np.array([s[key] for s in per_seed], dtype=float)
            values = values[np.isfinite(values)]
            out[key] = float(np.std(values, ddof=1)) if values.size > 1 else float("nan")
        return out

    def draws(self, n_resamples: int = 1000, seed: int = 0) -> BootstrapDraws:
        """The scores on all participants and on each participant resample."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nan means on degenerate resamples
            return metrics.bootstrap_draws(self.scores, self.participants,
                                           n_resamples=n_resamples, seed=seed)


def _per_row(runs: Sequence[Sequence[dict[str, Any]]], key: str, fallback: np.ndarray,
             convert: Any) -> np.ndarray:
    """(seeds, hemispheres) of each row's ``key``, ``fallback`` where a row lacks it."""
    out = fallback.copy()
    for s, rows in enumerate(runs):
        given = [k for k, row in enumerate(rows) if row.get(key) is not None]
        if given:
            out[s, given] = convert([rows[k][key] for k in given])
    return out


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)
