"""Per-image results read back from the derivative files on disk.

Reports and the group level work from OUTPUT_DIR alone (the raw data may be
gone), so everything they show is read here from the files the participant
level wrote (see "Per-image PCS results" in docs/architecture.md):

- ``<prefix>_desc-pcs_pcs.tsv`` / ``.json``: classes, probabilities, length,
  volume per hemisphere and the model's provenance (only with ``--model``);
- ``<prefix>_space-<template>_desc-registration_qc.json``: the registration QC verdict;
- every path (and the PCS table's columns) comes from the
  :mod:`bids_pcs.io.derivatives` name builders, which the writers use too.

Usage::

    for result in collect_results(Path("/out")):
        print(result.image.prefix, result.qc_passed, result.hemispheres["L"].pcs_class)
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pandas as pd

from bids_pcs.config import CLASS_SCHEMES, HEMISPHERES, PCS_CLASSES
from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.io.bids_names import parse_name
from bids_pcs.io.derivatives import (
    DERIVATIVE_ENTITIES,
    PCS_TABLE_REQUIRED,
    crop_path,
    dseg_path,
    pcs_metadata_path,
    pcs_set_members,
    pcs_table_path,
    probseg_path,
    registration_qc_path,
    sidecar_path,
)
from bids_pcs.io.manifest import set_problem

# the endings that mark an image as processed; the prefix is what precedes them
_PCS_TABLE_END = "_desc-pcs_pcs.tsv"
_QC_END = re.compile(r"_desc-registration_qc\.json$")
_CROP_END = re.compile(r"_desc-medialfrontal[LR]_T1w\.nii(\.gz)?$")
_ENTITY = re.compile(r"^([a-z]+)-([A-Za-z0-9]+)$")


@dataclass(frozen=True)
class HemisphereResult:
    """PCS of one hemisphere: class, class probabilities, length, volume and uncertainty.

    ``probabilities`` has one entry per class of the table's scheme (three
    classes, or absent / present). The call and uncertainty fields are
    ``None`` in tables written before they existed, and where not computed.
    """

    pcs_class: str | None
    probabilities: dict[str, float | None]
    length_mm: float | None
    volume_mm3: float | None
    network_class: str | None = None
    length_class: str | None = None
    classes_agree: bool | None = None
    class_entropy: float | None = None
    mask_uncertainty: float | None = None
    flip_agreement: float | None = None

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.probabilities)


@dataclass(frozen=True)
class RegistrationQC:
    """Registration quality: correlation with the template, its threshold, the verdict."""

    correlation: float | None
    threshold: float | None
    passed: bool | None


@dataclass(frozen=True)
class ImageResults:
    """Everything the participant level wrote for one T1w image."""

    image: T1wImage
    output_dir: Path
    hemispheres: dict[str, HemisphereResult] = field(default_factory=dict)
    pcs_metadata: dict[str, Any] = field(default_factory=dict)
    qc: RegistrationQC | None = None
    incomplete: str | None = None
    pcs_incomplete: str | None = None

    @property
    def complete(self) -> bool:
        """False when the image's preprocessing set was interrupted (see ``incomplete``).

        An interrupted PCS set (``pcs_incomplete``) is read as no PCS results.
        """
        return self.incomplete is None

    @property
    def has_pcs(self) -> bool:
        """Whether inference ran for this image (a ``_desc-pcs_pcs.tsv`` exists)."""
        return bool(self.hemispheres)

    @property
    def qc_passed(self) -> bool | None:
        return self.qc.passed if self.qc else None

    @property
    def qc_record(self) -> dict[str, Any]:
        """The registration QC record as preprocessing wrote it, with its ``Settings``."""
        return _read_json(registration_qc_path(self.output_dir, self.image)) or {}

    @property
    def model(self) -> dict[str, Any]:
        return dict(self.pcs_metadata.get("Model") or {})

    def crop(self, hemisphere: str) -> Path:
        return crop_path(self.output_dir, self.image, hemisphere)

    def probseg(self, hemisphere: str) -> Path:
        return probseg_path(self.output_dir, self.image, hemisphere)

    @property
    def dseg(self) -> Path:
        return dseg_path(self.output_dir, self.image)


def discover_images(output_dir: Path, subject: str | None = None) -> list[T1wImage]:
    """The T1w images that have participant results in ``output_dir``, sorted by name.

    Images are recognised by their PCS table, registration QC or crops; their
    names are parsed back into entities, and the raw path is taken from the
    ``Sources`` of their sidecars (it may no longer exist).
    """
    output_dir = Path(output_dir)
    pattern = f"sub-{subject}" if subject else "sub-*"
    prefixes: dict[str, Path] = {}
    for anat in sorted(output_dir.glob(f"{pattern}/anat")) + sorted(
            output_dir.glob(f"{pattern}/ses-*/anat")):
        for path in anat.iterdir():
            prefix = _prefix_of(path.name)
            if prefix:
                prefixes.setdefault(prefix, anat)
    raw_dir = find_raw_dataset(output_dir)
    return [image_from_prefix(prefix, output_dir, raw_dir)
            for prefix in sorted(prefixes)]


def image_from_prefix(prefix: str, output_dir: Path, raw_dir: Path | None = None) -> T1wImage:
    """Rebuild a :class:`T1wImage` from a BIDS name stem such as ``sub-01_ses-a_run-2``."""
    subject = session = None
    entities: list[tuple[str, str]] = []
    for part in prefix.split("_"):
        match = _ENTITY.match(part)
        if not match:
            raise InputDataError(f"{prefix!r} in {output_dir} is not a BIDS name stem; "
                                 "remove files that bids_pcs did not write.")
        key, value = match.groups()
        if key == "sub":
            subject = value
        elif key == "ses":
            session = value
        else:
            entities.append((key, value))
    if subject is None:
        raise InputDataError(f"{prefix!r} in {output_dir} has no sub- entity.")
    image = T1wImage(path=Path(), subject=subject, session=session, entities=tuple(entities))
    relpath = _raw_relpath(output_dir, image)
    path = (raw_dir / relpath) if (raw_dir and relpath) else Path(relpath or prefix)
    return T1wImage(path=path, subject=subject, session=session, entities=tuple(entities),
                    relpath=relpath)


def find_raw_dataset(output_dir: Path, bids_dir: str | Path | None = None) -> Path | None:
    """The raw dataset if it is still reachable: ``bids_dir``, else ``DatasetLinks.raw``."""
    candidates: list[Path] = []
    if bids_dir:
        candidates.append(Path(bids_dir))
    description = _read_json(Path(output_dir) / "dataset_description.json") or {}
    link = (description.get("DatasetLinks") or {}).get("raw")
    if isinstance(link, str):
        parsed = urlparse(link)
        if parsed.scheme in ("", "file"):
            candidates.append(Path(unquote(parsed.path)))
    for candidate in candidates:
        if (candidate / "dataset_description.json").is_file():
            return candidate
    return None


def load_results(output_dir: Path, image: T1wImage) -> ImageResults:
    """Read the PCS table, its metadata and the registration QC of one image."""
    output_dir = Path(output_dir)
    table = pcs_table_path(output_dir, image)
    pcs_problem = pcs_set_problem(output_dir, image)
    # an interrupted PCS set is no result: the image reads as not inferred yet
    hemispheres = read_pcs_table(table) if table.is_file() and pcs_problem is None else {}
    metadata = (_read_json(pcs_metadata_path(output_dir, image)) or {}
                if pcs_problem is None else {})
    qc = read_registration_qc(registration_qc_path(output_dir, image))
    if qc is None and hemispheres:
        # an image without a QC file still has the QC columns of its PCS table
        qc = _qc_from_table(table)
    return ImageResults(image=image, output_dir=output_dir, hemispheres=hemispheres,
                        pcs_metadata=metadata, qc=qc,
                        incomplete=preprocessing_set_problem(output_dir, image),
                        pcs_incomplete=pcs_problem)


def preprocessing_set_problem(output_dir: Path, image: T1wImage) -> str | None:
    """Why an image's preprocessing set is incomplete, or None (see io/manifest.py).

    Sets written before manifests existed (a QC record without ``Files``)
    count as complete when their record exists.
    """
    from bids_pcs.preprocess import output_paths

    where = output_paths(output_dir, image)
    problem = set_problem(where.qc_file, where.members(), require_files=False)
    return None if problem is None else f"its preprocessing outputs are incomplete ({problem})"


def pcs_set_problem(output_dir: Path, image: T1wImage) -> str | None:
    """Why an image's PCS results (maps, table, their JSON record) are incomplete, or None."""
    # the data files mark a set as begun; sidecars left after deleting maps do not
    data = [p for p in pcs_set_members(output_dir, image) if p.suffix != ".json"]
    problem = set_problem(pcs_metadata_path(output_dir, image), data, require_files=False)
    return None if problem is None else f"its PCS results are incomplete ({problem})"


