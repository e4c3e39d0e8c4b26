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


def set_itk_threads(n_threads: int) -> None:
    """Let ITK (under antspyx) use ``n_threads`` threads in this process.

    ITK reads the variable when its global thread pool is first sized, so it is
    set before antspyx is imported; once imported, the pool is resized too.
    """
    n_threads = max(1, int(n_threads))
    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = str(n_threads)


def import_ants(n_threads: int | None = None):  # noqa: ANN201 - the module
    """Import antspyx after setting the ITK thread count (when given)."""
    if n_threads is not None:
        set_itk_threads(n_threads)
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
