"""Loading T1w images with one clear error for every way a file can be unusable."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.affines import voxel_sizes

from bids_pcs.errors import ImageError

# a T1w larger than this many voxels is refused before its data is read, so a
# corrupt header cannot make a run allocate an absurd amount of memory (at
# most 512 MiB of float32 voxels per image in memory)
MAX_VOXELS = 512 * 512 * 512
MIN_SIDE = 8  # voxels along every axis
# plausible MRI voxel sizes; anything else is a broken header (or not MRI)
MIN_VOXEL_MM = 0.05
MAX_VOXEL_MM = 10.0
# qform and sform farther apart than this (mm) earn a warning
QFORM_SFORM_TOLERANCE_MM = 1.0
# unfit to register though readable (issue 19): a field of view smaller than this
# along any axis holds no head (a slab, a localizer, a header with wrong voxel sizes)
MIN_FIELD_OF_VIEW_MM = 40.0
# ANTs refuses voxel axes more than 0.5 degrees from perpendicular ("desheared
# directions deviate"); such an image must be resliced first
MAX_SHEAR_DEG = 0.5
# at most this share of the voxels may hold the commonest value (a constant volume
# with a speck of signal; a real head in its field of view holds far more)
MAX_CONSTANT_SHARE = 0.995
# a voxel farther from the 0.1-99.9th percentile range than this many times its width
# squeezes every other voxel into one bin of the registration's intensity histogram
MAX_OUTLIER_SPREADS = 100.0


def load_t1w(path: str | Path, *, check_data: bool = True) -> nib.Nifti1Image:
    """Open ``path`` as a 3D T1w NIfTI image, or raise :class:`ImageError` naming the file.

    The header is checked before any voxel is read (dimensions, size, voxel
    sizes, affine), so a corrupt or hostile header costs no memory. With
    ``check_data`` the voxel data is read and must be complete, finite and not
    constant; 4D images with a single volume are squeezed to 3D.

    The affine is nibabel's: the sform when its code is set, else the qform
    (see :func:`qform_sform_mismatch_mm` for images whose two disagree).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "does not exist", "check the dataset")
    if path.stat().st_size == 0:
        raise ImageError(path, "is an empty file", "replace it with a valid NIfTI image")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise ImageError(path, f"is not a readable NIfTI file ({_short(exc, path)})",
                         "replace or remove it") from exc
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageError(path, f"is not a NIfTI image ({type(img).__name__})",
                         "convert it to NIfTI")
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ImageError(path, f"has {len(shape)} dimensions {shape}",
                         "a T1w image must be 3D (one volume)")
    if min(shape) < MIN_SIDE:
        raise ImageError(path, f"is too small ({shape} voxels) to hold a brain",
                         "check that it is a whole-head T1w image")
    if int(np.prod(shape)) > MAX_VOXELS:
        raise ImageError(path, f"has {int(np.prod(shape))} voxels, more than the {MAX_VOXELS} "
                         "this app accepts", "resample it to about 1 mm first")
    affine = img.affine
    # the affine, not pixdim, is what every later step uses: check the voxel sizes it implies
    voxel_mm = voxel_sizes(affine)
    # axes (nearly) parallel or of zero length: |det| is tiny next to the product of sizes
    if (not np.all(np.isfinite(affine)) or not np.all(voxel_mm > 0)
            or abs(np.linalg.det(affine[:3, :3])) < 1e-3 * float(np.prod(voxel_mm))):
        raise ImageError(path, "has an invalid (singular or non-finite) affine in its header",
                         "fix its sform/qform")
    voxel_mm = tuple(float(v) for v in voxel_mm)
    if min(voxel_mm) < MIN_VOXEL_MM or max(voxel_mm) > MAX_VOXEL_MM:
        raise ImageError(path, f"has implausible voxel sizes "
                         f"{tuple(round(v, 4) for v in voxel_mm)} mm",
                         f"T1w voxels must be {MIN_VOXEL_MM} to {MAX_VOXEL_MM} mm; "
                         "fix the header or resample the image")
    _check_geometry(path, shape, affine, voxel_mm)
    if not check_data:
        if len(img.shape) == 4:
            img = img.slicer[..., 0]
        return img
    try:
        data = np.asanyarray(img.dataobj, dtype=np.float32).reshape(shape)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise ImageError(path, f"is truncated or corrupt ({_short(exc, path)})",
                         "replace it with a complete copy") from exc
    if not np.all(np.isfinite(data)):
        raise ImageError(path, "contains NaN or infinite voxel values",
                         "fix or replace the image")
    if float(data.max()) == float(data.min()):
        raise ImageError(path, f"is constant (all voxels {float(data.min()):g})",
                         "replace it with a valid T1w image")
    _check_intensities(path, data)
    out = nib.Nifti1Image(data, affine, img.header)
    out.header.set_data_dtype(np.float32)
    return out


