"""Registration quality control: does each crop look like the template's crop?

The figure is the Pearson correlation between a crop and the template resampled
onto the same grid, over the template's brain voxels in the box.  A correct
affine alignment gives about 0.75-0.85 on real scans, with or without skull
(0.9 with the deformable stage); a pose a few millimetres or degrees off
already falls to 0.2-0.35, because the folds of the medial frontal cortex no
longer overlap their template counterparts.  The threshold
(``registration.qc_min_correlation``, 0.5 by default) sits between the two,
and both hemispheres must pass.
"""

from __future__ import annotations

import functools
import math

import nibabel as nib
import numpy as np

from bids_pcs.config import HEMISPHERES, TEMPLATE_NAME, CropSettings
from bids_pcs.spatial.template import load_template

QC_METRIC = "pearson_correlation_with_template_in_crop_brain"
# the registration path each image took (bids_pcs.spatial.skullstrip)
REGISTRATION_PATHS = {True: "brain-as-given", False: "rough-brain-mask"}


@functools.lru_cache(maxsize=8)
def template_crops(crop: CropSettings) -> dict[str, np.ndarray]:
    """The template's T1 on each hemisphere's crop grid (mirrored like the crops)."""
    from bids_pcs.spatial.crops import resample_to_crop

    template = load_template()
    return {h: np.asarray(resample_to_crop(template.t1, [], crop, h).dataobj, dtype=np.float32)
            for h in HEMISPHERES}


@functools.lru_cache(maxsize=8)
def template_brain_in_crops(crop: CropSettings) -> dict[str, np.ndarray]:
    """Template brain voxels on each hemisphere's crop grid."""
    from bids_pcs.spatial.crops import resample_to_crop

    mask = load_template().brain_mask
    return {h: np.asarray(resample_to_crop(mask, [], crop, h, kind="label").dataobj) > 0
            for h in HEMISPHERES}


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b`` over ``mask`` (0 when either is constant)."""
    x = np.asarray(a, dtype=np.float64)[mask]
    y = np.asarray(b, dtype=np.float64)[mask]
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def registration_qc(crops: dict[str, nib.Nifti1Image], crop: CropSettings,
                    min_correlation: float) -> dict:
    """QC record of one image from its crops (hemisphere -> crop image)."""
    references = template_crops(crop)
    brains = template_brain_in_crops(crop)
    per_hemisphere = {
        h: round(correlation(np.asarray(crops[h].dataobj), references[h], brains[h]), 4)
        for h in HEMISPHERES
    }
    worst = min(per_hemisphere.values())
    return {
        "Template": TEMPLATE_NAME,
        "Metric": QC_METRIC,
        "Correlation": per_hemisphere,
        "MinCorrelation": worst,
        "Threshold": float(min_correlation),
        "Passed": bool(worst >= min_correlation),
    }


def skull_strip_record(skull_stripped: bool, decided_by: str,
                       tissue_outside_brain: float) -> dict:
    """The QC record's entries on the registration path (:mod:`bids_pcs.spatial.skullstrip`).

    ``RegistrationPath`` is ``brain-as-given`` for a skull-stripped image
    (registered as it is) and ``rough-brain-mask`` for a whole-head one.
    """
    share = float(tissue_outside_brain)
    return {
        "SkullStripped": bool(skull_stripped),
        "SkullStrippedDecidedBy": decided_by,
        "TissueOutsideBrain": round(share, 4) if math.isfinite(share) else None,
        "RegistrationPath": REGISTRATION_PATHS[bool(skull_stripped)],
    }
