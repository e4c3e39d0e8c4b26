"""The PCS derivatives of one T1w image, each written atomically.

For an image that passed registration QC (names from :mod:`bids_pcs.io.derivatives`):

- ``<prefix>_space-T1w_label-PCS{L,R}_probseg.nii.gz`` (+ ``.json``): P(PCS) per
  hemisphere on the native grid, float32 in [0, 1];
- ``<prefix>_space-T1w_desc-pcs_dseg.nii.gz`` (+ ``.json``): 0 background,
  1 left PCS, 2 right PCS (the label map of ``desc-pcs_dseg.tsv``), uint8;
- ``<prefix>_desc-pcs_pcs.tsv`` / ``.json``: the per-image result table of
  docs/architecture.md ("Per-image PCS results"): the reported class under
  the class rule with the network's and the length's classes beside it, the
  class probabilities, the uncertainty measures of :mod:`bids_pcs.inference.calls`,
  length, volume and QC. A model without a trained mask (class labels only)
  gets ``n/a`` length, volume and mask measures: its mask means nothing. The
  set is written as a unit (:mod:`bids_pcs.io.manifest`): the JSON is removed
  before anything is rewritten and written last, listing the maps and the
  table with their sizes and SHA-256 (``Files``), so an interrupted write is
  never taken for a result.

An image that failed QC gets only the table, every value ``n/a`` but its QC
correlation, ``qc_passed`` false, so it is listed (by the reports and the
group level) but never measured; maps left by an earlier run for it are
removed, as they no longer describe what the run decided.

Usage::

    files, rows = write_image_results(output_dir, preprocessed, native, predictions, context)
    files = write_qc_failed(output_dir, preprocessed, context)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_pcs import __version__
from bids_pcs.config import HEMISPHERES, LabelSettings
from bids_pcs.inference.calls import (
    RULE_LENGTH,
    class_entropy,
    hemisphere_call,
    mask_uncertainty,
)
from bids_pcs.inference.native import NativeMaps
from bids_pcs.inference.predict import FLIP_DESCRIPTION, HemispherePrediction
from bids_pcs.io.atomic import atomic_path, write_json, write_text
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.io.derivatives import (
    dseg_path,
    pcs_metadata_path,
    pcs_set_members,
    pcs_table_columns,
    pcs_table_path,
    probseg_path,
    sidecar_path,
    write_sidecar,
)
from bids_pcs.io.manifest import FILES_KEY, describe_files, set_exists
from bids_pcs.morphometry import PcsMorphometry
from bids_pcs.preprocess import PreprocessedImage

LOGGER = logging.getLogger("bids_pcs.inference")
NA = "n/a"
_HEMISPHERE_NAMES = {"L": "left", "R": "right"}


@dataclass(frozen=True)
class WriteContext:
    """What every file of a run records about how it was made.

    Args:
        model: the ``Model`` entry (name, stage, method, strategy, sha256, version).
        threshold: the probability above which a voxel is PCS.
        flip_tta: whether flip test-time augmentation was used.
        labels: class names, length thresholds and dseg values.
        class_rule: the rule in force, ``"length"`` or ``"network"``
            (:func:`bids_pcs.inference.calls.class_rule`).
        class_rule_setting: what ``[inference] class_rule`` said (``"auto"``...).
        segmentation_trained: whether the model learnt segmentation from masks.
    """

    model: dict[str, Any]
    threshold: float
    flip_tta: bool
    labels: LabelSettings
    class_rule: str = RULE_LENGTH
    class_rule_setting: str = "auto"
    segmentation_trained: bool = True


def write_image_results(output_dir: Path, preprocessed: PreprocessedImage, native: NativeMaps,
                        predictions: Mapping[str, HemispherePrediction],
                        context: WriteContext) -> tuple[list[Path], dict[str, dict[str, str]]]:
    """Write the probsegs, the dseg and the result table of an image that passed QC.

    Returns:
        Every file written, in order, and the table's row of each hemisphere.
    """
    output_dir = Path(output_dir)
    image, qc = preprocessed.image, preprocessed.qc
    _start_set(output_dir, image)
    written: list[Path] = []
    inverse = preprocessed.inverse_transform
    common = {"Model": context.model, "SoftwareVersion": __version__,
              "FlipTTA": context.flip_tta, "SpatialReference": image.bids_uri}
    for hemisphere in HEMISPHERES:
        path = probseg_path(output_dir, image, hemisphere)
        _save_nifti(native.probabilities[hemisphere].get_fdata(dtype=np.float32),
                    native.affine, path, np.float32)
        write_sidecar(path, [image.bids_uri, _uri(output_dir, preprocessed.crops[hemisphere]),
                             _uri(output_dir, inverse)],
                      Description=f"Probability of the {_HEMISPHERE_NAMES[hemisphere]} "
                                  "paracingulate sulcus, predicted on the template-space crop "
                                  "and mapped to the T1w grid (linear interpolation).",
                      Hemisphere=hemisphere, **common)
        written += [path, sidecar_path(path)]
    dseg = dseg_path(output_dir, image)
    _save_nifti(native.dseg, native.affine, dseg, np.uint8)
    write_sidecar(dseg, [image.bids_uri, *(_uri(output_dir, probseg_path(output_dir, image, h))
                                           for h in HEMISPHERES)],
                  Description="Paracingulate sulcus: 0 background, "
                              f"{context.labels.dseg_left} left, {context.labels.dseg_right} "
                              "right (see desc-pcs_dseg.tsv).",
                  ProbabilityThreshold=context.threshold,
                  OverlapRule="where both hemispheres exceed the threshold, the larger "
                              "probability wins", **common)
    written += [dseg, sidecar_path(dseg)]
    rows = {hemisphere: result_row(hemisphere, predictions[hemisphere],
                                   native.morphometry[hemisphere], qc, context)
            for hemisphere in HEMISPHERES}
    sources = [image.bids_uri, _uri(output_dir, dseg),
               *(_uri(output_dir, probseg_path(output_dir, image, h)) for h in HEMISPHERES)]
    written += _write_table(output_dir, image, list(rows.values()), sources, qc, context,
                            maps=written)
    return written, rows


def write_qc_failed(output_dir: Path, preprocessed: PreprocessedImage,
                    context: WriteContext) -> list[Path]:
    """Record an image that failed registration QC: n/a values, ``qc_passed`` false."""
    output_dir = Path(output_dir)
    image, qc = preprocessed.image, preprocessed.qc
    _start_set(output_dir, image)
    for stale in _maps(output_dir, image):
        if stale.exists():
            LOGGER.info("%s: removing %s from an earlier run (registration QC failed now)",
                        image.prefix, stale.name)
            stale.unlink()
    columns = pcs_table_columns(context.labels.classes)
    rows = [{**dict.fromkeys(columns, NA), "hemisphere": hemisphere,
             **_qc_columns(qc, hemisphere)} for hemisphere in HEMISPHERES]
    qc_file = Path(preprocessed.qc_file)
    sources = [image.bids_uri] + ([_uri(output_dir, qc_file)] if qc_file.is_file()
                                  and qc_file.is_relative_to(output_dir) else [])
    return _write_table(output_dir, image, rows, sources, qc, context, maps=[])


def _start_set(output_dir: Path, image: T1wImage) -> None:
    """Remove the set's record first: until it is written again, the set is not done."""
    record = pcs_metadata_path(output_dir, image)
    if not record.is_file() and set_exists(record, pcs_set_members(output_dir, image)):
        LOGGER.warning("%s: its PCS results are incomplete (%s, written last, is missing); "
                       "writing them again.", image.prefix, record.name)
    record.unlink(missing_ok=True)


