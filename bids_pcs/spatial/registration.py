"""Affine (optionally deformable) registration of a T1w image to the template.

Registration runs coarse to fine, because a 1 mm affine fit costs about half a
minute on two cores while the crops only need millimetre accuracy:

1. *Initialisation.*  The brain is located without trusting the header's
   origin (scanner coordinates are often far from the template's): the head
   is segmented on a coarse copy, and the centre of its top
   ``_CENTRE_SLAB_MM`` (the cranium, whatever lies below: neck or nothing) is
   matched to the same slab of the template brain.  Several rotations around
   that centre are each fitted rigidly at ``coarse_mm`` and the best by mutual
   information wins, so heads tilted by tens of degrees still start close.
2. *Affine* fit with mutual information inside the dilated template brain mask
   (the template is skull-stripped: scalp, skull and neck of whole-head scans
   must not pull the fit), at ``coarse_mm`` then ``fine_mm``.
3. *Local refinement* (``refine_on_region``): another affine pass whose metric
   only sees the medial frontal boxes, so the crops are aligned best.
4. *Deformable* (``deformable``): a SyN stage inside the brain mask.

One ``antsRegistration`` call runs stages 2-4 from the initial transform and
writes composite (``.h5``) forward and inverse transforms.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_pcs.config import CropSettings, RegistrationSettings
from bids_pcs.spatial.antsio import downsample, import_ants, to_ants, to_nibabel
from bids_pcs.spatial.crops import box_mask
from bids_pcs.spatial.intensity import foreground_mask
from bids_pcs.spatial.template import load_template, registration_mask

# height of the slab below the top of the head whose centre stands for the
# brain centre at initialisation (mm); about the height of the cerebrum
_CENTRE_SLAB_MM = 90.0
# start rotations (degrees about the x, y, z axes) tried at initialisation
_START_ROTATIONS_DEG = (
    (0, 0, 0),
    (20, 0, 0), (-20, 0, 0),
    (0, 20, 0), (0, -20, 0),
    (0, 0, 20), (0, 0, -20),
)
_START_ITERATIONS = 40
# the start search runs on 8 mm copies: a few thousand voxels, a fraction of a second each
_INIT_MM = 8.0
# affine stages: whole brain at coarse_mm, then the crop boxes (or the whole
# brain, sparsely sampled) at fine_mm
_COARSE_ITERATIONS = 100
_COARSE_SAMPLING = 0.25
_FINE_ITERATIONS = 30
_FINE_SAMPLING = 0.1
_REGION_MARGIN_MM = 10.0
_REGION_SAMPLING = 0.25
_SYN_ITERATIONS = "60x30"
_MI_BINS = 32


@dataclass(frozen=True)
class RegistrationResult:
    """Transforms found by :func:`register_to_template`.

    Args:
        forward_transform: ANTs composite (``.h5``) that brings native images
            into template space (it maps template points to native points).
        inverse_transform: its inverse (brings template-space maps to native).
        initial_rotation_deg: the start rotation that won the search.
        initial_metric: its mutual information cost (lower is better).
    """

    forward_transform: Path
    inverse_transform: Path
    initial_rotation_deg: tuple[float, float, float]
    initial_metric: float


def register_to_template(
    image: nib.Nifti1Image,
    settings: RegistrationSettings,
    crop: CropSettings,
    out_dir: Path,
) -> RegistrationResult:
    """Register ``image`` (bias-corrected, native space) to the template.

    Writes ``reg_Composite.h5`` and ``reg_InverseComposite.h5`` in ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    moving = to_ants(image)
    initial, rotation, metric = _initialise(moving, settings, out_dir)

    fixed, brain = _template_at(settings.fine_mm)
    paths = _write_images(out_dir, {
        "fixed": fixed, "moving": downsample(moving, settings.fine_mm), "mask": brain,
        "region": _region_mask(fixed, brain, crop),
    })
    shrink = max(1, int(round(settings.coarse_mm / settings.fine_mm)))
    args = [
        "--dimensionality", "3", "--float", "1",
        "--output", str(out_dir / "reg_"),
        "--initial-moving-transform", str(initial),
        "--collapse-output-transforms", "1", "--write-composite-transform", "1",
        "--random-seed", str(settings.random_seed),
        # whole brain at coarse_mm; heavy smoothing widens the capture range
        "--transform", "Affine[0.1]",
        "--metric", _mi(paths, _COARSE_SAMPLING),
        "--convergence", f"[{_COARSE_ITERATIONS},1e-6,10]",
        "--shrink-factors", str(shrink), "--smoothing-sigmas", f"{shrink}vox",  # sigma = coarse_mm
        "--masks", str(paths["mask"]),
    ]
    if settings.refine_on_region:
        # the crops only need to be right where they are: refine on the boxes
        args += [
            "--transform", "Affine[0.1]",
            "--metric", _mi(paths, _REGION_SAMPLING),
            "--convergence", f"[{_FINE_ITERATIONS},1e-6,10]",
            "--shrink-factors", "1", "--smoothing-sigmas", "1vox",
            "--masks", str(paths["region"]),
        ]
    else:
        args += [
            "--transform", "Affine[0.1]",
            "--metric", _mi(paths, _FINE_SAMPLING),
            "--convergence", f"[{_FINE_ITERATIONS},1e-6,10]",
            "--shrink-factors", "1", "--smoothing-sigmas", "1vox",
            "--masks", str(paths["mask"]),
        ]
    if settings.deformable:
        args += [
            "--transform", "SyN[0.15,3,0]",
            "--metric", _mi(paths, None),
            "--convergence", f"[{_SYN_ITERATIONS},1e-6,10]",
            "--shrink-factors", f"{shrink}x1" if shrink > 1 else "1",
            "--smoothing-sigmas", "1x0vox" if shrink > 1 else "0vox",
            "--masks", str(paths["mask"]),
        ]
    _ants_registration(args)
    for path in paths.values():
        path.unlink()
    forward = out_dir / "reg_Composite.h5"
    inverse = out_dir / "reg_InverseComposite.h5"
    if not (forward.is_file() and inverse.is_file()):
        raise RuntimeError(f"antsRegistration wrote no composite transforms in {out_dir}")
    return RegistrationResult(forward, inverse, rotation, metric)