def collect_results(output_dir: Path, subject: str | None = None) -> list[ImageResults]:
    """Results of every image found in ``output_dir`` (of one subject if given)."""
    return [load_results(output_dir, image) for image in discover_images(output_dir, subject)]


def read_pcs_table(path: Path) -> dict[str, HemisphereResult]:
    """``<prefix>_desc-pcs_pcs.tsv`` as one :class:`HemisphereResult` per hemisphere.

    The class scheme is read from the ``p_<class>`` columns: the three
    classes, or the binary absent / present.
    """
    frame = _read_tsv(path)
    classes = tuple(c for c in PCS_CLASSES if f"p_{c}" in frame.columns)
    missing = [c for c in PCS_TABLE_REQUIRED if c not in frame.columns]
    if classes not in CLASS_SCHEMES:
        missing += [f"p_{c}" for c in PCS_CLASSES[:2] if c not in classes]
    if missing:
        raise InputDataError(f"{path} lacks the column(s) {', '.join(missing)}; rerun the "
                             "participant level with this version of bids_pcs.")
    out: dict[str, HemisphereResult] = {}
    for _, row in frame.iterrows():
        hemisphere = str(row["hemisphere"])
        if hemisphere not in HEMISPHERES:
            raise InputDataError(f"{path} has hemisphere {hemisphere!r}; expected L or R.")
        found = {column: _text(row.get(column))
                 for column in ("pcs_class", "pcs_class_network", "pcs_class_length")}
        for column, name in found.items():
            if name is not None and name not in classes:
                raise InputDataError(f"{path} has {column} {name!r}; expected one of "
                                     f"{', '.join(classes)}.")
        out[hemisphere] = HemisphereResult(
            pcs_class=found["pcs_class"],
            probabilities={c: _number(row[f"p_{c}"]) for c in classes},
            length_mm=_number(row["pcs_length_mm"]),
            volume_mm3=_number(row["pcs_volume_mm3"]),
            network_class=found["pcs_class_network"],
            length_class=found["pcs_class_length"],
            classes_agree=_flag(row.get("class_agreement")),
            class_entropy=_number(row.get("class_entropy")),
            mask_uncertainty=_number(row.get("mask_uncertainty")),
            flip_agreement=_number(row.get("flip_agreement")),
        )
    return out


