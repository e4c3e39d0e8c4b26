"""The BIDS derivative dataset that every level writes into.

One writer for all levels: the dataset-level files (dataset_description.json,
.bidsignore, desc-pcs_dseg.tsv), BIDS names built from entities in the order
the BIDS schema fixes, and JSON sidecars whose ``Sources`` are BIDS URIs.
Every file goes through :mod:`bids_pcs.io.atomic`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_pcs import APP_NAME, CODE_URL, __version__
from bids_pcs.config import TEMPLATE_NAME, LabelSettings
from bids_pcs.errors import OutputError
from bids_pcs.io.atomic import remove_stale_temporaries, write_json, write_text
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.io.bids_names import build_name

LOGGER = logging.getLogger("bids_pcs.derivatives")
BIDS_VERSION = "1.10.0"
# the entities derivatives add to their source's; "from", "to" and "mode" name
# transforms (BEP014 draft). "hemi" is left out on purpose: BIDS allows it for
# surfaces only, so the validator rejects it on volumes; the hemisphere goes
# into desc or label instead (see crop_path and probseg_path).
DERIVATIVE_ENTITIES = ("from", "to", "mode", "space", "res", "label", "desc")

# files the BIDS specification does not define yet; listed in .bidsignore
BIDSIGNORE_PATTERNS = (
    "logs/",
    # without the slash: BIDS reserves models/ for stats models, and the validator
    # only skips that folder when the pattern names it exactly
    "models",
    "study/",
    "figures/",
    "*.html",
    "*_xfm.*",
    "*_pcs.tsv",
    "*_pcs.json",
    "*_qc.json",
    "group_pcs.*",
    "review.*",
    "*_ratings*",
)

# what each label of the PCS segmentation (desc-pcs_dseg) is; its index comes from
# the recipe ([labels] dseg_left, dseg_right), so the lookup table is built from it
DSEG_HEMISPHERES = {
    # hemisphere: name, abbreviation, colour
    "L": ("left paracingulate sulcus", "PCSL", "#e6194b"),
    "R": ("right paracingulate sulcus", "PCSR", "#3cb44b"),
}
_DSEG_BACKGROUND = (0, "background", "BG", "#000000")


@dataclass(frozen=True)
class ContainerInfo:
    """What the container image says about itself (set as ENV in the Dockerfile)."""

    type: str | None
    tag: str | None

    @classmethod
    def from_environment(cls) -> ContainerInfo:
        return cls(type=os.environ.get("BIDS_PCS_CONTAINER_TYPE") or None,
                   tag=os.environ.get("BIDS_PCS_CONTAINER_TAG") or None)


def dataset_description(source_datasets: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """Content of the derivative dataset_description.json."""
    generated_by: dict[str, Any] = {
        "Name": APP_NAME,
        "Version": __version__,
        "CodeURL": CODE_URL,
        "Description": "Paracingulate sulcus detection and classification",
    }
    container = ContainerInfo.from_environment()
    if container.type:
        generated_by["Container"] = {"Type": container.type}
        if container.tag:
            generated_by["Container"]["Tag"] = container.tag
    description: dict[str, Any] = {
        "Name": "bids_pcs derivatives: paracingulate sulcus",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
    }
    if source_datasets:
        description["SourceDatasets"] = source_datasets
    return description


def init_derivatives(output_dir: Path, bids_dir: Path | None = None,
                     labels: LabelSettings | None = None) -> Path:
    """Create OUTPUT_DIR and its dataset-level files; safe to call from concurrent runs.

    ``labels`` is the run's label map, written as ``desc-pcs_dseg.tsv``.

    Files are rewritten atomically with identical content, so several runs
    started at once all end with one valid dataset_description.json. Partial
    files of killed runs are removed (see
    :func:`bids_pcs.io.atomic.remove_stale_temporaries`).
    """
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe = output_dir / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"OUTPUT_DIR {output_dir} is not writable ({exc.strerror}); "
            "choose a directory you can write to."
        ) from exc
    # temporary files of runs killed before their rename (SIGKILL, OOM killer, node loss)
    for stale in remove_stale_temporaries(output_dir):
        LOGGER.info("Removed %s, a partial file left by a run that was killed.", stale)
    sources = None
    if bids_dir is not None:
        uri = Path(bids_dir).absolute().as_uri()
        sources = [{"URL": uri}]
        raw_description = Path(bids_dir) / "dataset_description.json"
        try:
            doi = json.loads(raw_description.read_text()).get("DatasetDOI")
        except (OSError, ValueError):
            doi = None
        if doi:
            sources[0]["DOI"] = doi
    description = dataset_description(sources)
    if bids_dir is not None:
        description["DatasetLinks"] = {"raw": Path(bids_dir).absolute().as_uri()}
    existing = _read_json(output_dir / "dataset_description.json")
    # keep links to raw datasets written by earlier runs (e.g. the group level)
    if existing and "DatasetLinks" in existing and "DatasetLinks" not in description:
        description["DatasetLinks"] = existing["DatasetLinks"]
        if "SourceDatasets" in existing:
            description["SourceDatasets"] = existing["SourceDatasets"]
    write_json(output_dir / "dataset_description.json", description)
    write_text(output_dir / ".bidsignore", "\n".join(BIDSIGNORE_PATTERNS) + "\n")
    write_text(output_dir / "desc-pcs_dseg.tsv", dseg_lookup_tsv(labels))
    return output_dir


def dseg_lookup(labels: LabelSettings | None = None) -> list[tuple[int, str, str, str]]:
    """(index, name, abbreviation, colour) of every label of ``desc-pcs_dseg``, by index.

    Args:
        labels: the run's label map (default: 1 left, 2 right).
    """
    labels = labels or LabelSettings()
    rows = [_DSEG_BACKGROUND]
    rows += [(index, *DSEG_HEMISPHERES[h])
             for h, index in (("L", labels.dseg_left), ("R", labels.dseg_right))]
    return sorted(rows)


def dseg_lookup_tsv(labels: LabelSettings | None = None) -> str:
    """The label lookup table of ``desc-pcs_dseg`` as TSV text."""
    lines = ["index\tname\tabbreviation\tcolor"]
    lines += [f"{i}\t{name}\t{abbr}\t{color}" for i, name, abbr, color in dseg_lookup(labels)]
    return "\n".join(lines) + "\n"


def derivative_name(source: T1wImage, *, suffix: str, extension: str,
                    **entities: str | None) -> str:
    """BIDS file name of a derivative of ``source``: its raw entities, then ``entities``.

    ``entities`` use BIDS keys (``space``, ``desc``, ``label``, ``res``,
    and ``from_``/``to``/``mode`` for transforms); ``None`` values are skipped.
    The name is built by pybids' ``build_path`` (see :mod:`bids_pcs.io.bids_names`).

    Example::

        derivative_name(img, space="T1w", desc="pcs", suffix="dseg", extension=".nii.gz")
        # 'sub-01_task-still_space-T1w_desc-pcs_dseg.nii.gz'
    """
    cleaned = {k.rstrip("_"): v for k, v in entities.items() if v is not None}
    unknown = set(cleaned) - set(DERIVATIVE_ENTITIES)
    if "hemi" in unknown:
        raise ValueError("BIDS allows hemi- only on surfaces; use crop_path() or "
                         "probseg_path(), which put the hemisphere in desc- or label-")
    if unknown:
        raise ValueError(f"unknown derivative entities: {sorted(unknown)}")
    raw = {"sub": source.subject, "ses": source.session, **dict(source.entities)}
    taken = sorted(set(cleaned) & {k for k, v in raw.items() if v is not None})
    if taken:
        raise ValueError(f"{source.prefix} already has the entities {taken}")
    return Path(build_name({**raw, **cleaned}, suffix=suffix, extension=extension)).name


def derivative_path(output_dir: Path, source: T1wImage, *, suffix: str, extension: str,
                    **entities: str | None) -> Path:
    """Absolute path of a derivative of ``source`` under ``OUTPUT_DIR/sub-X[/ses-Y]/anat``."""
    name = derivative_name(source, suffix=suffix, extension=extension, **entities)
    return Path(output_dir) / source.anat_dir / name


def crop_path(output_dir: Path, source: T1wImage, hemisphere: str) -> Path:
    """The medial frontal crop of one hemisphere in template space.

    ``<prefix>_space-MNI152NLin2009aSym_desc-medialfrontalL_T1w.nii.gz`` (or ``...R``).
    """
    _check_hemisphere(hemisphere)
    return derivative_path(output_dir, source, space=TEMPLATE_NAME,
                           desc=f"medialfrontal{hemisphere}", suffix="T1w", extension=".nii.gz")


def probseg_path(output_dir: Path, source: T1wImage, hemisphere: str) -> Path:
    """PCS probability map of one hemisphere on the native grid.

    ``<prefix>_space-T1w_label-PCSL_probseg.nii.gz`` (or ``label-PCSR``).
    """
    _check_hemisphere(hemisphere)
    return derivative_path(output_dir, source, space="T1w", label=f"PCS{hemisphere}",
                           suffix="probseg", extension=".nii.gz")


def dseg_path(output_dir: Path, source: T1wImage) -> Path:
    """The PCS label map on the native grid: ``<prefix>_space-T1w_desc-pcs_dseg.nii.gz``."""
    return derivative_path(output_dir, source, space="T1w", desc="pcs", suffix="dseg",
                           extension=".nii.gz")


def xfm_path(output_dir: Path, source: T1wImage, *, inverse: bool = False,
             extension: str = ".mat") -> Path:
    """T1w -> template transform (or its inverse) in ANTs format."""
    ends = ("T1w", TEMPLATE_NAME)
    src, dst = ends[::-1] if inverse else ends
    return derivative_path(output_dir, source, from_=src, to=dst, mode="image", suffix="xfm",
                           extension=extension)


# per-image PCS results (docs/architecture.md, "Per-image PCS results"): written by
# inference, read back by the reports, the group level and the demo
PCS_CALL_COLUMNS = ("pcs_class", "pcs_class_network", "pcs_class_length", "class_agreement")
PCS_UNCERTAINTY_COLUMNS = ("class_entropy", "mask_uncertainty", "flip_agreement")
# what every table has, whatever its class scheme and version
PCS_TABLE_REQUIRED = ("hemisphere", "pcs_class", "pcs_length_mm", "pcs_volume_mm3",
                      "qc_correlation", "qc_passed")


def pcs_table_columns(classes: tuple[str, ...] = ("absent", "present", "prominent"),
                      ) -> tuple[str, ...]:
    """The columns of ``<prefix>_desc-pcs_pcs.tsv`` for a class scheme (one ``p_`` per class)."""
    return ("hemisphere", *PCS_CALL_COLUMNS, *(f"p_{c}" for c in classes),
            *PCS_UNCERTAINTY_COLUMNS, "pcs_length_mm", "pcs_volume_mm3", "qc_correlation",
            "qc_passed")


PCS_TABLE_COLUMNS = pcs_table_columns()


def pcs_table_path(output_dir: Path, source: T1wImage) -> Path:
    """``<prefix>_desc-pcs_pcs.tsv``: one row per hemisphere (:data:`PCS_TABLE_COLUMNS`)."""
    return derivative_path(output_dir, source, desc="pcs", suffix="pcs", extension=".tsv")


def pcs_metadata_path(output_dir: Path, source: T1wImage) -> Path:
    """``<prefix>_desc-pcs_pcs.json``: the PCS table's sources, model and thresholds."""
    return derivative_path(output_dir, source, desc="pcs", suffix="pcs", extension=".json")


