"""Affine (optionally deformable) registration of a T1w image to the template.

Registration runs coarse to fine, because a 1 mm affine fit costs about half a
minute on two cores while the crops only need millimetre accuracy:

0. *Like with like.*  The template is skull-stripped, so the moving image is
   too, roughly (:mod:`bids_pcs.spatial.brainmask`); otherwise scalp, skull
   and neck pull the mutual information towards a wrong, larger "brain".
   This masked copy only drives the whole-brain stages.  An image that is
   skull-stripped already (``skull_stripped``, :mod:`bids_pcs.spatial.skullstrip`)
   is its own brain and is used as it is.
1. *Initialisation* without trusting the header's origin (scanner coordinates
   are often far from the template's): the centres of the top
   ``_CENTRE_SLAB_MM`` of both brains are matched, then a two-round
   multi-start search: every start rotation fitted rigidly at 8 mm, the best
   few refitted with a similarity transform at ``coarse_mm`` (where the
   ranking by mutual information is reliable), the best kept.  Heads tilted
   by 20-30 degrees still start close.
2. *Affine* fit of the whole brain at ``coarse_mm`` (inside the dilated
   template brain mask).
3. *Local refinement* at ``fine_mm`` (``refine_on_region``): an affine pass
   whose metric sees only the medial frontal boxes (plus a margin), from the
   unmasked image, so the crops are aligned best; without it, a sparse
   whole-brain pass at ``fine_mm``.  The metric sees the boxes only where
   the template brain is more than ``INTERIOR_DEPTH_MM`` inside its hull
   (:func:`~bids_pcs.spatial.brainmask.brain_interior`): nearer the outer
   surface a brain extraction holds zeros where the head it came from holds
   CSF, dura and skull, and a metric that sees both aligns the two
   differently; the interior is the same image in both (the brain's edge has
   done its part in stage 2).  Measured on Colin27 and its brain extraction
   (mricron's ``ch2bet``), 2 mm, seeds 0 and 1: with the boxes inside the
   dilated brain mask the two transforms put the crop voxels 0.87 and 0.82 mm
   apart on average, inside the interior 0.30 and 0.22 mm, about as close as
   copies of Colin27 resampled to other voxels and axes come (0.12-0.37 mm
   before, 0.12-0.20 after).  The error against the known pose of eight
   synthetic heads moved from 0.77-0.78 to 0.80-0.83 mm on average (per head
   -0.17 to +0.32 mm; seven of them have the template's own anatomy, whose
   edge is a fair guide there).
   Masking the whole-head image better does not close the gap: the template's
   brain mask warped back onto it through a first affine fit (Dice 0.95 with
   ``ch2bet``, the rough mask's 0.74), in stages 2 and 3 with the dilated
   mask's region, gave 0.84-1.49 mm (the warped mask dilated by 0-4 mm).
4. *Deformable* (``deformable``): a SyN stage on the boxes' bounding box,
   its metric in the same region as stage 3.

One ``antsRegistration`` call runs stages 2-4 from the initial transform and
writes composite (``.h5``) forward and inverse transforms.  Point sampling is
seeded (``random_seed``), so the same image, seed and thread count give the
same transforms byte for byte.  ANTs reads a seed of 0 as "seed from the
clock" (every fit of the start search then sampled other points, and the
winning start rotation changed from run to run), so the seed passed to it is
never 0: see :func:`ants_random_seed`.
"""

from __future__ import annotations

import functools
import shutil
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_pcs.config import CropSettings, RegistrationSettings
from bids_pcs.io.hdf5_times import clear_object_times
from bids_pcs.spatial.antsio import downsample, import_ants, to_ants, to_nibabel
from bids_pcs.spatial.brainmask import brain_interior, rough_brain_mask
from bids_pcs.spatial.crops import box_mask
from bids_pcs.spatial.intensity import foreground_mask
from bids_pcs.spatial.template import load_template, registration_mask