def _check_geometry(path: Path, shape: tuple[int, ...], affine: np.ndarray,
                    voxel_mm: tuple[float, ...]) -> None:
    """Refuse a grid no registration can use: a tiny field of view, sheared axes."""
    extent = tuple(n * v for n, v in zip(shape, voxel_mm, strict=True))
    if min(extent) < MIN_FIELD_OF_VIEW_MM:
        raise ImageError(path, f"covers only {' x '.join(f'{e:.0f}' for e in extent)} mm "
                         f"({' x '.join(map(str, shape))} voxels of "
                         f"{' x '.join(f'{v:g}' for v in voxel_mm)} mm)",
                         f"a T1w head image spans at least {MIN_FIELD_OF_VIEW_MM:g} mm along "
                         "every axis: check the voxel sizes in its header, or use the "
                         "whole-head scan")
    axes = affine[:3, :3] / np.asarray(voxel_mm)
    cosines = np.abs(axes.T @ axes)[np.triu_indices(3, 1)]
    shear = float(np.degrees(np.arcsin(np.clip(cosines.max(), 0, 1))))
    if shear > MAX_SHEAR_DEG:
        raise ImageError(path, f"has a sheared affine (two voxel axes are {90 - shear:.1f} "
                         f"degrees apart, not 90)",
                         "reslice it onto a perpendicular grid (e.g. dcm2niix's gantry-tilt "
                         "correction) before registration")


def _check_intensities(path: Path, data: np.ndarray) -> None:
    """Refuse voxel values no registration can use: a near-constant volume, wild outliers."""
    sample = data[::2, ::2, ::2]  # percentiles of every 8th voxel: seconds saved on 1 mm heads
    commonest = float(np.median(sample))
    share = np.count_nonzero(data == commonest) / data.size
    if share > MAX_CONSTANT_SHARE:
        percent = math.floor(10000 * share) / 100  # 99.999% is not "100.00%"
        raise ImageError(path, f"is nearly constant ({percent:.2f}% of its voxels are "
                         f"{commonest:g})", "replace it with a valid T1w image")
    low, high = (float(v) for v in np.percentile(sample, [0.1, 99.9]))
    width = high - low
    top, bottom = float(data.max()), float(data.min())
    if width > 0 and max(top - high, low - bottom) > MAX_OUTLIER_SPREADS * width:
        worst = top if top - high >= low - bottom else bottom
        raise ImageError(path, f"has an extreme intensity outlier ({worst:.3g}, while 99.8% of "
                         f"its voxels lie within {low:.3g} to {high:.3g})",
                         "fix or replace the image (a conversion error?), or clip it to that "
                         "range")


def qform_sform_mismatch_mm(img: nib.Nifti1Image) -> float:
    """Largest distance (mm) between where the qform and the sform put a corner voxel.

    0 when either is unset (code 0). Viewers and tools differ in which of the
    two they trust, so a mismatch deserves a warning even though this app uses
    the sform throughout (nibabel's choice, as in fMRIPrep).
    """
    header = img.header
    if not isinstance(header, nib.Nifti1Header):
        return 0.0
    qform, qcode = header.get_qform(coded=True)
    sform, scode = header.get_sform(coded=True)
    if qform is None or sform is None or not qcode or not scode:
        return 0.0
    corners = np.array([[i, j, k, 1.0] for i in (0, img.shape[0] - 1)
                        for j in (0, img.shape[1] - 1) for k in (0, img.shape[2] - 1)]).T
    return float(np.abs((qform @ corners) - (sform @ corners)).max())


def _short(exc: Exception, path: Path | None = None) -> str:
    """The first line of an exception's text (the file's name instead of its whole path)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if path is not None:
        text = text.replace(str(path), path.name)
    return text[:160]


def load_crop(path: str | Path) -> np.ndarray:
    """A stored crop as the network sees it: float32 array of shape ``settings.crop.shape_vox``.

    The right crop is already mirrored on disk (when ``crop.mirror_right``),
    so no flip is needed here.
    """
    return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
