"""Loading T1w images with one clear error for every way a file can be unusable."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_pcs.errors import InputDataError

# a T1w larger than this many voxels is refused before its data is read, so a
# corrupt header cannot make a run allocate an absurd amount of memory
MAX_VOXELS = 512 * 512 * 512


def load_t1w(path: str | Path, *, check_data: bool = True) -> nib.Nifti1Image:
    """Open ``path`` as a 3D T1w NIfTI image, or raise :class:`InputDataError`.

    With ``check_data`` the voxel data is read and must be finite and not
    constant; 4D images with a single volume are squeezed to 3D.
    """
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"Image {path} does not exist.")
    if path.stat().st_size == 0:
        raise InputDataError(f"Image {path} is an empty file; replace it with a valid NIfTI image.")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise InputDataError(
            f"Image {path} is not a readable NIfTI file ({_short(exc)}); replace or remove it."
        ) from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputDataError(f"Image {path} is not a NIfTI image; convert it to NIfTI.")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = nib.Nifti1Image(np.asanyarray(img.dataobj)[..., 0], img.affine, img.header)
        shape = img.shape
    if len(shape) != 3:
        raise InputDataError(
            f"Image {path} has {len(shape)} dimensions {tuple(shape)}; a T1w image must be 3D."
        )
    if min(shape) < 8:
        raise InputDataError(f"Image {path} is too small ({tuple(shape)} voxels) to hold a brain.")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise InputDataError(
            f"Image {path} has {int(np.prod(shape))} voxels, more than the {MAX_VOXELS} "
            "this app accepts; resample it to about 1 mm first."
        )
    zooms = img.header.get_zooms()[:3]
    if not all(np.isfinite(zooms)) or min(zooms) <= 0.05 or max(zooms) > 10:
        raise InputDataError(
            f"Image {path} has implausible voxel sizes {tuple(float(z) for z in zooms)} mm."
        )
    if not np.all(np.isfinite(img.affine)) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-6:
        raise InputDataError(f"Image {path} has an invalid (singular) affine in its header.")
    if check_data:
        try:
            data = np.asanyarray(img.dataobj, dtype=np.float32)
        except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
            raise InputDataError(
                f"Image {path} is truncated or corrupt ({_short(exc)}); replace it."
            ) from exc
        if not np.all(np.isfinite(data)):
            raise InputDataError(f"Image {path} contains NaN or infinite voxel values.")
        if float(data.max()) == float(data.min()):
            raise InputDataError(f"Image {path} is constant (all voxels {float(data.min())}).")
        img = nib.Nifti1Image(data, img.affine, img.header)
        img.header.set_data_dtype(np.float32)
    return img


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]