def _write_table(output_dir: Path, image: T1wImage, rows: list[dict[str, str]],
                 sources: list[str], qc: Mapping[str, Any], context: WriteContext,
                 maps: list[Path]) -> list[Path]:
    columns = list(pcs_table_columns(context.labels.classes))
    lines = ["\t".join(columns)] + ["\t".join(row[c] for c in columns) for row in rows]
    table = write_text(pcs_table_path(output_dir, image), "\n".join(lines) + "\n")
    metadata = {
        "Sources": sources,
        "Model": context.model,
        "Thresholds": {"present_min_mm": context.labels.present_min_mm,
                       "prominent_min_mm": context.labels.prominent_min_mm},
        "Classes": list(context.labels.classes),
        "ClassRule": context.class_rule,
        "ClassRuleSetting": context.class_rule_setting,
        "SegmentationTrained": context.segmentation_trained,
        "ProbabilityThreshold": context.threshold,
        "FlipTTA": context.flip_tta,
        "SoftwareVersion": __version__,
        "RegistrationQC": {"Correlation": qc.get("Correlation"),
                           "Threshold": qc.get("Threshold"), "Passed": bool(qc.get("Passed"))},
        "Columns": column_descriptions(context.labels.classes),
    }
    if context.flip_tta:
        metadata["FlipTTAMethod"] = FLIP_DESCRIPTION
    record = pcs_metadata_path(output_dir, image)
    metadata[FILES_KEY] = describe_files([*maps, table], record.parent)
    meta = write_json(record, metadata)
    return [table, meta]