# height of the slab below the top of the brain whose centre is matched at
# initialisation (mm): about the cerebrum, whatever lies below (cerebellum, neck)
_CENTRE_SLAB_MM = 90.0
# start rotations (degrees about the x, y, z axes) tried at initialisation
_START_ROTATIONS_DEG = (
    (0, 0, 0),
    (20, 0, 0), (-20, 0, 0),
    (0, 20, 0), (0, -20, 0),
    (0, 0, 20), (0, 0, -20),
)
_START_ITERATIONS = 40
_START_SAMPLING = 0.5
# round 2 of the search: the best round-1 poses refitted at coarse_mm
_FINALISTS = 2
_FINALIST_ITERATIONS = 50
# the start search runs on 8 mm copies: a few thousand voxels, a fraction of a second each
_INIT_MM = 8.0
# affine stages: whole brain at coarse_mm, then the crop boxes (or the whole
# brain, sparsely sampled) at fine_mm
_COARSE_ITERATIONS = 100
_COARSE_SAMPLING = 0.25
_FINE_ITERATIONS = 30
_FINE_SAMPLING = 0.1
_REGION_MARGIN_MM = 10.0
# the region's metric sees the brain this far inside its hull (closed by
# INTERIOR_CLOSING_MM, which takes in the fissure and the sulci): deeper than
# the 2 mm voxels and 2 mm smoothing carry a brain extraction's edge
INTERIOR_DEPTH_MM = 8.0
INTERIOR_CLOSING_MM = 5.0
_REGION_SAMPLING = 0.25
_SYN_ITERATIONS = "40x20"
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
    *,
    skull_stripped: bool = False,
) -> RegistrationResult:
    """Register ``image`` (bias-corrected, native space) to the template.

    ``skull_stripped``: the image is a brain already and is registered as it
    is; otherwise it is masked with a rough brain mask first (see
    :mod:`bids_pcs.spatial.skullstrip` for how the app decides).
    Writes ``reg_Composite.h5`` and ``reg_InverseComposite.h5`` in ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    moving = downsample(to_ants(image), settings.fine_mm)
    brain_only = moving if skull_stripped else _mask_brain(moving, settings.fine_mm)
    initial, rotation, metric = _initialise(brain_only, settings, out_dir)

    fixed, brain = _template_at(settings.fine_mm)
    boxes, region = _region_masks(fixed, _interior_at(settings.fine_mm), crop)
    images = {"fixed": fixed, "moving": moving, "moving_brain": brain_only, "mask": brain,
              "region": region}
    if settings.deformable:
        # SyN's displacement field lives on its fixed image: the boxes (+ margin) only,
        # ten times fewer voxels than the whole template; affine-only elsewhere
        ants = import_ants()
        images["fixed_region"] = ants.crop_image(fixed, boxes)
        images["region_cropped"] = ants.crop_image(region, boxes)
    paths = _write_images(out_dir, images)
    shrink = max(1, int(round(settings.coarse_mm / settings.fine_mm)))
    args = [
        "--dimensionality", "3", "--float", "1",
        "--output", str(out_dir / "reg_"),
        "--initial-moving-transform", str(initial),
        "--collapse-output-transforms", "1", "--write-composite-transform", "1",
        "--random-seed", str(ants_random_seed(settings.random_seed)),
        # whole brain at coarse_mm; heavy smoothing widens the capture range
        "--transform", "Affine[0.1]",
        "--metric", _mi(paths, _COARSE_SAMPLING, moving="moving_brain"),
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
            "--metric", _mi(paths, _FINE_SAMPLING, moving="moving_brain"),
            "--convergence", f"[{_FINE_ITERATIONS},1e-6,10]",
            "--shrink-factors", "1", "--smoothing-sigmas", "1vox",
            "--masks", str(paths["mask"]),
        ]
    if settings.deformable:
        args += [
            "--transform", "SyN[0.15,3,0]",
            "--metric", _mi(paths, None, fixed="fixed_region"),
            "--convergence", f"[{_SYN_ITERATIONS},1e-6,10]",
            "--shrink-factors", f"{shrink}x1" if shrink > 1 else "1",
            "--smoothing-sigmas", "1x0vox" if shrink > 1 else "0vox",
            "--masks", str(paths["region_cropped"]),
        ]
    _ants_registration(args)
    for path in paths.values():
        path.unlink()
    forward = out_dir / "reg_Composite.h5"
    inverse = out_dir / "reg_InverseComposite.h5"
    if not (forward.is_file() and inverse.is_file()):
        raise RuntimeError(f"antsRegistration wrote no composite transforms in {out_dir}")
    for transform in (forward, inverse):
        clear_object_times(transform)  # HDF5 stamps write times: same transform, same file
    return RegistrationResult(forward, inverse, rotation, metric)


def ants_random_seed(seed: int) -> int:
    """The ``--random-seed`` given to antsRegistration for the app's ``seed``.

    antsRegistration takes 0 (its default) to mean "seed from the system
    clock", which made the app's default seed 0 irreproducible; seeds >= 0
    are shifted by one (0 -> 1, 1 -> 2, ...) and negative ones kept, so
    distinct seeds stay distinct and none is 0.
    """
    return seed + 1 if seed >= 0 else seed


def _initialise(moving, settings: RegistrationSettings, out_dir: Path):
    """Best start: cranium centres matched, then a two-round multi-start search.

    Round 1 fits every start rotation rigidly on 8 mm copies (cheap, but at
    8 mm the mutual information can rank a wrong pose first); round 2 refits
    the ``_FINALISTS`` best with a similarity transform (rotation, translation,
    one scale: heads differ in size) at ``coarse_mm``, where the ranking is
    reliable, and keeps the best.
    """
    ants = import_ants()
    scratch = out_dir / "init_search"
    scratch.mkdir(exist_ok=True)
    fixed, mask = _template_at(_INIT_MM)
    moving_low = downsample(moving, _INIT_MM)
    low = _write_images(scratch, {"fixed": fixed, "moving": moving_low, "mask": mask},
                        tag="8mm")
    offset = _cranium_centre_lps(moving_low) - (centre := _cranium_centre_lps(fixed, mask))
    round1 = []
    for index, rotation in enumerate(_START_ROTATIONS_DEG):
        start = ants.create_ants_transform(transform_type="Euler3DTransform",
                                           center=list(centre), translation=list(offset))
        params = np.asarray(start.parameters, dtype=float)
        params[:3] = np.deg2rad(rotation)
        start.set_parameters(params)
        start_file = scratch / f"start{index}.mat"
        ants.write_transform(start, str(start_file))
        fitted = _fit(scratch / f"rigid{index}_", start_file, low, "Rigid[0.2]",
                      _START_ITERATIONS, settings.random_seed, sampling=_START_SAMPLING)
        round1.append((_mi_cost(fixed, moving_low, mask, fitted), index, fitted))

    fixed, mask = _template_at(settings.coarse_mm)
    moving_coarse = downsample(moving, settings.coarse_mm)
    coarse = _write_images(scratch, {"fixed": fixed, "moving": moving_coarse, "mask": mask},
                           tag="coarse")
    round2 = []
    for _, index, fitted in sorted(round1)[:_FINALISTS]:
        refitted = _fit(scratch / f"similarity{index}_", fitted, coarse, "Similarity[0.1]",
                        _FINALIST_ITERATIONS, settings.random_seed, sampling=_COARSE_SAMPLING)
        round2.append((_mi_cost(fixed, moving_coarse, mask, refitted), index, refitted))
    cost, index, best = min(round2)
    chosen = out_dir / "init_best.mat"
    chosen.write_bytes(best.read_bytes())
    shutil.rmtree(scratch)
    rotation = tuple(float(r) for r in _START_ROTATIONS_DEG[index])
    return chosen, rotation, cost


def _mask_brain(moving, spacing_mm: float):
    """``moving`` with everything but a rough brain mask set to 0, like the template."""
    ants = import_ants()
    data = moving.numpy()
    mask = rough_brain_mask(data, spacing_mm)
    return ants.from_numpy(np.where(mask, data, 0).astype(np.float32), origin=moving.origin,
                           spacing=moving.spacing, direction=moving.direction)


def _fit(prefix: Path, start: Path, paths: dict[str, Path], transform: str, iterations: int,
         seed: int, sampling: float | None = None) -> Path:
    """One single-level linear fit from ``start``; returns the collapsed transform file."""
    _ants_registration([
        "--dimensionality", "3", "--float", "1", "--output", str(prefix),
        "--initial-moving-transform", str(start),
        "--collapse-output-transforms", "1", "--random-seed", str(ants_random_seed(seed)),
        "--transform", transform, "--metric", _mi(paths, sampling),
        "--convergence", f"[{iterations},1e-6,10]",
        "--shrink-factors", "1", "--smoothing-sigmas", "0vox",
        "--masks", str(paths["mask"]),
    ])
    return Path(f"{prefix}0GenericAffine.mat")


def _mi_cost(fixed, moving, mask, transform: Path) -> float:
    """Mattes mutual information cost (lower is better) of ``moving`` through ``transform``."""
    ants = import_ants()
    warped = ants.apply_transforms(fixed, moving, [str(transform)])
    return float(ants.image_similarity(fixed, warped, "MattesMutualInformation",
                                       fixed_mask=mask))


def _ants_registration(args: list[str]) -> None:
    """Run ``antsRegistration`` in-process with command-line ``args``.

    ``ants.registration``'s keyword interface (antspyx 0.6) cannot express
    these fits, so the argument list is passed as antspyx allows
    (``fixed=args, moving=None``): its ``random_seed`` keyword is accepted but
    never passed on (only a process-wide ``ants.config`` seed is), which would
    undo the seeded, repeatable sampling; its linear stages use a fixed step
    of 0.25 (here 0.1 and 0.2) and ``Regular`` sampling only (some fits here
    are dense); and one call takes one fixed/moving pair and one mask, where
    the stages of :func:`register_to_template` use the brain-masked image with
    the brain mask, the whole image with the region mask, and a cropped
    template for SyN.
    """
    ants = import_ants()
    ants.registration(fixed=args, moving=None)


def _mi(paths: dict[str, Path], sampling: float | None, fixed: str = "fixed",
        moving: str = "moving") -> str:
    """Mattes mutual information between a fixed and a moving file (dense or sampled)."""
    metric = f"MI[{paths[fixed]},{paths[moving]},1,{_MI_BINS}"
    if sampling is not None:
        metric += f",Regular,{sampling}"
    return metric + "]"


def _write_images(folder: Path, images: dict, tag: str = "") -> dict[str, Path]:
    # uncompressed: these are read once, right away, by antsRegistration
    ants = import_ants()
    paths = {}
    for key, img in images.items():
        paths[key] = folder / f"reg_{key}{tag}.nii"
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


@functools.lru_cache(maxsize=4)
def _interior_at(spacing_mm: float) -> np.ndarray:
    """The template brain's interior on the grid of ``_template_at(spacing_mm)`` (cached)."""
    ants = import_ants()
    fixed, _ = _template_at(spacing_mm)
    brain = ants.resample_image_to_target(to_ants(load_template().brain_mask), fixed,
                                          interp_type="nearestNeighbor").numpy() > 0
    return brain_interior(brain, spacing_mm, INTERIOR_DEPTH_MM, INTERIOR_CLOSING_MM)


def _region_masks(fixed, interior: np.ndarray, crop: CropSettings):
    """(boxes, boxes inside the brain's interior) on the grid of ``fixed``; boxes with a margin."""
    ants = import_ants()
    inside = box_mask(to_nibabel(fixed), crop, margin_mm=_REGION_MARGIN_MM)
    region = inside & interior
    return tuple(
        ants.from_numpy(m.astype(np.float32), origin=fixed.origin, spacing=fixed.spacing,
                        direction=fixed.direction)
        for m in (inside, region)
    )
