"""Reading a PCS label dataset: one record per labelled T1w image.

A label dataset (DESIGN.md section 3) is a BIDS derivative dataset holding,
per T1w image of the raw dataset, ``<prefix>_space-T1w_desc-pcs_dseg.nii.gz``
on that image's grid (0 background, 1 left PCS, 2 right PCS by default, see
:class:`bids_pcs.config.LabelSettings`), found where bids_pcs writes its own
derivatives: ``LABELS_DIR/sub-X[/ses-Y]/anat/``. The class of each hemisphere
comes from the columns ``pcs_left`` and ``pcs_right`` of a ``participants.tsv``
(the label dataset's first, then the raw dataset's); where it is missing
(no file, no column, no row, or ``n/a``) it is derived from the length of the
hemisphere's mask with the thresholds of the settings.

Usage::

    images = collect_t1w(bids_dir, participant_labels)
    records = read_labels(labels_dir, images, settings.labels)
    records[0].dseg_path, records[0].classes["L"], records[0].class_sources["L"]
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from bids_pcs.config import HEMISPHERES, LabelSettings
from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.io.derivatives import dseg_path
from bids_pcs.io.nifti import load_t1w
from bids_pcs.morphometry import pcs_length_mm, split_hemispheres

logger = logging.getLogger(__name__)

CLASS_COLUMNS: dict[str, str] = {"L": "pcs_left", "R": "pcs_right"}
SOURCE_TSV = "participants.tsv"
SOURCE_LENGTH = "length"
# affines of a label and its T1w may differ by float32 rounding of the header
GRID_TOLERANCE_MM = 1e-3
_MISSING = {"", "n/a", "na", "nan"}
_SHOWN = 10  # images named in an error message before "and N more"


@dataclass(frozen=True)
class LabelRecord:
    """The labels of one T1w image.

    Args:
        image: the raw T1w image.
        dseg_path: its PCS dseg on the T1w grid.
        classes: class per hemisphere, ``{"L": "present", "R": "absent"}``.
        class_sources: where each class came from: ``"participants.tsv"`` or
            ``"length"`` (derived from the mask with the settings' thresholds).
    """

    image: T1wImage
    dseg_path: Path
    classes: dict[str, str]
    class_sources: dict[str, str]


def read_labels(labels_dir: str | Path, images: list[T1wImage],
                labels: LabelSettings | None = None, *, bids_dir: str | Path | None = None,
                require_all: bool = True) -> list[LabelRecord]:
    """One :class:`LabelRecord` per image of ``images`` that has a PCS dseg, in order.

    Args:
        labels_dir: root of the label dataset (has ``dataset_description.json``).
        images: the selected T1w images (from :func:`collect_t1w`).
        labels: label map and length thresholds (default settings otherwise).
        bids_dir: the raw dataset, for its ``participants.tsv``; found from the
            images when not given.
        require_all: refuse a selection in which some image has no dseg; with
            ``False`` such images are skipped (and logged), and only a
            selection without any labelled image is refused.

    Raises:
        InputDataError: the dataset is missing or malformed, a dseg does not
            fit its T1w or holds values outside the label map, or a class in
            ``participants.tsv`` is not one of the known classes.
    """
    labels = labels or LabelSettings()
    root = _check_label_dir(Path(labels_dir))
    if not images:
        raise InputDataError(f"No T1w image selected to match with the labels in {root}.")
    raw_root = Path(bids_dir) if bids_dir is not None else _raw_root(images[0])
    tables = [t for t in (_read_participants(root / SOURCE_TSV, labels),
                          _read_participants(raw_root / SOURCE_TSV, labels) if raw_root else None)
              if t is not None]

    found: list[tuple[T1wImage, Path]] = []
    missing: list[T1wImage] = []
    for image in images:
        path = find_dseg(root, image)
        if path is None:
            missing.append(image)
        else:
            found.append((image, path))
    if not found:
        raise InputDataError(
            f"No PCS label (<prefix>_space-T1w_desc-pcs_dseg.nii.gz) found in {root} for "
            f"any selected T1w image ({_names(missing)}); check --labels and "
            "--participant-label."
        )
    if missing and require_all:
        raise InputDataError(
            f"{len(missing)} selected T1w image(s) have no PCS label in {root} "
            f"({_names(missing)}); add their _space-T1w_desc-pcs_dseg.nii.gz or leave them "
            "out with --participant-label."
        )
    if missing:
        logger.warning("Skipping %d T1w image(s) without a PCS label in %s: %s",
                       len(missing), root, _names(missing))

    return [_record(image, path, tables, labels) for image, path in found]


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
    if name not in labels.classes:
        raise InputDataError(
            f"Unknown PCS class {str(value)!r} in {where}; valid classes are "
            f"{', '.join(labels.classes)} (or n/a to derive it from the mask's length)."
        )
    return name


def _check_label_dir(root: Path) -> Path:
    if not root.exists():
        raise InputDataError(
            f"Label dataset {root} does not exist; give --labels the path of a BIDS derivative "
            "dataset with <prefix>_space-T1w_desc-pcs_dseg.nii.gz files."
        )
    if not root.is_dir():
        raise InputDataError(f"Label dataset {root} is not a directory.")
    description = root / "dataset_description.json"
    if not description.is_file():
        raise InputDataError(
            f"Label dataset {root} has no dataset_description.json; is it the root of a "
            "BIDS derivative dataset?"
        )
    try:
        json.loads(description.read_text())
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{description} is not valid JSON ({exc}); fix it.") from exc
    return root.absolute()


def _raw_root(image: T1wImage) -> Path | None:
    """The raw dataset's root, from an image's absolute path and its relative one."""
    parts = Path(image.relpath).parts
    if not parts or tuple(image.path.parts[-len(parts):]) != parts:
        return None
    return Path(*image.path.parts[: -len(parts)])


def _read_participants(path: Path, labels: LabelSettings) -> dict[str, dict[str, str]] | None:
    """``{subject: {"L": class, "R": class}}`` of the classes a participants.tsv gives."""
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputDataError(f"{path} is not a readable TSV file ({exc}); fix it.") from exc
    if "participant_id" not in table.columns:
        raise InputDataError(f"{path} has no participant_id column; BIDS requires one.")
    out: dict[str, dict[str, str]] = {}
    for row_number, row in enumerate(table.to_dict("records"), start=2):
        subject = str(row["participant_id"]).strip().removeprefix("sub-")
        classes = {}
        for hemisphere, column in CLASS_COLUMNS.items():
            if column in row:
                name = parse_pcs_class(row[column], f"{path} (line {row_number}, {column})",
                                       labels)
                if name is not None:
                    classes[hemisphere] = name
        if classes:
            out[subject] = classes
    return out


def _record(image: T1wImage, path: Path, tables: list[dict[str, dict[str, str]]],
            labels: LabelSettings) -> LabelRecord:
    reference = load_t1w(image.path, check_data=False)
    dseg = load_dseg(path, reference, labels)
    masks = split_hemispheres(np.asanyarray(dseg.dataobj), labels)
    classes: dict[str, str] = {}
    sources: dict[str, str] = {}
    for hemisphere in HEMISPHERES:
        given = next((t[image.subject][hemisphere] for t in tables
                      if hemisphere in t.get(image.subject, {})), None)
        if given is not None:
            classes[hemisphere], sources[hemisphere] = given, SOURCE_TSV
            if given != "absent" and not masks[hemisphere].any():
                logger.warning("%s: participants.tsv says the %s PCS is %s, but %s has no "
                               "voxel of it.", image.prefix, hemisphere, given, path.name)
        else:
            length = pcs_length_mm(masks[hemisphere], dseg.affine)
            classes[hemisphere] = labels.class_from_length(length)
            sources[hemisphere] = SOURCE_LENGTH
    return LabelRecord(image=image, dseg_path=path, classes=classes, class_sources=sources)


def _names(images: list[T1wImage]) -> str:
    shown = ", ".join(im.prefix for im in images[:_SHOWN])
    return shown + (f" and {len(images) - _SHOWN} more" if len(images) > _SHOWN else "")
