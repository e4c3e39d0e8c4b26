"""One participant: anatomy, sulci, and one T1w image + label per session.

Order of work (so that the template is resampled once per image):

1. levels of the anatomy source on the template grid (brain only, its own
   sulci removed where sulci are carved; see :mod:`bids_pcs.synth.anatomy`);
2. the participant's cortical thickness and ventricle size
   (:mod:`bids_pcs.synth.morphology`);
3. each hemisphere's PCS carved into them, label = the carved voxels, with
   its template length tuned so that the *native* length (after the
   participant's shape, summed over its segments) is the drawn one; then the
   hemisphere's distractor sulci (:mod:`bids_pcs.synth.sulci`), never labelled;
4. per session: a pose, the site's voxel size and contrast family, an
   orientation and the image's artefacts; every scanner voxel pulled back to
   the template; levels resampled (trilinear), label resampled inside its own
   small box; contrast, bias, k-space artefacts and noise applied.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_pcs.config import HEMISPHERES
from bids_pcs.synth import anatomy, artefacts, contrast, deformation, morphology, pcs_geometry
from bids_pcs.synth.options import SynthOptions
from bids_pcs.synth.population import ParticipantSpec
from bids_pcs.synth.sulci import KINDS, draw_distractors

HEMISPHERE_NAMES = {"L": "left", "R": "right"}
# sulci map codes (Acquisition.sulci): 1 + index in KINDS
SULCUS_CODES = {kind: k + 1 for k, kind in enumerate(KINDS)}


@dataclass
class Acquisition:
    """One synthetic T1w image with its PCS label and ground truth.

    ``sulci`` (only when asked for) maps every carved sulcus on the image grid:
    ``SULCUS_CODES`` of its kind, 0 elsewhere.
    """

    session: str | None
    t1w: nib.Nifti1Image
    dseg: nib.Nifti1Image
    truth: dict[str, Any]
    sulci: nib.Nifti1Image | None = None


@dataclass
class CarvedSulcus:
    """One carved sulcus: hemisphere, kind (see ``KINDS``), course and voxels."""

    hemisphere: str
    kind: str
    course: pcs_geometry.SulcusCourse
    carved: pcs_geometry.CarvedLabel


@dataclass
class ParticipantResult:
    """Everything made for one participant."""

    spec: ParticipantSpec
    length_mm: dict[str, float]
    acquisitions: list[Acquisition]
    segments_mm: dict[str, list[float]] = field(default_factory=dict)
    sulci: list[CarvedSulcus] = field(default_factory=list)
    shape: deformation.Shape | None = None


def synthesize_participant(spec: ParticipantSpec, options: SynthOptions,
                           rng: np.random.Generator, *, keep_sulci: bool = False
                           ) -> ParticipantResult:
    """Make every image of ``spec`` (deterministic for a given ``rng`` state).

    Args:
        spec: the participant (see :func:`bids_pcs.synth.population.draw_participant`).
        options: the cohort's options.
        rng: the participant's stream, right after drawing ``spec``.
        keep_sulci: also map every carved sulcus on each image grid
            (``Acquisition.sulci``), for figures and tests.
    """
    source = anatomy.load_source(spec.source, options.base_sulci)
    shape = deformation.draw_shape(rng, amplitude_mm=options.deformation_mm,
                                   head_scale=spec.head_scale, bbox_mm=source.head_bbox_mm,
                                   spacing_mm=options.deformation_spacing_mm)
    blend = float(rng.uniform(*options.tissue_blend)) if source.tissue_levels is not None else 0.0
    brain_levels = source.levels(skull=False, tissue_weight=blend)
    anatomy_truth = _change_anatomy(rng, spec, source, brain_levels, options)

    blur = options.template_blur_mm if spec.source == anatomy.MNI_NAME else 0.0
    lengths: dict[str, float] = {}
    segments: dict[str, list[float]] = {}
    carved: dict[str, pcs_geometry.CarvedLabel] = {}
    sulci: list[CarvedSulcus] = []
    for hemi in HEMISPHERES:
        target = spec.target_length_mm[hemi]
        placed = []
        lengths[hemi], segments[hemi] = 0.0, []
        if target is not None:
            course = _course_with_native_length(rng, hemi, target, shape, options.pcs)
            placed.append(course)
            label = pcs_geometry.carve(brain_levels, source.affine, course, blur)
            if spec.classes[hemi] != "absent" or options.label_absent_sulci:
                carved[hemi] = label
                lengths[hemi] = native_length_mm(course, shape)
                segments[hemi] = segment_lengths_mm(course, shape)
                sulci.append(CarvedSulcus(hemi, "pcs", course, label))
            else:
                sulci.append(CarvedSulcus(hemi, "short_pcs", course, label))
        if options.distractors.any:
            for kind, other in draw_distractors(rng, hemi, options.distractors, placed):
                sulci.append(CarvedSulcus(hemi, kind, other,
                                          pcs_geometry.carve(brain_levels, source.affine,
                                                             other, blur)))
    anatomy_truth["ShortSulcusMm"] = {
        HEMISPHERE_NAMES[s.hemisphere]: round(native_length_mm(s.course, shape), 2)
        for s in sulci if s.kind == "short_pcs"}
    anatomy_truth["Distractors"] = {
        HEMISPHERE_NAMES[h]: [s.kind for s in sulci if s.hemisphere == h and s.kind != "pcs"]
        for h in HEMISPHERES}

    acquisitions = []
    for session in spec.sessions:
        acquisitions.append(_acquire(spec, session, source, shape, brain_levels, carved,
                                     lengths, segments, anatomy_truth, options, rng,
                                     sulci if keep_sulci else None))
    return ParticipantResult(spec, lengths, acquisitions, segments, sulci, shape)


def native_length_mm(course: pcs_geometry.SulcusCourse, shape: deformation.Shape) -> float:
    """Length of the sulcus' medial line once warped to the participant's head.

    An interrupted sulcus counts the sum of its segments (the bridges do not count).
    """
    return sum(segment_lengths_mm(course, shape))


def segment_lengths_mm(course: pcs_geometry.SulcusCourse, shape: deformation.Shape
                       ) -> list[float]:
    """Native length of each segment of ``course``."""
    identity = deformation.Pose(np.eye(4))
    out = []
    for line in course.length_lines():
        points = deformation.scanner_points(line, shape, identity)
        out.append(float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum()))
    return out


def _course_with_native_length(rng: np.random.Generator, hemi: str, target: float,
                               shape: deformation.Shape, pcs: pcs_geometry.SulcusShape
                               ) -> pcs_geometry.SulcusCourse:
    course = pcs_geometry.draw_course(rng, hemi, target / shape.linear[1, 1], pcs)
    total = pcs_geometry.base_arc_length_mm()
    for _ in range(3):
        measured = native_length_mm(course, shape)
        length = min(total, course.labelled_length_mm * target / measured
                     + course.bridge_total_mm)
        start = min(course.start_mm, total - length)
        course = dataclasses.replace(course, length_mm=length, start_mm=start)
    return course


def _change_anatomy(rng: np.random.Generator, spec: ParticipantSpec,
                    source: anatomy.AnatomySource, brain_levels: np.ndarray,
                    options: SynthOptions) -> dict[str, Any]:
    """Cortical thickness and ventricle size of this participant (in place); their truth."""
    thickness = 0.0
    if options.cortical_thickness_mm != (0.0, 0.0):
        thickness = float(rng.uniform(*options.cortical_thickness_mm))
        morphology.change_cortical_thickness(brain_levels, source.brain_box, thickness)
    ventricles = 0.0
    if options.ventricle_enlargement_mm > 0:
        # the ventricles widen with age: none at 20, the full amount at 65
        age_factor = float(np.clip((spec.age - 20) / 45.0, 0.0, 1.0))
        ventricles = options.ventricle_enlargement_mm * age_factor * float(rng.uniform(0.5, 1.5))
        morphology.enlarge_ventricles(brain_levels, source.ventricles, ventricles)
    return {"CorticalThicknessChangeMm": round(thickness, 3),
            "VentricleEnlargementMm": round(ventricles, 3)}


def _acquire(spec: ParticipantSpec, session: str | None, source: anatomy.AnatomySource,
             shape: deformation.Shape, brain_levels: np.ndarray,
             carved: dict[str, pcs_geometry.CarvedLabel], lengths: dict[str, float],
             segments: dict[str, list[float]], anatomy_truth: dict[str, Any],
             options: SynthOptions, rng: np.random.Generator,
             sulci: list[CarvedSulcus] | None) -> Acquisition:
    labels = options.labels
    site = options.site(spec.site)
    stripped = bool(rng.uniform() < options.stripped_fraction)
    pose = deformation.draw_pose(rng, max_rotation_deg=options.max_rotation_deg,
                                 max_shift_mm=options.max_shift_mm)
    if site.voxel_mm is not None:
        voxel = tuple(site.voxel_mm)
    else:
        voxel = options.voxel_sizes[int(rng.integers(len(options.voxel_sizes)))]
    orientation = options.orientations[int(rng.integers(len(options.orientations)))]
    drawn = artefacts.draw_artefacts(rng, options.artefacts, voxel, skull=not stripped)
    bias = options.artefacts.strong_bias_strength if drawn.strong_bias else options.bias_strength
    acq_contrast = contrast.draw_contrast(rng, noise_range=options.noise_range,
                                          bias_strength=bias, family=site.contrast)
    margin = float(rng.uniform(2.0, 8.0)) + 2 * options.deformation_mm
    outline = source.brain_outline_mm if stripped else source.head_outline_mm
    to_scanner = deformation.template_to_scanner(shape, pose)
    grid = deformation.native_grid(outline, to_scanner, voxel, margin)

    coords = deformation.pullback_coordinates(grid, shape, pose, source.affine)
    if stripped:
        levels = brain_levels
    else:
        head = source.defaced_head_levels if drawn.defaced else source.head_levels
        levels = brain_levels + head
    native_levels = ndimage.map_coordinates(levels, coords, order=1, cval=0.0,
                                            prefilter=False, output=np.float32)
    background = native_levels < 0.05 if stripped else None
    t1w = contrast.render(native_levels, acq_contrast, rng, background_zero=background,
                          kspace=drawn.kspace)
    del native_levels

    dseg = np.zeros(grid.shape, dtype=np.uint8)
    dseg_value = {"L": labels.dseg_left, "R": labels.dseg_right}
    n_voxels = {}
    for hemi, label in carved.items():
        box = _scanner_box(label, source.affine, shape, pose, grid)
        inside = _resample_label(coords, label, box)
        dseg[inside & (dseg == 0)] = dseg_value[hemi]
        n_voxels[hemi] = int((dseg == dseg_value[hemi]).sum())
    sulci_img = None
    if sulci is not None:
        sulci_map = np.zeros(grid.shape, dtype=np.uint8)
        for sulcus in sulci:
            if sulcus.carved.n_voxels == 0:
                continue
            box = _scanner_box(sulcus.carved, source.affine, shape, pose, grid)
            inside = _resample_label(coords, sulcus.carved, box)
            sulci_map[inside & (sulci_map == 0)] = SULCUS_CODES[sulcus.kind]
        sulci_img = _reoriented(sulci_map, grid.affine, orientation)
    del coords

    t1w_img = _reoriented(t1w, grid.affine, orientation)
    dseg_img = _reoriented(dseg, grid.affine, orientation)
    truth = {
        "AnatomySource": spec.source,
        "Site": site.name,
        "ContrastFamily": site.contrast,
        "SkullStripped": stripped,
        "Defaced": drawn.defaced,
        "VoxelSizeMm": list(voxel),
        "Orientation": orientation,
        "TemplateToScannerAffine": np.round(to_scanner, 6).tolist(),
        "PcsClass": {HEMISPHERE_NAMES[h]: spec.classes[h] for h in HEMISPHERES},
        "PcsLengthMm": {HEMISPHERE_NAMES[h]: round(lengths[h], 2) for h in HEMISPHERES},
        "PcsSegmentsMm": {HEMISPHERE_NAMES[h]: [round(v, 2) for v in segments[h]]
                          for h in HEMISPHERES},
        "PcsVoxels": {HEMISPHERE_NAMES[h]: n_voxels.get(h, 0) for h in HEMISPHERES},
        **anatomy_truth,
        "Artefacts": {**drawn.kspace.truth(), "StrongInhomogeneity": drawn.strong_bias},
        # intensities before bias and noise: CSF, grey and white matter in the stored units
        "TissueIntensity": {"CSF": round(acq_contrast.csf * acq_contrast.scale, 1),
                            "GM": round(acq_contrast.gm * acq_contrast.scale, 1),
                            "WM": round(acq_contrast.scale, 1)},
        "MedialPointsMm": _medial_points(shape, pose),
        "Thresholds": {"PresentMinMm": labels.present_min_mm,
                       "ProminentMinMm": labels.prominent_min_mm},
    }
    return Acquisition(session, t1w_img, dseg_img, truth, sulci_img)


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
