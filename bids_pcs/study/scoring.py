"""Test scores of a configuration with bootstrap confidence intervals over participants.

The rows are the test crops of a configuration (with k folds, the test crops
of every fold pooled: each participant is tested exactly once).  Every score
comes from :mod:`bids_pcs.metrics`:

- ``dice``: mean Dice over crops (no PCS in truth and prediction scores 1);
- ``hd95_mm``: mean HD95 over the crops where both the true and the
  predicted mask are non-empty, in mm at the crop's voxel size (a crop with
  neither scores HD95 0 in :func:`bids_pcs.metrics.hd95`, which would make a
  model that never finds a sulcus look perfect; it is left out here, and so
  is a crop with one empty mask, where HD95 is undefined);
- presence (absent vs present/prominent) from the most probable class:
  ``presence_accuracy``, ``presence_balanced_accuracy``, ``presence_f1``,
  ``presence_auc`` (ranked by ``p_present + p_prominent``),
  ``presence_sensitivity``, ``presence_specificity``;
- ``accuracy_3class``: the exact class (absent / present / prominent).

Intervals are percentile bootstrap intervals (:func:`bids_pcs.metrics.bootstrap_cis`)
resampling *participants* with all their crops, seeded, at 95 %.

Usage::

    cis = score_rows(record["test_rows"], n_resamples=1000, seed=0)
    cis["dice"].estimate, cis["dice"].lower, cis["dice"].upper
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from bids_pcs import metrics
from bids_pcs.metrics import ConfidenceInterval

METRICS: tuple[str, ...] = (
    "dice", "hd95_mm", "presence_accuracy", "presence_balanced_accuracy", "presence_f1",
    "presence_auc", "presence_sensitivity", "presence_specificity", "accuracy_3class",
)
LOWER_IS_BETTER: frozenset[str] = frozenset({"hd95_mm"})
LEVEL = 0.95


def score_rows(rows: Sequence[dict[str, Any]], *, n_resamples: int = 1000, seed: int = 0,
               ) -> dict[str, ConfidenceInterval]:
    """Every score of :data:`METRICS` on ``rows`` with its bootstrap interval.

    Args:
        rows: test crops as written by the worker (``participant``,
            ``true_class``, ``probabilities``, ``dice``, ``hd95_mm``).
        n_resamples: bootstrap resamples; 0 gives the estimates without intervals.
        seed: seed of the resampling.
    """
    if not rows:
        raise ValueError("no test rows to score")
    dice = np.array([float(r["dice"]) for r in rows])
    hd95 = np.array([_hd95(r) for r in rows])
    truth = metrics.encode_classes([r["true_class"] for r in rows])
    probabilities = np.array([r["probabilities"] for r in rows], dtype=float)
    participants = [r["participant"] for r in rows]

    def statistic(index: np.ndarray) -> dict[str, float]:
        scores = metrics.classification_metrics(truth[index], probabilities[index])
        presence = scores.presence
        distances = hd95[index]
        return {
            "dice": float(dice[index].mean()),
            "hd95_mm": (float(np.nanmean(distances)) if np.isfinite(distances).any()
                        else float("nan")),
            "presence_accuracy": presence.accuracy,
            "presence_balanced_accuracy": presence.balanced_accuracy,
            "presence_f1": presence.f1,
            "presence_auc": presence.roc_auc,
            "presence_sensitivity": presence.sensitivity,
            "presence_specificity": presence.specificity,
            "accuracy_3class": scores.accuracy_3class,
        }

    if n_resamples < 1:
        values = statistic(np.arange(len(rows)))
        return {name: ConfidenceInterval(value, float("nan"), float("nan"), LEVEL, 0, 0)
                for name, value in values.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nan means on degenerate resamples
        return metrics.bootstrap_cis(statistic, participants, n_resamples=n_resamples,
                                     level=LEVEL, seed=seed)


def _hd95(row: dict[str, Any]) -> float:
    if row["hd95_mm"] is None:
        return float("nan")
    if row.get("true_voxels") == 0 and row.get("predicted_voxels") == 0:
        return float("nan")  # both empty: right, but no boundary to measure
    return float(row["hd95_mm"])
