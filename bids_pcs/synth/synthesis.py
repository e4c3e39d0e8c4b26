"""One participant: anatomy, sulci, and one T1w image + label per session.

Order of work (so that the template is resampled once per image):

1. levels of the anatomy source on the template grid (brain only);
2. each hemisphere's PCS carved into them, label = the carved voxels, with
   its template length tuned so that the *native* length (after the
   participant's shape) is the drawn one;
3. per session: a pose, a voxel size and an orientation; every scanner voxel
   pulled back to the template; levels resampled (trilinear), label
   resampled inside its own small box; contrast, bias and noise applied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_pcs.config import HEMISPHERES, LabelSettings
from bids_pcs.synth import anatomy, contrast, deformation, pcs_geometry
from bids_pcs.synth.population import ParticipantSpec

HEMISPHERE_NAMES = {"L": "left", "R": "right"}


@dataclass(frozen=True)
class AcquisitionOptions:
    """What varies between acquisitions (see :class:`~bids_pcs.synth.cohort.SynthOptions`)."""

    voxel_sizes: tuple[tuple[float, float, float], ...]
    orientations: tuple[str, ...]
    stripped_fraction: float
    deformation_mm: float
    max_rotation_deg: float
    max_shift_mm: float
    noise_range: tuple[float, float]
    bias_strength: float
    tissue_blend: tuple[float, float]


@dataclass
class Acquisition:
    """One synthetic T1w image with its PCS label and ground truth."""

    session: str | None
    t1w: nib.Nifti1Image
    dseg: nib.Nifti1Image
    truth: dict[str, Any]


@dataclass
class ParticipantResult:
    """Everything made for one participant."""

    spec: ParticipantSpec
    length_mm: dict[str, float]
    acquisitions: list[Acquisition]


def synthesize_participant(spec: ParticipantSpec, options: AcquisitionOptions,
                           labels: LabelSettings, rng: np.random.Generator
                           ) -> ParticipantResult:
    """Make every image of ``spec`` (deterministic for a given ``rng`` state)."""
    source = anatomy.load_source(spec.source)
    shape = deformation.draw_shape(rng, amplitude_mm=options.deformation_mm,
                                   head_scale=spec.head_scale, bbox_mm=source.head_bbox_mm)
    blend = float(rng.uniform(*options.tissue_blend)) if source.tissue_levels is not None else 0.0
    brain_levels = source.levels(skull=False, tissue_weight=blend)

    lengths: dict[str, float] = {}
    carved: dict[str, pcs_geometry.CarvedLabel] = {}
    courses: dict[str, pcs_geometry.PcsCourse] = {}
    for hemi in HEMISPHERES:
        target = spec.target_length_mm[hemi]
        if target is None:
            lengths[hemi] = 0.0
            continue
        course = _course_with_native_length(rng, hemi, target, shape)
        courses[hemi] = course
        lengths[hemi] = native_length_mm(course, shape)
        carved[hemi] = pcs_geometry.carve(brain_levels, source.affine, course)

    acquisitions = []
    for session in spec.sessions:
        acquisitions.append(_acquire(spec, session, source, shape, brain_levels, carved,
                                     lengths, options, labels, rng))
    return ParticipantResult(spec, lengths, acquisitions)


def native_length_mm(course: pcs_geometry.PcsCourse, shape: deformation.Shape) -> float:
    """Length of the sulcus' medial line once warped to the participant's head."""
    identity = deformation.Pose(np.eye(4))
    points = deformation.scanner_points(course.length_line(), shape, identity)
    return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())


def _course_with_native_length(rng: np.random.Generator, hemi: str, target: float,
                               shape: deformation.Shape) -> pcs_geometry.PcsCourse:
    course = pcs_geometry.draw_course(rng, hemi, target / shape.linear[1, 1])
    total = pcs_geometry.base_arc_length_mm()
    for _ in range(3):
        measured = native_length_mm(course, shape)
        length = min(total, course.length_mm * target / measured)
        start = min(course.start_mm, total - length)
        course = dataclasses.replace(course, length_mm=length, start_mm=start)
    return course


def _acquire(spec: ParticipantSpec, session: str | None, source: anatomy.AnatomySource,
             shape: deformation.Shape, brain_levels: np.ndarray,
             carved: dict[str, pcs_geometry.CarvedLabel], lengths: dict[str, float],
             options: AcquisitionOptions, labels: LabelSettings,
             rng: np.random.Generator) -> Acquisition:
    stripped = bool(rng.uniform() < options.stripped_fraction)
    pose = deformation.draw_pose(rng, max_rotation_deg=options.max_rotation_deg,
                                 max_shift_mm=options.max_shift_mm)
    voxel = options.voxel_sizes[int(rng.integers(len(options.voxel_sizes)))]
    orientation = options.orientations[int(rng.integers(len(options.orientations)))]
    acq_contrast = contrast.draw_contrast(rng, noise_range=options.noise_range,
                                          bias_strength=options.bias_strength)
    margin = float(rng.uniform(2.0, 8.0)) + 2 * options.deformation_mm
    outline = source.brain_outline_mm if stripped else source.head_outline_mm
    to_scanner = deformation.template_to_scanner(shape, pose)
    grid = deformation.native_grid(outline, to_scanner, voxel, margin)

    coords = deformation.pullback_coordinates(grid, shape, pose, source.affine)
    levels = brain_levels if stripped else brain_levels + source.head_levels
    native_levels = ndimage.map_coordinates(levels, coords, order=1, cval=0.0,
                                            prefilter=False, output=np.float32)
    background = native_levels < 0.05 if stripped else None
    t1w = contrast.render(native_levels, acq_contrast, rng, background_zero=background)
    del native_levels

    dseg = np.zeros(grid.shape, dtype=np.uint8)
    dseg_value = {"L": labels.dseg_left, "R": labels.dseg_right}
    n_voxels = {}
    for hemi, label in carved.items():
        box = _scanner_box(label, source.affine, shape, pose, grid)
        inside = _resample_label(coords, label, box)
        dseg[inside & (dseg == 0)] = dseg_value[hemi]
        n_voxels[hemi] = int((dseg == dseg_value[hemi]).sum())
    del coords

    t1w_img = _reoriented(t1w, grid.affine, orientation)
    dseg_img = _reoriented(dseg, grid.affine, orientation)
    truth = {
        "AnatomySource": spec.source,
        "SkullStripped": stripped,
        "VoxelSizeMm": list(voxel),
        "Orientation": orientation,
        "TemplateToScannerAffine": np.round(to_scanner, 6).tolist(),
        "PcsClass": {HEMISPHERE_NAMES[h]: spec.classes[h] for h in HEMISPHERES},
        "PcsLengthMm": {HEMISPHERE_NAMES[h]: round(lengths[h], 2) for h in HEMISPHERES},
        "PcsVoxels": {HEMISPHERE_NAMES[h]: n_voxels.get(h, 0) for h in HEMISPHERES},
        "MedialPointsMm": _medial_points(shape, pose),
        "Thresholds": {"PresentMinMm": labels.present_min_mm,
                       "ProminentMinMm": labels.prominent_min_mm},
    }
    return Acquisition(session, t1w_img, dseg_img, truth)


def _resample_label(coords: np.ndarray, label: pcs_geometry.CarvedLabel,
                    where: tuple[slice, slice, slice]) -> np.ndarray:
    """Scanner voxels of the carved label: trilinear over its box, threshold 1/2.

    Only the scanner sub-box ``where`` (found by mapping the label forward) is
    searched, instead of millions of voxels.
    """
    out = np.zeros(coords.shape[1:], dtype=bool)
    if label.n_voxels == 0:
        return out
    start = np.array([sl.start for sl in label.box], dtype=np.float32)
    points = coords[(slice(None), *where)].reshape(3, -1) - start[:, None]
    values = ndimage.map_coordinates(label.mask.astype(np.float32), points, order=1,
                                     cval=0.0, prefilter=False)
    out[where] = values.reshape(out[where].shape) > 0.5
    return out


def _scanner_box(label: pcs_geometry.CarvedLabel, template_affine: np.ndarray,
                 shape: deformation.Shape, pose: deformation.Pose,
                 grid: deformation.NativeGrid) -> tuple[slice, slice, slice]:
    """Scanner voxel box holding ``label`` once warped, with a margin of 3 voxels."""
    idx = np.argwhere(label.mask) + np.array([sl.start for sl in label.box])
    template_mm = nib.affines.apply_affine(template_affine, idx)
    scanner_mm = deformation.scanner_points(template_mm, shape, pose)
    vox = nib.affines.apply_affine(np.linalg.inv(grid.affine), scanner_mm)
    low = np.clip(np.floor(vox.min(0)).astype(int) - 3, 0, grid.shape)
    high = np.clip(np.ceil(vox.max(0)).astype(int) + 4, 0, grid.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))  # type: ignore[return-value]


def _medial_points(shape: deformation.Shape, pose: deformation.Pose) -> dict[str, list[float]]:
    """Scanner mm of the middle of the paracingulate band, 5 mm from the midline."""
    arc = pcs_geometry.base_arc()
    y, z = arc[len(arc) // 3]
    template = np.array([[-5.0, y, z], [5.0, y, z]])
    scanner = deformation.scanner_points(template, shape, pose)
    return {"left": np.round(scanner[0], 2).tolist(), "right": np.round(scanner[1], 2).tolist()}


def _reoriented(data: np.ndarray, affine: np.ndarray, orientation: str) -> nib.Nifti1Image:
    """A NIfTI of RAS-ordered ``data`` stored with the axis codes ``orientation``."""
    img = nib.Nifti1Image(data, affine)
    target = nib.orientations.axcodes2ornt(tuple(orientation))
    current = nib.orientations.io_orientation(affine)
    out = img.as_reoriented(nib.orientations.ornt_transform(current, target))
    out = nib.Nifti1Image(np.asarray(out.dataobj), out.affine)
    out.header.set_xyzt_units("mm")
    out.set_qform(out.affine, code=1)
    out.set_sform(out.affine, code=1)
    out.header["descrip"] = b"bids_pcs-synth"
    return out