def read_registration_qc(path: Path) -> RegistrationQC | None:
    """The preprocessing's QC record (:func:`bids_pcs.spatial.qc.registration_qc`), or ``None``."""
    data = _read_json(path)
    if data is None:
        return None
    return RegistrationQC(correlation=_number(data.get("MinCorrelation")),
                          threshold=_number(data.get("Threshold")),
                          passed=_flag(data.get("Passed")))


def _qc_from_table(path: Path) -> RegistrationQC | None:
    frame = _read_tsv(path)
    if frame.empty:
        return None
    row = frame.iloc[0]
    return RegistrationQC(correlation=_number(row.get("qc_correlation")), threshold=None,
                          passed=_flag(row.get("qc_passed")))


def _prefix_of(name: str) -> str | None:
    """The raw stem of a PCS table, registration QC or crop (None for any other file).

    Derivative entities may sit between raw ones (BIDS puts ``chunk-`` after
    ``space-``), so the name is parsed, not cut.
    """
    if not (name.endswith(_PCS_TABLE_END) or _QC_END.search(name) or _CROP_END.search(name)):
        return None
    try:
        pairs, _, _ = parse_name(name)
    except ValueError:
        return None
    return "_".join(f"{key}-{value}" for key, value in pairs
                    if key not in DERIVATIVE_ENTITIES)


def _raw_relpath(output_dir: Path, image: T1wImage) -> str:
    # the Sources of any sidecar name the raw T1w as bids:raw:<relpath>
    for sidecar in (pcs_metadata_path(output_dir, image),
                    sidecar_path(dseg_path(output_dir, image)),
                    sidecar_path(crop_path(output_dir, image, "L")),
                    sidecar_path(crop_path(output_dir, image, "R"))):
        for source in (_read_json(sidecar) or {}).get("Sources", []):
            if isinstance(source, str) and source.startswith("bids:raw:") \
                    and source.endswith(("_T1w.nii.gz", "_T1w.nii")):
                return source[len("bids:raw:"):]
    return ""


def _read_tsv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=False,
                           dtype=str)
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{path} is not a readable TSV file ({exc}); rerun the "
                             "participant level for this image.") from exc


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    return None


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None