def pcs_set_members(output_dir: Path, source: T1wImage, *, with_maps: bool = True) -> list[Path]:
    """The files of an image's PCS results besides :func:`pcs_metadata_path`, which lists them.

    ``with_maps``: the probsegs and dseg with their sidecars (an image that
    failed registration QC has the table only).
    """
    maps = [dseg_path(output_dir, source)] + [probseg_path(output_dir, source, h)
                                              for h in ("L", "R")]
    members = [p for path in maps for p in (path, sidecar_path(path))] if with_maps else []
    return [*members, pcs_table_path(output_dir, source)]


def registration_qc_path(output_dir: Path, source: T1wImage) -> Path:
    """The preprocessing's QC record: ``<prefix>_space-<template>_desc-registration_qc.json``."""
    return derivative_path(output_dir, source, space=TEMPLATE_NAME, desc="registration",
                           suffix="qc", extension=".json")


def _check_hemisphere(hemisphere: str) -> None:
    if hemisphere not in ("L", "R"):
        raise ValueError(f"hemisphere must be 'L' or 'R', not {hemisphere!r}")


def sidecar_path(image_path: Path) -> Path:
    """The JSON sidecar beside a NIfTI (``x.nii.gz`` -> ``x.json``)."""
    name = image_path.name
    for ext in (".nii.gz", ".nii", ".tsv", ".h5", ".mat", ".txt"):
        if name.endswith(ext):
            return image_path.with_name(name[: -len(ext)] + ".json")
    return image_path.with_suffix(".json")


def write_sidecar(image_path: Path, source: T1wImage | list[str], **fields: Any) -> Path:
    """Write the JSON sidecar of a derivative, with ``Sources`` as BIDS URIs.

    Images in the native ``space-T1w`` (not a standard template) get the
    ``SpatialReference`` that BIDS requires: the URI of their source T1w.
    """
    sources = [source.bids_uri] if isinstance(source, T1wImage) else list(source)
    content = {"Sources": sources, **fields}
    if "_space-T1w_" in image_path.name and isinstance(source, T1wImage):
        content.setdefault("SpatialReference", source.bids_uri)
    return write_json(sidecar_path(image_path), content)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
