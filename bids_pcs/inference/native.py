"""From crop-grid predictions to the native T1w grid: probability maps, dseg, measures.

Each hemisphere's P(PCS) is mapped back through the inverse registration
(:func:`crop_to_native`, linear interpolation, 0 outside
the crop box). The dseg then labels a native voxel as left PCS
(``labels.dseg_left``) where P(left) exceeds the threshold, right PCS where
P(right) does; where both do (the two boxes overlap by a few millimetres
across the midline) the larger probability wins, so the labels never overlap.
Thresholding *after* the mapping keeps the mask as smooth as the native grid
allows instead of inheriting the crop's (possibly 2 mm) staircase.

Length and volume come from :func:`bids_pcs.morphometry.measure_dseg`
on that native mask, in the T1w's own millimetres.

Usage::

    native = to_native(predictions, preprocessed, threshold=0.5, labels=settings.labels)
    native.dseg                 # uint8 array on the T1w grid
    native.morphometry["L"].length_mm
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from bids_pcs.config import HEMISPHERES, LabelSettings
from bids_pcs.inference.predict import HemispherePrediction
from bids_pcs.morphometry import PcsMorphometry, measure_dseg
from bids_pcs.preprocess import PreprocessedImage


@dataclass(frozen=True)
class NativeMaps:
    """Predictions of one image on its native T1w grid.

    Args:
        probabilities: hemisphere -> P(PCS) image (float32 in [0, 1]).
        dseg: uint8 label array (0, ``dseg_left``, ``dseg_right``).
        affine: the T1w's affine (shared by every map).
        morphometry: hemisphere -> length and volume of its mask.
    """

    probabilities: dict[str, nib.Nifti1Image]
    dseg: np.ndarray
    affine: np.ndarray
    morphometry: dict[str, PcsMorphometry]


def crop_to_native(array: np.ndarray, hemisphere: str, preprocessed: PreprocessedImage,
                   kind: str = "label", native: nib.Nifti1Image | None = None,
                   ) -> nib.Nifti1Image:
    """Map a crop-space ``array`` of ``hemisphere`` back onto the image's native T1w grid.

    Args:
        array: a map laid out exactly like the stored crop of ``hemisphere``
            (for the right hemisphere: mirrored, as the network saw it).
        hemisphere: ``"L"`` or ``"R"``.
        preprocessed: the image's preprocessing outputs.
        kind: ``"label"`` (nearest neighbour, uint8) or ``"probability"``
            (linear, float32 clipped to [0, 1]).
        native: the T1w image, when the caller has it open already (only its
            header is read).
    """
    from bids_pcs.spatial.crops import resample_to_native

    if kind not in ("label", "probability"):
        raise ValueError(f"kind must be 'label' or 'probability', not {kind!r}")
    crop_file = nib.load(str(preprocessed.crops[hemisphere]))
    if tuple(array.shape) != tuple(crop_file.shape):
        raise ValueError(f"array shape {tuple(array.shape)} differs from the crop's "
                         f"{tuple(crop_file.shape)}")
    crop_img = nib.Nifti1Image(np.asarray(array, dtype=np.float32), crop_file.affine)
    native = native if native is not None else nib.load(str(preprocessed.image.path))
    return resample_to_native(crop_img, native, [preprocessed.inverse_transform], kind=kind)


def dseg_from_probabilities(probabilities: Mapping[str, np.ndarray], threshold: float,
                            labels: LabelSettings | None = None) -> np.ndarray:
    """Label array from per-hemisphere P(PCS) on one grid (see module doc for overlaps).

    Args:
        probabilities: ``{"L": array, "R": array}`` of the same shape.
        threshold: a voxel is PCS when its probability is strictly above it.
        labels: label values (default 1 left, 2 right).
    """
    labels = labels or LabelSettings()
    left = np.asarray(probabilities["L"], dtype=np.float32)
    right = np.asarray(probabilities["R"], dtype=np.float32)
    if left.shape != right.shape:
        raise ValueError(f"left and right maps differ in shape: {left.shape} vs {right.shape}")
    dseg = np.zeros(left.shape, dtype=np.uint8)
    is_left = (left > threshold) & (left >= right)
    is_right = (right > threshold) & ~is_left
    dseg[is_left] = labels.dseg_left
    dseg[is_right] = labels.dseg_right
    return dseg


def to_native(predictions: Mapping[str, HemispherePrediction], preprocessed: PreprocessedImage,
              *, threshold: float, labels: LabelSettings | None = None) -> NativeMaps:
    """Map both hemispheres' P(PCS) to the native grid, threshold, and measure the masks."""
    labels = labels or LabelSettings()
    native = nib.load(str(preprocessed.image.path))  # the header, once per image
    images = {h: crop_to_native(predictions[h].pcs_probability, h, preprocessed,
                                kind="probability", native=native) for h in HEMISPHERES}
    affine = images["L"].affine
    dseg = dseg_from_probabilities({h: np.asarray(images[h].dataobj) for h in HEMISPHERES},
                                   threshold, labels)
    return NativeMaps(probabilities=images, dseg=dseg, affine=affine,
                      morphometry=measure_dseg(dseg, affine, labels))
