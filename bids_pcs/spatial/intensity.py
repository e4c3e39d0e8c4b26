"""Intensity steps: inhomogeneity (bias field) correction and crop normalisation.

N4 is estimated on a coarse copy of the image: the bias field is smooth (its
B-spline mesh spans tens of millimetres), and N4's cost grows with the number
of voxels, so fitting it at ``N4_SPACING_MM`` and resampling the field onto the
native grid gives the same correction as a full-resolution fit in a fraction of
the time.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_pcs.config import IntensitySettings
from bids_pcs.spatial.antsio import downsample, import_ants, to_ants, to_nibabel

N4_SPACING_MM = 6.0
N4_ITERATIONS = (20, 20, 10)
N4_TOLERANCE = 1e-5
# B-spline mesh at the first fitting level (doubled at each of the levels)
N4_INITIAL_MESH = (2, 2, 2)


def foreground_mask(data: np.ndarray) -> np.ndarray:
    """Head (or brain) voxels: above an Otsu threshold, largest component, holes filled."""
    from skimage.filters import threshold_otsu

    finite = data[np.isfinite(data)]
    positive = finite[finite > finite.min()]
    if positive.size == 0:
        return np.zeros(data.shape, dtype=bool)
    mask = data > threshold_otsu(positive)
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    # close the gaps between scalp and brain so the mask is one solid head
    mask = ndimage.binary_closing(mask, iterations=2)
    return ndimage.binary_fill_holes(mask)


def n4_correct(image: nib.Nifti1Image) -> tuple[nib.Nifti1Image, nib.Nifti1Image]:
    """N4 bias-field correction of ``image``; returns (corrected, bias field), both native grid."""
    ants = import_ants()
    native = to_ants(image)
    data = np.asarray(image.dataobj, dtype=np.float32)
    # N4 works on log intensities: shift to strictly positive values
    offset = float(max(0.0, -data.min())) + 1e-3 * float(np.ptp(data) or 1.0)
    shifted = native + offset
    # pad so the coarse grid (and hence the fitted field) covers every native voxel
    coarse = ants.pad_image(downsample(shifted, N4_SPACING_MM), pad_width=[(2, 2)] * 3)
    mask = ants.from_numpy(foreground_mask(coarse.numpy()).astype(np.float32),
                           origin=coarse.origin, spacing=coarse.spacing,
                           direction=coarse.direction)
    bias = ants.n4_bias_field_correction(
        coarse, mask=mask, shrink_factor=1, spline_param=list(N4_INITIAL_MESH),
        convergence={"iters": list(N4_ITERATIONS), "tol": N4_TOLERANCE},
        return_bias_field=True,
    )
    # the field is defined everywhere (B-spline); outside the mask it extrapolates smoothly
    field = ants.resample_image_to_target(bias, native, interp_type="linear")
    field_data = np.maximum(field.numpy(), 1e-3)
    corrected = (native.numpy() + offset) / field_data - offset
    field_img = nib.Nifti1Image(field_data.astype(np.float32), to_nibabel(field).affine)
    out = nib.Nifti1Image(corrected.astype(np.float32), image.affine)
    out.header.set_xyzt_units("mm", "sec")
    return out, field_img


def normalise_intensity(data: np.ndarray, settings: IntensitySettings,
                        mask: np.ndarray | None = None) -> np.ndarray:
    """Crop intensities as the network expects them (float32).

    ``percentile``: robust min-max, the ``lower_percentile`` -> 0 and
    ``upper_percentile`` -> 1, clipped to [0, 1].  ``zscore``: zero mean and
    unit variance.  Statistics come from the voxels in ``mask`` (all non-zero
    voxels by default), so the empty margin of a crop does not skew them.
    """
    data = np.asarray(data, dtype=np.float32)
    if mask is None:
        mask = data != 0
    values = data[mask] if mask.any() else data.ravel()
    if settings.method == "percentile":
        low, high = np.percentile(values, [settings.lower_percentile, settings.upper_percentile])
        scale = float(high - low) or 1.0
        return np.clip((data - low) / scale, 0.0, 1.0).astype(np.float32)
    if settings.method == "zscore":
        scale = float(values.std()) or 1.0
        return ((data - float(values.mean())) / scale).astype(np.float32)
    raise ValueError(f"intensity method must be 'percentile' or 'zscore', not {settings.method!r}")
