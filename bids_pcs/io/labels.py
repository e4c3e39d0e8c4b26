"""Reading PCS labels: one record per labelled T1w image, with or without a mask.

Labs hold labels in three forms, and a *label source* (``--labels``) may be
any of them (DESIGN.md section 3):

- a **label dataset**: a BIDS derivative dataset (has
  ``dataset_description.json``) with, per T1w image of the raw dataset,
  ``<prefix>_space-T1w_desc-pcs_dseg.nii.gz`` on that image's grid (0
  background, 1 left PCS, 2 right PCS by default, see
  :class:`bids_pcs.config.LabelSettings`) under ``LABELS_DIR/sub-X[/ses-Y]/anat/``
  for none, some or all images, and a ``participants.tsv``; a raw BIDS dataset
  whose ``participants.tsv`` holds the classes is one too;
- a **table** (``--labels labels.tsv`` or ``.csv``, e.g. exported from a
  spreadsheet): ``participant_id``, optionally ``session_id``, and the class
  and length columns below;
- a **folder of rating files** saved from the participant reports
  (:mod:`bids_pcs.io.ratings`); rating files inside a label dataset are read too.

Tables give per hemisphere ``pcs_left`` / ``pcs_right`` (absent, present,
prominent; ``n/a`` when unknown) and ``pcs_left_length_mm`` /
``pcs_right_length_mm``. The raw dataset's ``participants.tsv`` is read after
the source's own tables. Per hemisphere the class comes from, in order: a
rating, a table's class, a table's length (with the settings' thresholds),
the length of the mask. A hemisphere with none of these has no class (it
trains no classification); an image with neither a mask nor any class has no
label and is skipped (or refused, with ``require_all``). In binary mode
(``classes = ["absent", "present"]``) "prominent" counts as "present".

Usage::

    images = collect_t1w(bids_dir, participant_labels)
    records = read_labels(labels_source, images, settings.labels)
    records[0].dseg_path            # None: no mask, classification only
    records[0].classes["L"], records[0].class_sources["L"], records[0].lengths_mm["L"]
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_pcs.config import HEMISPHERES, LabelSettings
from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.io.derivatives import dseg_path
from bids_pcs.io.nifti import load_t1w
from bids_pcs.io.ratings import ImageRatings, find_rating_files, read_ratings
from bids_pcs.morphometry import pcs_length_mm, split_hemispheres

logger = logging.getLogger(__name__)

CLASS_COLUMNS: dict[str, str] = {"L": "pcs_left", "R": "pcs_right"}
LENGTH_COLUMNS: dict[str, str] = {"L": "pcs_left_length_mm", "R": "pcs_right_length_mm"}
SOURCE_TSV = "participants.tsv"
SOURCE_TABLE = "table"
SOURCE_RATING = "rating"
SOURCE_TABLE_LENGTH = "length_mm"  # a length given in a table, with the thresholds
SOURCE_LENGTH = "length"  # the length of the mask, with the thresholds
TABLE_SUFFIXES = (".tsv", ".csv")
# affines of a label and its T1w may differ by float32 rounding of the header
GRID_TOLERANCE_MM = 1e-3
_MISSING = {"", "n/a", "na", "nan"}
_SHOWN = 10  # images named in an error message before "and N more"


@dataclass(frozen=True)
class LabelRecord:
    """The labels of one T1w image.

    Args:
        image: the raw T1w image.
        dseg_path: its PCS dseg on the T1w grid, or ``None`` (no mask: the
            image trains the classification only).
        classes: class per hemisphere, ``{"L": "present", "R": None}``
            (``None``: no class known for that hemisphere).
        class_sources: where each class came from: ``"rating"``,
            ``"participants.tsv"``, ``"table"``, ``"length_mm"`` (a length given
            in a table) or ``"length"`` (the mask's length), ``None`` without a class.
        lengths_mm: per hemisphere the length a table gives (``None``: not given).
    """

    image: T1wImage
    dseg_path: Path | None
    classes: dict[str, str | None]
    class_sources: dict[str, str | None]
    lengths_mm: dict[str, float | None] = field(
        default_factory=lambda: dict.fromkeys(HEMISPHERES))

    @property
    def has_mask(self) -> bool:
        return self.dseg_path is not None


@dataclass(frozen=True)
class _TableLabels:
    """What one table says about one participant (or one of their sessions)."""

    classes: dict[str, str]
    lengths_mm: dict[str, float]


@dataclass(frozen=True)
class _Table:
    """A label table: ``{(subject, session or None): labels}`` and what kind it is."""

    path: Path
    source: str
    rows: dict[tuple[str, str | None], _TableLabels]

    def lookup(self, image: T1wImage) -> _TableLabels | None:
        return self.rows.get((image.subject, image.session)) or self.rows.get(
            (image.subject, None))


@dataclass(frozen=True)
class _Source:
    """A label source, read: where masks live, its tables, its ratings."""

    root: Path
    masks_dir: Path | None
    tables: list[_Table]
    ratings: dict[str, ImageRatings]


def read_labels(labels_dir: str | Path, images: list[T1wImage],
                labels: LabelSettings | None = None, *, bids_dir: str | Path | None = None,
                require_all: bool = True) -> list[LabelRecord]:
    """One :class:`LabelRecord` per image of ``images`` that has any label, in order.

    Args:
        labels_dir: the label source: a label dataset, a TSV/CSV table or a
            folder of rating files (see the module doc).
        images: the selected T1w images (from :func:`collect_t1w`).
        labels: label map, class scheme and length thresholds (default settings otherwise).
        bids_dir: the raw dataset, for its ``participants.tsv``; found from the
            images when not given.
        require_all: refuse a selection in which some image has no label; with
            ``False`` such images are skipped (and logged), and only a
            selection without any labelled image is refused.

    Raises:
        InputDataError: the source is missing or malformed, a dseg does not
            fit its T1w or holds values outside the label map, or a class or
            length in a table or rating file is not valid.
    """
    labels = labels or LabelSettings()
    source = _read_source(Path(labels_dir), labels)
    root = source.root
    if not images:
        raise InputDataError(f"No T1w image selected to match with the labels in {root}.")
    raw_root = Path(bids_dir) if bids_dir is not None else _raw_root(images[0])
    tables = list(source.tables)
    if raw_root is not None and (raw_root / SOURCE_TSV).absolute() not in {
            t.path.absolute() for t in tables}:
        raw_table = _read_table(raw_root / SOURCE_TSV, labels, SOURCE_TSV, required=False)
        if raw_table is not None:
            tables.append(raw_table)

    records: list[LabelRecord] = []
    missing: list[T1wImage] = []
    excluded: list[T1wImage] = []
    for image in images:
        rating = source.ratings.get(image.prefix)
        if rating is not None and rating.excluded:
            excluded.append(image)
            continue
        path = find_dseg(source.masks_dir, image) if source.masks_dir else None
        record = _record(image, path, tables, rating, labels)
        if record is None:
            missing.append(image)
        else:
            records.append(record)
    if excluded:
        logger.warning("Leaving out %d T1w image(s) whose registration a reader rated bad: %s",
                       len(excluded), _names(excluded))
    if not records:
        raise InputDataError(
            f"No PCS label (no <prefix>_space-T1w_desc-pcs_dseg.nii.gz and no pcs_left / "
            f"pcs_right class) found in {root} for any selected T1w image "
            f"({_names(missing + excluded)}); check --labels and --participant-label."
        )
    if missing and require_all:
        raise InputDataError(
            f"{len(missing)} selected T1w image(s) have no PCS label in {root} "
            f"({_names(missing)}); add a _space-T1w_desc-pcs_dseg.nii.gz or a class for "
            "them, or leave them out with --participant-label."
        )
    if missing:
        logger.warning("Skipping %d T1w image(s) without any PCS label (no mask, no class) in "
                       "%s: %s", len(missing), root, _names(missing))
    _warn_disagreements(records, labels)
    return records


def find_dseg(labels_dir: Path, image: T1wImage) -> Path | None:
    """The PCS dseg of ``image`` in a label dataset (``.nii.gz`` or ``.nii``), or ``None``."""
    path = dseg_path(labels_dir, image)
    if path.is_file():
        return path
    uncompressed = path.with_name(path.name[: -len(".gz")])
    return uncompressed if uncompressed.is_file() else None


def load_dseg(path: Path, reference: nib.spatialimages.SpatialImage | None = None,
              labels: LabelSettings | None = None) -> nib.Nifti1Image:
    """A PCS dseg as an int16 image, checked against the label map and ``reference``'s grid.

    Raises:
        InputDataError: unreadable, not 3D, values outside ``{0, left, right}``,
            or a grid (shape or affine) other than the reference's.
    """
    labels = labels or LabelSettings()
    path = Path(path)
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputDataError(
            f"Label {path} is not a readable NIfTI file ({exc}); replace it."
        ) from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputDataError(f"Label {path} has shape {data.shape}; a PCS dseg must be 3D.")
    check_label_values(data, path, labels)
    if reference is not None:
        check_same_grid(img.affine, data.shape, reference, path)
    out = nib.Nifti1Image(data.astype(np.int16), img.affine, img.header)
    out.set_data_dtype(np.int16)
    return out


def check_label_values(data: np.ndarray, path: Path | str, labels: LabelSettings) -> None:
    """Refuse a dseg with any value other than 0 and the two PCS labels."""
    allowed = {0, labels.dseg_left, labels.dseg_right}
    data = np.asarray(data)
    # comparisons first: sorting a whole 256^3 volume for np.unique is slow
    ok = np.zeros(data.shape, dtype=bool)
    for value in allowed:
        ok |= data == value
    if not ok.all():
        bad = np.unique(data[~ok]).tolist()
        shown = ", ".join(f"{v:g}" for v in bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise InputDataError(
            f"Label {path} holds value(s) {shown} outside the label map "
            f"{sorted(allowed)} (0 background, {labels.dseg_left} left PCS, "
            f"{labels.dseg_right} right PCS); fix the label file."
        )


def check_same_grid(affine: np.ndarray, shape: tuple[int, ...],
                    reference: nib.spatialimages.SpatialImage, path: Path | str) -> None:
    """Refuse a label whose grid differs from its T1w's (shape, or affine beyond 1e-3 mm)."""
    ref_shape = tuple(reference.shape[:3])
    if tuple(shape[:3]) != ref_shape:
        raise InputDataError(
            f"Label {path} has shape {tuple(shape[:3])} but its T1w has {ref_shape}; "
            "labels must be on the T1w grid (space-T1w): resample the label to the T1w."
        )
    difference = float(np.abs(np.asarray(affine) - reference.affine).max())
    if difference > GRID_TOLERANCE_MM:
        raise InputDataError(
            f"Label {path} has an affine that differs from its T1w's by up to "
            f"{difference:.3g} mm; labels must be on the T1w grid (space-T1w): "
            "resample the label to the T1w."
        )


def parse_pcs_class(value: object, where: str, labels: LabelSettings | None = None
                    ) -> str | None:
    """A class name from a table cell: lower-cased and stripped; ``None`` when missing.

    In binary mode "prominent" is read as "present".

    Raises:
        InputDataError: a name that is not one of the classes (``where`` says
            which file, row and column).
    """
    labels = labels or LabelSettings()
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    name = str(value).strip().lower()
    if name in _MISSING:
        return None
    name = labels.merge_class(name)
    if name not in labels.classes:
        raise InputDataError(
            f"Unknown PCS class {str(value)!r} in {where}; valid classes are "
            f"{', '.join(labels.classes)} (or n/a to derive it from a length or the mask)."
        )
    return name


def parse_length_mm(value: object, where: str) -> float | None:
    """A length in mm from a table cell; ``None`` when missing.

    Raises:
        InputDataError: not a number, or negative or infinite.
    """
    if value is None:
        return None
    text = str(value).strip()
    if text.lower() in _MISSING:
        return None
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number) or number < 0:
        raise InputDataError(f"PCS length {text!r} in {where} is not a length in mm (a number "
                             "of 0 or more, or n/a); fix the table.")
    return number


