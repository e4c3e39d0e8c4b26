"""The cohort table (one row per T1w image) and its summary numbers.

Built from the per-image results on disk (:mod:`bids_pcs.reports.results`),
joined with the raw ``participants.tsv`` when the raw dataset is reachable.
Statistics leave out images that failed registration QC (their PCS results
are not trustworthy); the table keeps every image, with its verdict.

Usage::

    table = group_table(collect_results(out), read_participants(raw_dir))
    summary = summarise(table, categorical_columns(table, participant_columns))
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_pcs.config import BINARY_CLASSES, PCS_CLASSES
from bids_pcs.io.bids_names import entity_order
from bids_pcs.reports.results import ImageResults

LOGGER = logging.getLogger("bids_pcs.reports")

SIDES = {"L": "left", "R": "right"}
# raw participants.tsv columns that are labels of the PCS itself, not groups
_LABEL_COLUMNS = ("pcs_left", "pcs_right")
MAX_CATEGORIES = 12

COLUMN_DESCRIPTIONS: dict[str, str] = {
    "image": "BIDS name stem of the T1w image (its derivatives start with it)",
    "participant_id": "participant label with sub- prefix",
    "session_id": "session label with ses- prefix (n/a without sessions)",
    "pcs_asymmetry_index": "(left - right) / (left + right) PCS length; n/a when both are 0",
    "qc_correlation": "registration QC: correlation with the template inside the crop boxes",
    "qc_threshold": "registration QC: the correlation required to pass",
    "qc_passed": "registration QC verdict (true/false)",
    "model_name": "model that produced the PCS results (n/a: inference not run)",
}
COLUMN_DESCRIPTIONS.update({key: f"{key}- entity of the T1w image" for key in entity_order()
                            if key not in ("sub", "ses")})
for _side in SIDES.values():
    COLUMN_DESCRIPTIONS.update({
        f"pcs_class_{_side}": f"reported PCS class of the {_side} hemisphere under the class "
                              "rule (absent, present[, prominent]; n/a: inference not run)",
        f"pcs_class_network_{_side}": f"the classification head's class, {_side} hemisphere",
        f"class_agreement_{_side}": f"whether the head's class and the class of the measured "
                                    f"length agree, {_side} hemisphere (false: review)",
        **{f"p_{c}_{_side}": f"predicted probability of class {c}, {_side} hemisphere"
           for c in PCS_CLASSES},
        f"class_entropy_{_side}": f"normalised entropy of the class probabilities, {_side} "
                                  "hemisphere (0 certain, 1 uniform)",
        f"mask_uncertainty_{_side}": f"share of unsure candidate PCS voxels, {_side} "
                                     "hemisphere",
        f"flip_agreement_{_side}": f"Dice of the masks of the crop and its mirror image (flip "
                                   f"TTA), {_side} hemisphere",
        f"pcs_length_mm_{_side}": f"PCS length along the sulcus, {_side} hemisphere (mm)",
        f"pcs_volume_mm3_{_side}": f"PCS mask volume, {_side} hemisphere (mm3)",
    })
_UNCERTAINTY = ("class_entropy", "mask_uncertainty", "flip_agreement")


def results_classes(results: Sequence[ImageResults]) -> tuple[str, ...]:
    """The class scheme of the results: binary only when every table is binary."""
    schemes = {hemi.classes for r in results for hemi in r.hemispheres.values()}
    if schemes and all(s == BINARY_CLASSES for s in schemes):
        return BINARY_CLASSES
    return PCS_CLASSES


def table_classes(table: pd.DataFrame) -> tuple[str, ...]:
    """The class scheme of a group table, read from its ``p_<class>_left`` columns."""
    return tuple(c for c in PCS_CLASSES if f"p_{c}_left" in table.columns) or PCS_CLASSES


def read_participants(raw_dir: Path | None) -> pd.DataFrame | None:
    """The raw dataset's ``participants.tsv`` (all columns as text), if readable."""
    if raw_dir is None:
        return None
    path = Path(raw_dir) / "participants.tsv"
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, sep="\t", dtype=str, na_values=["n/a", ""],
                            keep_default_na=False)
    except (OSError, ValueError) as exc:
        LOGGER.warning("%s not readable (%s); the group table has no participant columns",
                       path, exc)
        return None
    if "participant_id" not in frame.columns:
        LOGGER.warning("%s has no participant_id column; not joined", path)
        return None
    return frame.drop_duplicates("participant_id")


