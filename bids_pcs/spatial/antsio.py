"""Moving images between nibabel (RAS, the app's currency) and antspyx (ITK, LPS).

antspyx is imported lazily: it is heavy, and only processes that resample or
register need it.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import nibabel as nib
import numpy as np

if TYPE_CHECKING:
    import ants


# ITK runs one thread per process.  ITK's Mattes mutual information adds the
# per-thread parts of its joint histogram derivatives in whatever order the
# threads finish, so with two threads or more the same registration gives
# (slightly) different transforms from run to run, enough to change the winning
# start pose; with one it repeats byte for byte.  Preprocessing runs images in
# parallel instead (``--nprocs``), which keeps the cores busy as well.
ITK_THREADS = 1


def import_ants():  # noqa: ANN201 - the module
    """Import antspyx with ITK limited to :data:`ITK_THREADS` threads.

    ITK sizes its thread pool from the variable when it first starts, so it is
    set before the first import of antspyx in each process.
    """
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(ITK_THREADS)
    import ants

    return ants


def to_ants(img: nib.Nifti1Image, dtype: type = np.float32) -> ants.ANTsImage:
    """An antspyx image with the same voxels and physical space as ``img``."""
    ants = import_ants()
    data = np.asarray(img.dataobj, dtype=dtype)
    clean = nib.Nifti1Image(data, img.affine)
    # antspyx warns (on stdout) about unknown units; NIfTI mm is the convention
    clean.header.set_xyzt_units("mm", "sec")
    pixeltype = "float" if np.dtype(dtype) == np.float32 else "unsigned char"
    return ants.from_nibabel_nifti(clean, pixeltype=pixeltype)


def to_nibabel(image: ants.ANTsImage, dtype: type = np.float32) -> nib.Nifti1Image:
    """A nibabel image (RAS affine) with the voxels of the antspyx ``image``."""
    ants = import_ants()
    out = ants.to_nibabel_nifti(image)
    data = np.asarray(out.dataobj).astype(dtype, copy=False)
    img = nib.Nifti1Image(data, out.affine)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_qform(out.affine, code=1)
    img.header.set_sform(out.affine, code=1)
    return img


def downsample(image: ants.ANTsImage, spacing_mm: float) -> ants.ANTsImage:
    """Anti-aliased copy of ``image`` on an isotropic ``spacing_mm`` grid (same axes).

    Blocks of whole voxels are averaged first (a box filter, cheap even on a
    1 mm head), then the small result is resampled linearly to the exact
    spacing.  Smoothing the full-resolution image with a Gaussian instead costs
    more than the registration that follows.
    """
    ants = import_ants()
    spacing = np.asarray(image.spacing, dtype=float)
    factors = np.maximum(1, np.floor(spacing_mm / spacing + 1e-6)).astype(int)
    data = image.numpy()
    if np.any(factors > 1):
        shape = np.asarray(data.shape) // factors
        trimmed = data[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
        blocks = trimmed.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
        data = blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
        direction = np.asarray(image.direction).reshape(3, 3)
        # the first block's centre sits (factor - 1) / 2 voxels from the first voxel
        origin = np.asarray(image.origin) + direction @ ((factors - 1) / 2 * spacing)
        image = ants.from_numpy(data, origin=origin.tolist(),
                                spacing=(spacing * factors).tolist(), direction=direction)
    if np.allclose(image.spacing, spacing_mm):
        return image
    return ants.resample_image(image, (spacing_mm,) * 3, use_voxels=False, interp_type=0)
