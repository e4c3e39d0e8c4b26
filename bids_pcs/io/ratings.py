"""Rating files: what a reader decided about each hemisphere in a participant report.

Each participant report (``sub-<label>.html``) carries an offline rating form
(:mod:`bids_pcs.reports.rating_form`): per image and hemisphere, *accept* the
reported class or *correct* it, a free note, and per image a registration QC
rating. The browser saves it as a download, with no network and no server:
``sub-<label>_ratings.tsv`` (tab-separated, one row per rated hemisphere, the
columns of :data:`RATING_COLUMNS`) or ``sub-<label>_ratings.json``
(``{"BidsPcsRatings": 1, "Ratings": [row, ...]}``, the same keys).

A folder of such files is a label source (``finetune --labels RATINGS_DIR``,
or rating files dropped anywhere inside a label dataset): each rated
hemisphere's class becomes its label (accepted: the class the report showed;
corrected: the reader's class), and an image whose registration the reader
rated ``bad`` is left out of training. Where one hemisphere was rated more
than once (two files, or a re-download), the latest ``rated_at`` wins.

Usage::

    ratings = read_ratings(find_rating_files(folder), settings.labels)
    ratings["sub-01"].classes["L"], ratings["sub-01"].registration_qc
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bids_pcs.config import HEMISPHERES, LabelSettings
from bids_pcs.errors import InputDataError

LOGGER = logging.getLogger(__name__)

RATINGS_FORMAT_VERSION = 1
# one source for the file's columns: the report's script writes them in this order
RATING_COLUMNS: tuple[str, ...] = (
    "image", "participant_id", "session_id", "hemisphere", "decision", "pcs_class",
    "reported_class", "registration_qc", "note", "rater", "rated_at", "model",
)
DECISIONS: tuple[str, ...] = ("accept", "correct")
REGISTRATION_RATINGS: tuple[str, ...] = ("good", "questionable", "bad")
# what a browser saves: sub-01_ratings.tsv, and "sub-01_ratings (1).tsv" for a second copy
RATING_PATTERNS: tuple[str, ...] = ("*_ratings*.tsv", "*_ratings*.json")
_MISSING = {"", "n/a", "na", "nan", "none"}


@dataclass
class ImageRatings:
    """What the readers said about one T1w image (the latest rating of each part).

    Args:
        image: the image's BIDS prefix.
        classes: hemisphere -> class the reader settled on.
        registration_qc: ``good``, ``questionable``, ``bad`` or ``None`` (not rated).
        notes: hemisphere -> the reader's note.
        sources: the rating files read.
    """

    image: str
    classes: dict[str, str] = field(default_factory=dict)
    registration_qc: str | None = None
    notes: dict[str, str] = field(default_factory=dict)
    sources: list[Path] = field(default_factory=list)
    _times: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def excluded(self) -> bool:
        """A reader rated the registration bad: the image must not train."""
        return self.registration_qc == "bad"


def find_rating_files(folder: str | Path) -> list[Path]:
    """Every rating file under ``folder`` (any depth), sorted."""
    root = Path(folder)
    found = {p for pattern in RATING_PATTERNS for p in root.rglob(pattern) if p.is_file()}
    return sorted(found)


def read_ratings(paths: Iterable[str | Path], labels: LabelSettings | None = None,
                 ) -> dict[str, ImageRatings]:
    """The ratings of every image named in ``paths``, merged (latest ``rated_at`` wins).

    Raises:
        InputDataError: a file that is not a rating file, or a row with an
            unknown hemisphere, decision, class or registration rating.
    """
    labels = labels or LabelSettings()
    out: dict[str, ImageRatings] = {}
    for path in map(Path, paths):
        for number, row in _rows(path):
            where = f"{path} ({number})"
            _merge(out, row, where, path, labels)
    return out


def rating_row(values: dict[str, Any]) -> dict[str, str]:
    """A row with every column of :data:`RATING_COLUMNS` (missing ones empty), as text."""
    return {column: "" if values.get(column) is None else str(values[column])
            for column in RATING_COLUMNS}


def ratings_tsv(rows: Iterable[dict[str, Any]]) -> str:
    """Rating rows as the TSV the report's form downloads (tabs and newlines in notes: spaces)."""
    lines = ["\t".join(RATING_COLUMNS)]
    for row in rows:
        cells = rating_row(row)
        lines.append("\t".join(" ".join(cells[c].split()) for c in RATING_COLUMNS))
    return "\n".join(lines) + "\n"


def _rows(path: Path) -> list[tuple[str, dict[str, str]]]:
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputDataError(f"Rating file {path} is not valid JSON ({exc}); download it "
                                 "again from the report.") from exc
        ratings = data.get("Ratings") if isinstance(data, dict) else None
        if not isinstance(ratings, list):
            raise InputDataError(f"Rating file {path} has no \"Ratings\" list; is it a file "
                                 "saved from a bids_pcs report?")
        rows = []
        for number, item in enumerate(ratings, start=1):
            if not isinstance(item, dict):
                raise InputDataError(f"Rating {number} of {path} is not an object.")
            rows.append((f"rating {number}", {k: _text(v) for k, v in item.items()}))
        return rows
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputDataError(f"Rating file {path} is not a readable TSV file ({exc}); "
                             "download it again from the report.") from exc
    missing = [c for c in ("image", "hemisphere", "decision", "pcs_class") if c not in table]
    if missing:
        raise InputDataError(f"Rating file {path} lacks the column(s) {', '.join(missing)}; "
                             "is it a file saved from a bids_pcs report?")
    return [(f"line {number}", {k: _text(v) for k, v in row.items()})
            for number, row in enumerate(table.to_dict("records"), start=2)]


def _merge(out: dict[str, ImageRatings], row: dict[str, str], where: str, path: Path,
           labels: LabelSettings) -> None:
    image = row.get("image", "")
    if not image:
        raise InputDataError(f"Rating {where} names no image; download it again from the "
                             "report.")
    entry = out.setdefault(image, ImageRatings(image=image))
    if path not in entry.sources:
        entry.sources.append(path)
    when = row.get("rated_at", "")
    qc = row.get("registration_qc", "").lower()
    if qc:
        if qc not in REGISTRATION_RATINGS:
            raise InputDataError(f"Unknown registration rating {qc!r} in {where}; use one of "
                                 f"{', '.join(REGISTRATION_RATINGS)}.")
        if when >= entry._times.get("qc", ""):
            entry.registration_qc, entry._times["qc"] = qc, when
    hemisphere = row.get("hemisphere", "").upper()
    decision = row.get("decision", "").lower()
    if not decision:
        return  # the reader left this hemisphere unrated
    if hemisphere not in HEMISPHERES:
        raise InputDataError(f"Unknown hemisphere {row.get('hemisphere')!r} in {where}; "
                             "use L or R.")
    if decision not in DECISIONS:
        raise InputDataError(f"Unknown decision {decision!r} in {where}; use accept or "
                             "correct.")
    name = row.get("pcs_class", "").lower()
    known = labels.classes + (("prominent",) if labels.binary else ())
    if name not in known:
        raise InputDataError(f"Unknown PCS class {row.get('pcs_class')!r} in {where}; valid "
                             f"classes are {', '.join(labels.classes)}.")
    if when >= entry._times.get(hemisphere, ""):
        entry.classes[hemisphere] = labels.merge_class(name)
        entry._times[hemisphere] = when
        if row.get("note"):
            entry.notes[hemisphere] = row["note"]


def _text(value: Any) -> str:
    if value is None:
        return ""
    text = str(value).strip()
    return "" if text.lower() in _MISSING else text