def _read_source(path: Path, labels: LabelSettings) -> _Source:
    """The label source at ``path``: a label dataset, a table, or a folder of rating files."""
    if not path.exists():
        raise InputDataError(
            f"Label source {path} does not exist; give --labels a label dataset (a BIDS "
            "derivative dataset with <prefix>_space-T1w_desc-pcs_dseg.nii.gz files and/or a "
            "participants.tsv with pcs_left and pcs_right), a TSV table of classes, or a "
            "folder of rating files saved from the reports.")
    root = path.absolute()
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise InputDataError(f"Label file {path} is not a .tsv or .csv table; give a table "
                                 "with participant_id, pcs_left and pcs_right columns.")
        source = SOURCE_TSV if path.name == SOURCE_TSV else SOURCE_TABLE
        table = _read_table(path, labels, source, required=True)
        return _Source(root=root, masks_dir=None, tables=[table] if table else [], ratings={})
    ratings = read_ratings(find_rating_files(path), labels)
    description = path / "dataset_description.json"
    if not description.is_file():
        if ratings:
            return _Source(root=root, masks_dir=None, tables=[], ratings=ratings)
        raise InputDataError(
            f"Label dataset {path} has no dataset_description.json and no rating files "
            "(*_ratings.tsv, *_ratings.json); is it the root of a BIDS derivative dataset?")
    try:
        json.loads(description.read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{description} is not valid JSON ({exc}); fix it.") from exc
    table = _read_table(path / SOURCE_TSV, labels, SOURCE_TSV, required=False)
    return _Source(root=root, masks_dir=root, tables=[table] if table else [],
                   ratings=ratings)


def _raw_root(image: T1wImage) -> Path | None:
    """The raw dataset's root, from an image's absolute path and its relative one."""
    parts = Path(image.relpath).parts
    if not parts or tuple(image.path.parts[-len(parts):]) != parts:
        return None
    return Path(*image.path.parts[: -len(parts)])


def _read_table(path: Path, labels: LabelSettings, source: str, *,
                required: bool) -> _Table | None:
    """The classes and lengths a table gives, per participant (and session when it says).

    ``required``: the table was given as the label source, so it must hold at
    least one class or length column.
    """
    if not path.is_file():
        return None
    separator = "," if path.suffix.lower() == ".csv" else "\t"
    try:
        table = pd.read_csv(path, sep=separator, dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputDataError(f"{path} is not a readable table ({exc}); fix it.") from exc
    if "participant_id" not in table.columns:
        raise InputDataError(f"{path} has no participant_id column; BIDS requires one.")
    label_columns = [*CLASS_COLUMNS.values(), *LENGTH_COLUMNS.values()]
    if required and not any(c in table.columns for c in label_columns):
        raise InputDataError(f"{path} has none of the columns {', '.join(label_columns)}; "
                             "name the class columns pcs_left and pcs_right.")
    rows: dict[tuple[str, str | None], _TableLabels] = {}
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        subject = str(row["participant_id"]).strip().removeprefix("sub-")
        session = str(row.get("session_id", "")).strip().removeprefix("ses-") or None
        classes: dict[str, str] = {}
        lengths: dict[str, float] = {}
        for hemisphere in HEMISPHERES:
            where = f"{path} (line {row_number}, {{}})"
            column = CLASS_COLUMNS[hemisphere]
            if column in row:
                name = parse_pcs_class(row[column], where.format(column), labels)
                if name is not None:
                    classes[hemisphere] = name
            column = LENGTH_COLUMNS[hemisphere]
            if column in row:
                length = parse_length_mm(row[column], where.format(column))
                if length is not None:
                    lengths[hemisphere] = length
        if classes or lengths:
            rows[(subject, session)] = _TableLabels(classes, lengths)
    return _Table(path=path.absolute(), source=source, rows=rows)


def _record(image: T1wImage, path: Path | None, tables: list[_Table],
            rating: ImageRatings | None, labels: LabelSettings) -> LabelRecord | None:
    masks = None
    affine = None
    if path is not None:
        reference = load_t1w(image.path, check_data=False)
        dseg = load_dseg(path, reference, labels)
        masks = split_hemispheres(np.asanyarray(dseg.dataobj), labels)
        affine = dseg.affine
    found = [(t, t.lookup(image)) for t in tables]
    found = [(t, entry) for t, entry in found if entry is not None]
    classes: dict[str, str | None] = {}
    sources: dict[str, str | None] = {}
    lengths: dict[str, float | None] = {}
    for hemisphere in HEMISPHERES:
        given = next(((t.source, e.classes[hemisphere]) for t, e in found
                      if hemisphere in e.classes), None)
        length = next((e.lengths_mm[hemisphere] for _, e in found
                       if hemisphere in e.lengths_mm), None)
        lengths[hemisphere] = length
        if rating is not None and hemisphere in rating.classes:
            given = (SOURCE_RATING, rating.classes[hemisphere])
        if given is not None:
            sources[hemisphere], classes[hemisphere] = given
            if masks is not None and given[1] != "absent" and not masks[hemisphere].any():
                logger.warning("%s: %s says the %s PCS is %s, but %s has no voxel of it.",
                               image.prefix, given[0], hemisphere, given[1], path.name)
        elif length is not None:
            classes[hemisphere] = labels.class_from_length(length)
            sources[hemisphere] = SOURCE_TABLE_LENGTH
        elif masks is not None:
            measured = pcs_length_mm(masks[hemisphere], affine)
            classes[hemisphere] = labels.class_from_length(measured)
            sources[hemisphere] = SOURCE_LENGTH
        else:
            classes[hemisphere] = sources[hemisphere] = None
    if path is None and all(c is None for c in classes.values()):
        return None
    return LabelRecord(image=image, dseg_path=path, classes=classes, class_sources=sources,
                       lengths_mm=lengths)


def _warn_disagreements(records: list[LabelRecord], labels: LabelSettings) -> None:
    """Log given classes that a given length contradicts (the class is kept: the lab's call)."""
    clashes = [f"{r.image.prefix} {h} ({r.classes[h]}, {r.lengths_mm[h]:g} mm)"
               for r in records for h in HEMISPHERES
               if r.lengths_mm[h] is not None and r.classes[h] is not None
               and r.class_sources[h] != SOURCE_TABLE_LENGTH
               and labels.class_from_length(r.lengths_mm[h]) != r.classes[h]]
    if clashes:
        shown = "; ".join(clashes[:_SHOWN]) + (f" and {len(clashes) - _SHOWN} more"
                                               if len(clashes) > _SHOWN else "")
        logger.warning("%d labelled hemisphere(s) have a class that their given length does not "
                       "give under the thresholds (%g / %g mm); the class is used: %s",
                       len(clashes), labels.present_min_mm, labels.prominent_min_mm, shown)


def _names(images: list[T1wImage]) -> str:
    shown = ", ".join(im.prefix for im in images[:_SHOWN])
    return shown + (f" and {len(images) - _SHOWN} more" if len(images) > _SHOWN else "")
