"""The crop grid of each hemisphere and resampling between it and a native T1w.

A crop is a box fixed in template millimetres (``settings.crop``).  Its voxel
``i`` along x is centred at ``min_mm + (i + 0.5) * voxel_mm``, so the box is
covered exactly.  With ``mirror_right`` the right crop is stored left-right
flipped: its affine has a negated x axis, so the array is what the network sees
(every hemisphere looks like a left one) while the affine still maps each voxel
to true template millimetres.  Resampling through that affine produces the
mirrored array directly; no array flip ever happens in code.

Forward (native -> crop) and inverse (crop -> native) resampling each go
straight through the composed registration transform: one interpolation.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_pcs.config import HEMISPHERES, CropSettings
from bids_pcs.spatial.antsio import import_ants, to_ants, to_nibabel

# interpolators by the kind of map being resampled
INTERPOLATORS = {"intensity": "linear", "probability": "linear", "label": "nearestNeighbor"}


def crop_affine(crop: CropSettings, hemisphere: str) -> np.ndarray:
    """RAS affine (voxel -> template mm) of the stored crop of ``hemisphere``."""
    _check_hemisphere(hemisphere)
    voxel = float(crop.voxel_mm)
    minimum = np.asarray(crop.min_mm(hemisphere), dtype=float)
    size = np.asarray(crop.size_mm, dtype=float)
    affine = np.diag([voxel, voxel, voxel, 1.0])
    affine[:3, 3] = minimum + voxel / 2
    if hemisphere == "R" and crop.mirror_right:
        # x runs from the box's lateral edge towards the midline, as on the left
        affine[0, 0] = -voxel
        affine[0, 3] = minimum[0] + size[0] - voxel / 2
    return affine


def crop_reference(crop: CropSettings, hemisphere: str) -> nib.Nifti1Image:
    """An empty float32 image on the crop grid of ``hemisphere``."""
    img = nib.Nifti1Image(np.zeros(crop.shape_vox, dtype=np.float32),
                          crop_affine(crop, hemisphere))
    img.header.set_xyzt_units("mm", "sec")
    return img


def crops_bounding_box_mm(crop: CropSettings) -> tuple[np.ndarray, np.ndarray]:
    """(min, max) template mm of the union of both hemispheres' boxes."""
    corners = np.array([crop.min_mm(h) for h in HEMISPHERES], dtype=float)
    return corners.min(axis=0), corners.max(axis=0) + np.asarray(crop.size_mm, dtype=float)


def box_mask(reference: nib.Nifti1Image, crop: CropSettings, margin_mm: float = 0.0) -> np.ndarray:
    """Boolean mask of ``reference`` voxels whose centres fall in either box (+ margin).

    Boxes are half-open, [min, max), so a 1 mm grid on integer millimetres counts
    exactly ``size_mm`` voxels along each side.
    """
    ijk = np.indices(reference.shape[:3]).reshape(3, -1).T
    xyz = nib.affines.apply_affine(reference.affine, ijk)
    inside = np.zeros(len(xyz), dtype=bool)
    for hemisphere in HEMISPHERES:
        low = np.asarray(crop.min_mm(hemisphere)) - margin_mm
        high = low + np.asarray(crop.size_mm) + 2 * margin_mm
        inside |= np.all((xyz >= low) & (xyz < high), axis=1)
    return inside.reshape(reference.shape[:3])


def resample_to_crop(
    image: nib.Nifti1Image,
    transforms: Sequence[str | Path],
    crop: CropSettings,
    hemisphere: str,
    kind: str = "intensity",
) -> nib.Nifti1Image:
    """Resample a native-space ``image`` onto the crop grid of ``hemisphere``.

    Args:
        image: the native image (any orientation).
        transforms: ANTs transforms mapping template points to native points
            (the forward ``from-T1w_to-MNI152NLin2009aSym`` transform, as ANTs
            applies it to images).
        crop: the crop geometry.
        hemisphere: ``"L"`` or ``"R"``.
        kind: ``"intensity"`` or ``"probability"`` (linear) or ``"label"`` (nearest).
    """
    ants = import_ants()
    reference = to_ants(crop_reference(crop, hemisphere))
    moving = to_ants(image)
    out = ants.apply_transforms(reference, moving, [str(t) for t in transforms],
                                interpolator=_interpolator(kind), defaultvalue=0)
    return to_nibabel(out)


def resample_to_native(
    crop_image: nib.Nifti1Image,
    native_reference: nib.Nifti1Image,
    inverse_transforms: Sequence[str | Path],
    kind: str = "label",
) -> nib.Nifti1Image:
    """Map a crop-space map back onto the native T1w grid.

    Labels use nearest neighbour (values stay integers), probabilities linear
    interpolation.  Voxels of the native grid outside the crop get 0.
    """
    ants = import_ants()
    # only the grid of the reference matters: an empty uint8 array of its shape
    # (the native T1w's values are never read)
    grid = nib.Nifti1Image(np.zeros(native_reference.shape[:3], dtype=np.uint8),
                           native_reference.affine)
    reference = to_ants(grid)
    moving = to_ants(crop_image)
    # single precision: the maps are float32, double would only double the cost
    out = ants.apply_transforms(reference, moving, [str(t) for t in inverse_transforms],
                                interpolator=_interpolator(kind), defaultvalue=0,
                                singleprecision=True)
    data = np.asarray(to_nibabel(out).dataobj, dtype=np.float32)
    if kind == "label":
        data = np.rint(data).astype(np.uint8)
    elif kind == "probability":
        data = np.clip(data, 0.0, 1.0)
    # the native header's affine, bit for bit, so the map overlays the T1w exactly
    result = nib.Nifti1Image(data, native_reference.affine)
    result.header.set_xyzt_units("mm", "sec")
    return result


def _interpolator(kind: str) -> str:
    try:
        return INTERPOLATORS[kind]
    except KeyError:
        raise ValueError(f"kind must be one of {sorted(INTERPOLATORS)}, not {kind!r}") from None


def _check_hemisphere(hemisphere: str) -> None:
    if hemisphere not in HEMISPHERES:
        raise ValueError(f"hemisphere must be 'L' or 'R', not {hemisphere!r}")