def group_table(results: Sequence[ImageResults],
                participants: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per image: entities, classes, probabilities, lengths, volumes, QC.

    Columns from ``participants`` follow ours, renamed ``participants_<name>``
    where a name is already taken.
    """
    # every entity that tells two T1w images of a session apart, in BIDS order
    entity_keys = [k for k in entity_order()
                   if any(k in dict(r.image.entities) for r in results)]
    classes = results_classes(results)
    rows = []
    for result in results:
        image = result.image
        entities = dict(image.entities)
        row: dict[str, Any] = {
            "image": image.prefix,
            "participant_id": f"sub-{image.subject}",
            "session_id": f"ses-{image.session}" if image.session else None,
            **{k: entities.get(k) for k in entity_keys},
        }
        for hemisphere, side in SIDES.items():
            hemi = result.hemispheres.get(hemisphere)
            row[f"pcs_class_{side}"] = hemi.pcs_class if hemi else None
            row[f"pcs_class_network_{side}"] = hemi.network_class if hemi else None
            row[f"class_agreement_{side}"] = hemi.classes_agree if hemi else None
            for c in classes:
                row[f"p_{c}_{side}"] = hemi.probabilities.get(c) if hemi else None
            for name in _UNCERTAINTY:
                row[f"{name}_{side}"] = getattr(hemi, name) if hemi else None
            row[f"pcs_length_mm_{side}"] = hemi.length_mm if hemi else None
            row[f"pcs_volume_mm3_{side}"] = hemi.volume_mm3 if hemi else None
        row["pcs_asymmetry_index"] = asymmetry_index(row["pcs_length_mm_left"],
                                                     row["pcs_length_mm_right"])
        qc = result.qc
        row["qc_correlation"] = qc.correlation if qc else None
        row["qc_threshold"] = qc.threshold if qc else None
        row["qc_passed"] = qc.passed if qc else None
        row["model_name"] = result.model.get("name") if result.has_pcs else None
        rows.append(row)
    table = pd.DataFrame(rows)
    for column in table.columns:
        if column.startswith(("p_", "pcs_length", "pcs_volume", "pcs_asym", "qc_corr",
                              "qc_thr", *_UNCERTAINTY)):
            table[column] = pd.to_numeric(table[column], errors="coerce").astype(float)
    for column in ("qc_passed", *(f"class_agreement_{side}" for side in SIDES.values())):
        table[column] = table[column].astype(object)
    if participants is not None:
        extra = participants.rename(columns={
            c: f"participants_{c}" for c in participants.columns
            if c != "participant_id" and c in table.columns})
        table = table.merge(extra, on="participant_id", how="left")
    return table


def participant_columns(table: pd.DataFrame) -> list[str]:
    """Columns that came from participants.tsv."""
    ours = set(COLUMN_DESCRIPTIONS)
    return [c for c in table.columns if c not in ours]


def categorical_columns(table: pd.DataFrame, candidates: Sequence[str]) -> list[str]:
    """Participant columns worth a prevalence-by-group figure (2-12 text values)."""
    out = []
    for column in candidates:
        if column in _LABEL_COLUMNS:
            continue
        values = table[column].dropna()
        if values.empty or pd.to_numeric(values, errors="coerce").notna().all():
            continue  # numbers (age, scores) are not groups
        n_values = values.nunique()
        if 2 <= n_values <= MAX_CATEGORIES and n_values < len(values):
            out.append(column)
    return out


def statistics_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Rows that enter the statistics: PCS results present, registration QC not failed."""
    has_pcs = table["pcs_class_left"].notna() | table["pcs_class_right"].notna()
    failed = table["qc_passed"].map(lambda v: v is False)
    return table[has_pcs & ~failed]


def summarise(table: pd.DataFrame, by_columns: Sequence[str] = ()) -> dict[str, Any]:
    """Cohort numbers: counts, prevalence, length statistics, asymmetry, QC failures."""
    stats = statistics_rows(table)
    sessions = table.dropna(subset=["session_id"])
    summary: dict[str, Any] = {
        "n_images": int(len(table)),
        "n_participants": int(table["participant_id"].nunique()),
        "n_sessions": int(sessions[["participant_id", "session_id"]].drop_duplicates().shape[0]),
        "n_images_with_pcs": int((table["pcs_class_left"].notna()
                                  | table["pcs_class_right"].notna()).sum()),
        "n_images_qc_failed": int(table["qc_passed"].map(lambda v: v is False).sum()),
        "n_images_in_statistics": int(len(stats)),
        "StatisticsExclude": "images without PCS results and images that failed "
                             "registration QC",
        "prevalence": {side: prevalence(stats, side) for side in SIDES.values()},
        "prevalence_by": {
            column: {str(value): {side: prevalence(group, side) for side in SIDES.values()}
                     for value, group in stats.groupby(column, sort=True)}
            for column in by_columns},
        "length_mm": {side: _length_stats(stats, side) for side in SIDES.values()},
        "asymmetry": _asymmetry(stats),
        "qc_failures": [
            {"image": row.image, "participant_id": row.participant_id,
             "session_id": row.session_id, "qc_correlation": _plain(row.qc_correlation),
             "qc_threshold": _plain(row.qc_threshold)}
            for row in table[table["qc_passed"].map(lambda v: v is False)].itertuples()],
    }
    return summary


def prevalence(rows: pd.DataFrame, side: str) -> dict[str, Any]:
    """Class counts of one hemisphere, and the fraction with a PCS (present or prominent)."""
    classes = rows[f"pcs_class_{side}"].dropna()
    counts = {c: int((classes == c).sum()) for c in table_classes(rows)}
    n = int(classes.size)
    with_pcs = n - counts["absent"]
    return {"n": n, "counts": counts,
            "fraction_with_pcs": round(with_pcs / n, 4) if n else None}


def asymmetry_index(left: float | None, right: float | None) -> float | None:
    """(L - R) / (L + R): +1 a left-only PCS, -1 a right-only one, 0 symmetric."""
    if left is None or right is None or _missing(left) or _missing(right):
        return None
    total = left + right
    return (left - right) / total if total > 0 else None


def to_tsv(table: pd.DataFrame) -> str:
    """The table as BIDS TSV text: ``n/a`` for missing values, ``true``/``false``."""
    out = table.copy()
    for column in out.columns:
        digits = 4 if column.startswith(("p_", "qc_", "pcs_asym", *_UNCERTAINTY)) else 2
        out[column] = out[column].map(lambda v, d=digits: _cell(v, d))
    return out.to_csv(sep="\t", index=False, lineterminator="\n")


def _length_stats(rows: pd.DataFrame, side: str) -> dict[str, Any]:
    lengths = rows[f"pcs_length_mm_{side}"]
    classes = rows[f"pcs_class_{side}"]
    out = {"all": _describe(lengths)}
    for c in table_classes(rows):
        out[c] = _describe(lengths[classes == c])
    return out


def _asymmetry(rows: pd.DataFrame) -> dict[str, Any]:
    both = rows.dropna(subset=["pcs_length_mm_left", "pcs_length_mm_right"])
    difference = both["pcs_length_mm_left"] - both["pcs_length_mm_right"]
    index = both["pcs_asymmetry_index"].dropna()
    crossed = pd.crosstab(both["pcs_class_left"], both["pcs_class_right"])
    classes = table_classes(rows)
    return {
        "n": int(len(both)),
        "length_difference_mm": _describe(difference),
        "asymmetry_index": _describe(index),
        "n_left_longer": int((difference > 0).sum()),
        "n_right_longer": int((difference < 0).sum()),
        "n_equal": int((difference == 0).sum()),
        "class_left_by_right": {
            left: {right: int(crossed.at[left, right])
                   if left in crossed.index and right in crossed.columns else 0
                   for right in classes} for left in classes},
    }


def _describe(values: pd.Series) -> dict[str, Any]:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return {"n": 0, "mean": None, "sd": None, "median": None, "min": None, "max": None}
    return {"n": int(values.size), "mean": round(float(values.mean()), 3),
            "sd": round(float(values.std(ddof=1)), 3) if values.size > 1 else None,
            "median": round(float(values.median()), 3), "min": round(float(values.min()), 3),
            "max": round(float(values.max()), 3)}


def _cell(value: Any, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating):
        return f"{float(value):.{digits}f}"
    return str(value)


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return float(value)


def _missing(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)