def result_row(hemisphere: str, prediction: HemispherePrediction, morph: PcsMorphometry,
               qc: Mapping[str, Any], context: WriteContext) -> dict[str, str]:
    """One hemisphere's row of the result table (every column, as text)."""
    labels = context.labels
    trained = context.segmentation_trained
    length = morph.length_mm if trained else None
    call = hemisphere_call(context.class_rule, prediction.class_probabilities, length, labels)
    agreement = NA if call.agreement is None else ("true" if call.agreement else "false")
    return {
        "hemisphere": hemisphere,
        "pcs_class": call.pcs_class,
        "pcs_class_network": call.network_class,
        "pcs_class_length": call.length_class or NA,
        "class_agreement": agreement,
        **{f"p_{name}": _number(p, 4) for name, p in
           zip(labels.classes, prediction.class_probabilities, strict=True)},
        "class_entropy": _number(class_entropy(prediction.class_probabilities), 4),
        "mask_uncertainty": _number(mask_uncertainty(prediction.pcs_probability), 4)
        if trained else NA,
        "flip_agreement": _number(prediction.flip_agreement, 4) if trained else NA,
        "pcs_length_mm": _number(length, 2),
        "pcs_volume_mm3": _number(morph.volume_mm3 if trained else None, 1),
        **_qc_columns(qc, hemisphere),
    }


def column_descriptions(classes: tuple[str, ...]) -> dict[str, str]:
    """What each column of the result table means (the JSON sidecar's ``Columns``)."""
    names = ", ".join(classes)
    return {
        "hemisphere": "L (left) or R (right)",
        "pcs_class": f"reported class ({names}) under ClassRule: 'length' takes the class of "
                     "pcs_length_mm with the Thresholds, 'network' the classification head's "
                     "(n/a: not run)",
        "pcs_class_network": "most probable class of the network's classification head",
        "pcs_class_length": "class of pcs_length_mm with the Thresholds (n/a: no trained mask)",
        "class_agreement": "true when pcs_class_network equals pcs_class_length; false rows "
                           "are flagged for review (n/a: no trained mask)",
        **{f"p_{c}": f"probability of class {c} from the network's classification head"
           for c in classes},
        "class_entropy": "entropy of the class probabilities over log(number of classes): "
                         "0 certain, 1 uniform",
        "mask_uncertainty": "share of the voxels with P(PCS) > 0.25 whose P(PCS) is at most "
                            "0.75, on the crop grid: 0 crisp (or empty), 1 all unsure",
        "flip_agreement": "Dice of the masks predicted on the crop and on its left-right "
                          "mirror image (flip test-time augmentation); n/a without FlipTTA",
        "pcs_length_mm": "length of the predicted mask along the sulcus in sagittal view (mm)",
        "pcs_volume_mm3": "volume of the predicted mask on the T1w grid (mm3)",
        "qc_correlation": "correlation of the hemisphere's crop with the template "
                          "(registration QC)",
        "qc_passed": "true when registration QC passed; false rows carry no PCS values",
    }


def _qc_columns(qc: Mapping[str, Any], hemisphere: str) -> dict[str, str]:
    correlation = (qc.get("Correlation") or {}).get(hemisphere)
    if correlation is None:
        correlation = qc.get("MinCorrelation")
    return {"qc_correlation": _number(correlation, 4),
            "qc_passed": "true" if qc.get("Passed") else "false"}


def _number(value: Any, digits: int) -> str:
    if value is None:
        return NA
    number = float(value)
    return f"{number:.{digits}f}" if np.isfinite(number) else NA


def _maps(output_dir: Path, image: T1wImage) -> list[Path]:
    return pcs_set_members(output_dir, image)[:-1]


def _uri(output_dir: Path, path: Path) -> str:
    return f"bids::{Path(path).relative_to(output_dir).as_posix()}"


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path, dtype: type) -> None:
    image = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    image.set_data_dtype(dtype)
    image.header.set_xyzt_units("mm", "sec")
    with atomic_path(path) as tmp:
        nib.save(image, str(tmp))
