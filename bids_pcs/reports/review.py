"""The review queue: which calls a reader should check first (``review.tsv``).

The group level ranks every hemisphere with PCS results, and every image
whose registration failed QC, by how much a second look is worth
(``[review]`` settings, :class:`bids_pcs.config.ReviewSettings`). Each reason
adds to the priority:

- **registration QC failed** (one row per image, ``hemisphere`` n/a): 3, on top;
- **class and length disagree** (``class_agreement`` false): 1 when they
  disagree on presence (absent against present/prominent), 0.5 when only on
  present against prominent;
- **length near a class threshold**: ``1 - margin / length_margin_mm`` when the
  measured length lies within ``length_margin_mm`` of a threshold (an 18-22 mm
  sulcus is the textbook ambiguous case of a 20 mm threshold);
- **uncertain class**: the class entropy (0-1);
- **unsure mask**: the mask uncertainty (0-1);
- **mask changes under a left-right flip**: ``1 - flip_agreement`` (flip TTA only);
- **registration QC borderline**: ``1 - (r - threshold) / qc_margin`` when the
  correlation ``r`` passed by less than ``qc_margin``.

Entropy, mask uncertainty and flip disagreement always add to the priority;
they become a *reason* (and the row *flagged*) from their ``[review]``
threshold on. Flagged rows rank first, then by priority; the group page's
"Review first" section shows the first ``shown`` flagged rows with links to
the participant reports, where the rating form takes the reader's verdict.

Usage::

    rows = review_rows(collect_results(out), settings.review, thresholds=(20.0, 40.0))
    write_text(out / REVIEW_TSV, review_tsv(rows))
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bids_pcs.config import HEMISPHERES, ReviewSettings
from bids_pcs.reports.results import HemisphereResult, ImageResults

REVIEW_TSV = "review.tsv"
REVIEW_JSON = "review.json"
QC_FAILED_PRIORITY = 3.0
NA = "n/a"

REVIEW_COLUMNS: dict[str, str] = {
    "rank": "1 = review first (flagged rows first, then by priority)",
    "image": "BIDS name stem of the T1w image",
    "participant_id": "participant label with sub- prefix",
    "session_id": "session label with ses- prefix (n/a without sessions)",
    "hemisphere": "L or R (n/a: the row is about the whole image)",
    "flagged": "true when at least one reason applies",
    "priority": "sum of the reasons' weights (see review.json Description)",
    "reasons": "why to look, '; '-separated (n/a: nothing stands out)",
    "pcs_class": "reported class (under the class rule)",
    "pcs_class_network": "the classification head's class",
    "pcs_class_length": "the class of the measured length",
    "pcs_length_mm": "measured PCS length (mm)",
    "threshold_margin_mm": "distance of the length from the nearest class threshold (mm)",
    "class_entropy": "normalised entropy of the class probabilities (0 certain, 1 uniform)",
    "mask_uncertainty": "share of unsure candidate PCS voxels",
    "flip_agreement": "Dice of the masks of the crop and its mirror image (flip TTA)",
    "qc_correlation": "registration QC correlation",
    "qc_threshold": "registration QC threshold",
    "qc_passed": "registration QC verdict",
    "report": "the participant report, at this image",
}


@dataclass
class ReviewRow:
    """One row of the review queue (one hemisphere, or one image that failed QC)."""

    image: str
    participant_id: str
    session_id: str | None
    hemisphere: str | None
    priority: float = 0.0
    reasons: list[str] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def flagged(self) -> bool:
        return bool(self.reasons)

    @property
    def report(self) -> str:
        return f"{self.participant_id}.html#{self.image}"


def review_rows(results: Sequence[ImageResults], review: ReviewSettings, *,
                thresholds: tuple[float, float], binary: bool = False) -> list[ReviewRow]:
    """Every hemisphere with PCS results (and every image that failed QC), ranked."""
    rows: list[ReviewRow] = []
    for result in results:
        image = result.image
        base = {"image": image.prefix, "participant_id": f"sub-{image.subject}",
                "session_id": f"ses-{image.session}" if image.session else None}
        qc = result.qc
        qc_values = {"qc_correlation": qc.correlation if qc else None,
                     "qc_threshold": qc.threshold if qc else None,
                     "qc_passed": qc.passed if qc else None}
        if qc is not None and qc.passed is False:
            row = ReviewRow(**base, hemisphere=None, priority=QC_FAILED_PRIORITY,
                            values=dict(qc_values))
            row.reasons.append("registration QC failed"
                               + _correlation_text(qc.correlation, qc.threshold, "<"))
            rows.append(row)
            continue
        if not result.has_pcs:
            continue
        qc_weight, qc_reason = _qc_borderline(result, review)
        for hemisphere in HEMISPHERES:
            hemi = result.hemispheres.get(hemisphere)
            if hemi is None or hemi.pcs_class is None:
                continue
            row = ReviewRow(**base, hemisphere=hemisphere, values=dict(qc_values))
            _score(row, hemi, review, thresholds, binary)
            if qc_reason:
                row.priority += qc_weight
                row.reasons.append(qc_reason)
            rows.append(row)
    rows.sort(key=lambda r: (not r.flagged, -r.priority, r.image, r.hemisphere or ""))
    return rows


def review_tsv(rows: Sequence[ReviewRow]) -> str:
    """The queue as BIDS-style TSV (``n/a`` for missing values), rank first."""
    lines = ["\t".join(REVIEW_COLUMNS)]
    for rank, row in enumerate(rows, start=1):
        cells = {"rank": str(rank), "image": row.image, "participant_id": row.participant_id,
                 "session_id": row.session_id, "hemisphere": row.hemisphere,
                 "flagged": row.flagged, "priority": row.priority,
                 "reasons": "; ".join(row.reasons) or None, "report": row.report,
                 **row.values}
        lines.append("\t".join(_cell(cells.get(column), _DIGITS.get(column, 4))
                               for column in REVIEW_COLUMNS))
    return "\n".join(lines) + "\n"


def threshold_margin_mm(length_mm: float, thresholds: tuple[float, float],
                        binary: bool = False) -> float:
    """Distance of a length from the nearest class threshold (the present one alone in binary)."""
    used = thresholds[:1] if binary else thresholds
    return min(abs(length_mm - t) for t in used)


def _score(row: ReviewRow, hemi: HemisphereResult, review: ReviewSettings,
           thresholds: tuple[float, float], binary: bool) -> None:
    row.values.update({"pcs_class": hemi.pcs_class, "pcs_class_network": hemi.network_class,
                       "pcs_class_length": hemi.length_class, "pcs_length_mm": hemi.length_mm,
                       "class_entropy": hemi.class_entropy,
                       "mask_uncertainty": hemi.mask_uncertainty,
                       "flip_agreement": hemi.flip_agreement})
    if hemi.classes_agree is False and hemi.network_class and hemi.length_class:
        presence_differs = (hemi.network_class == "absent") != (hemi.length_class == "absent")
        row.priority += 1.0 if presence_differs else 0.5
        row.reasons.append(f"class and length disagree (length: {hemi.length_class}, "
                           f"classification head: {hemi.network_class})")
    if hemi.length_mm is not None and hemi.length_class is not None:
        margin = threshold_margin_mm(hemi.length_mm, thresholds, binary)
        row.values["threshold_margin_mm"] = margin
        if margin < review.length_margin_mm:
            row.priority += 1.0 - margin / review.length_margin_mm
            nearest = min(thresholds[:1] if binary else thresholds,
                          key=lambda t: abs(hemi.length_mm - t))
            row.reasons.append(f"length {hemi.length_mm:.1f} mm is {margin:.1f} mm from the "
                               f"{nearest:g} mm class threshold")
    if hemi.class_entropy is not None:
        row.priority += hemi.class_entropy
        if hemi.class_entropy >= review.class_entropy:
            row.reasons.append(f"uncertain class (entropy {hemi.class_entropy:.2f})")
    if hemi.mask_uncertainty is not None:
        row.priority += hemi.mask_uncertainty
        if hemi.mask_uncertainty >= review.mask_uncertainty:
            row.reasons.append(f"unsure mask (uncertainty {hemi.mask_uncertainty:.2f})")
    if hemi.flip_agreement is not None:
        row.priority += 1.0 - hemi.flip_agreement
        if hemi.flip_agreement < review.flip_agreement:
            row.reasons.append(f"mask changes under a left-right flip (agreement "
                               f"{hemi.flip_agreement:.2f})")


def _qc_borderline(result: ImageResults, review: ReviewSettings) -> tuple[float, str]:
    qc = result.qc
    if qc is None or qc.correlation is None or qc.threshold is None or not qc.passed:
        return 0.0, ""
    excess = qc.correlation - qc.threshold
    if excess >= review.qc_margin:
        return 0.0, ""
    return (1.0 - max(excess, 0.0) / review.qc_margin,
            "registration QC borderline" + _correlation_text(qc.correlation, qc.threshold,
                                                             ">="))


def _correlation_text(correlation: float | None, threshold: float | None, sign: str) -> str:
    if correlation is None or threshold is None:
        return ""
    return f" (correlation {correlation:.2f} {sign} {threshold:.2f})"


_DIGITS = {"priority": 3, "pcs_length_mm": 2, "threshold_margin_mm": 2}


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float | int):
        return f"{float(value):.{digits}f}"
    return str(value)