def _initialise(moving, settings: RegistrationSettings, out_dir: Path):
    """Best start: centre of the cranium matched, several rotations fitted rigidly."""
    ants = import_ants()
    scratch = out_dir / "init_search"
    scratch.mkdir(exist_ok=True)
    fixed, mask = _template_at(_INIT_MM)
    moving_low = downsample(moving, _INIT_MM)
    paths = _write_images(scratch, {"fixed": fixed, "moving": moving_low, "mask": mask})
    fixed_centre = _cranium_centre_lps(fixed, from_mask=mask)
    moving_centre = _cranium_centre_lps(moving_low)
    best: tuple[float, Path, tuple[float, float, float]] | None = None
    for index, rotation in enumerate(_START_ROTATIONS_DEG):
        start = ants.create_ants_transform(
            transform_type="Euler3DTransform", center=list(fixed_centre),
            translation=list(moving_centre - fixed_centre),
        )
        params = np.asarray(start.parameters, dtype=float)
        params[:3] = np.deg2rad(rotation)
        start.set_parameters(params)
        start_file = scratch / f"start{index}.mat"
        ants.write_transform(start, str(start_file))
        prefix = scratch / f"fit{index}_"
        _ants_registration([
            "--dimensionality", "3", "--float", "1", "--output", str(prefix),
            "--initial-moving-transform", str(start_file),
            "--collapse-output-transforms", "1",
            "--random-seed", str(settings.random_seed),
            "--transform", "Rigid[0.2]", "--metric", _mi(paths, None),
            "--convergence", f"[{_START_ITERATIONS},1e-6,10]",
            "--shrink-factors", "1", "--smoothing-sigmas", "0vox",
            "--masks", str(paths["mask"]),
        ])
        fitted = Path(f"{prefix}0GenericAffine.mat")
        warped = ants.apply_transforms(fixed, moving_low, [str(fitted)])
        cost = float(ants.image_similarity(fixed, warped, "MattesMutualInformation",
                                           fixed_mask=mask))
        if best is None or cost < best[0]:
            best = (cost, fitted, tuple(float(r) for r in rotation))
    assert best is not None
    chosen = out_dir / "init_best.mat"
    chosen.write_bytes(best[1].read_bytes())
    shutil.rmtree(scratch)
    return chosen, best[2], best[0]


def _ants_registration(args: list[str]) -> None:
    """Run ``antsRegistration`` in-process with command-line ``args``."""
    ants = import_ants()
    ants.registration(fixed=args, moving=None)


def _mi(paths: dict[str, Path], sampling: float | None) -> str:
    """Mattes mutual information between the fixed and moving files (dense or sampled)."""
    metric = f"MI[{paths['fixed']},{paths['moving']},1,{_MI_BINS}"
    if sampling is not None:
        metric += f",Regular,{sampling}"
    return metric + "]"


def _write_images(folder: Path, images: dict) -> dict[str, Path]:
    ants = import_ants()
    paths = {}
    for key, img in images.items():
        paths[key] = folder / f"reg_{key}.nii"
        ants.image_write(img, str(paths[key]))
    return paths


def _cranium_centre_lps(image, from_mask=None) -> np.ndarray:
    """Physical (LPS) centre of the top ``_CENTRE_SLAB_MM`` of the head in ``image``."""
    data = image.numpy()
    mask = from_mask.numpy() > 0 if from_mask is not None else foreground_mask(data)
    ijk = np.argwhere(mask)
    if len(ijk) == 0:
        raise RuntimeError("the image has no foreground to register")
    spacing = np.asarray(image.spacing)
    direction = np.asarray(image.direction).reshape(3, 3)
    points = ijk * spacing @ direction.T + np.asarray(image.origin)
    # LPS: superior is +z, as in RAS
    top = np.percentile(points[:, 2], 99.5)
    slab = points[points[:, 2] >= top - _CENTRE_SLAB_MM]
    return slab.mean(axis=0)


@functools.lru_cache(maxsize=4)
def _template_at(spacing_mm: float):
    """Template and dilated brain mask resampled to ``spacing_mm`` (cached per process)."""
    ants = import_ants()
    template = to_ants(load_template().t1)
    mask = to_ants(registration_mask())
    fixed = downsample(template, spacing_mm)
    mask_low = ants.resample_image_to_target(mask, fixed, interp_type="nearestNeighbor")
    return fixed, mask_low


def _region_mask(fixed, brain_mask, crop: CropSettings):
    """The crop boxes (plus a margin) inside ``brain_mask``, on the grid of ``fixed``."""
    ants = import_ants()
    inside = box_mask(to_nibabel(fixed), crop, margin_mm=_REGION_MARGIN_MM)
    region = (inside & (brain_mask.numpy() > 0)).astype(np.float32)
    return ants.from_numpy(region, origin=fixed.origin, spacing=fixed.spacing,
                           direction=fixed.direction)
