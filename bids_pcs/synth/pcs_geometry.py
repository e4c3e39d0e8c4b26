"""Where a paracingulate sulcus runs, and carving it into a level map.

All coordinates here are template millimetres (MNI152NLin2009aSym, RAS).

The PCS runs on the medial surface of the frontal lobe, dorsal to and
roughly parallel with the cingulate sulcus, inside the paracingulate gyrus
(Harvard-Oxford cortical label 28). Its *course* is a curve in the sagittal
(y, z) plane; the sulcus is the sheet swept by that curve from the midline
laterally to its depth (and tilted a little, as sulci are in coronal view).

The base arc below follows the middle of the Harvard-Oxford paracingulate
band at x = -5 mm (read off the atlas over the 2009a template), from above the
anterior commissure forward and down around the genu of the corpus callosum.
A course is a random stretch of it, offset and waved by a few millimetres.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import interpolate, ndimage
from scipy.spatial import cKDTree

from bids_pcs.config import HEMISPHERES

# (y, z) mm of the middle of the paracingulate band, posterior to anterior
_BASE_ARC_YZ = np.array([
    [4.0, 49.5], [10.0, 48.5], [20.0, 45.5], [30.0, 41.5], [39.0, 35.0],
    [46.0, 26.0], [49.5, 16.0], [50.5, 6.0],
])
_STEP_MM = 0.25
# sulci are carved lateral of this |x|; medial of it lies the interhemispheric fissure
_MEDIAL_X_MM = 1.0
_MAX_DEPTH_X_MM = 18.0
# the visible line of a sulcus on the medial surface, used to measure its length
LENGTH_LINE_X_MM = 4.0


@functools.lru_cache(maxsize=1)
def base_arc() -> np.ndarray:
    """(n, 2) points (y, z) of the base arc, ``_STEP_MM`` apart along it."""
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(_BASE_ARC_YZ, axis=0), axis=1))]
    spline = interpolate.CubicSpline(chord, _BASE_ARC_YZ, bc_type="natural")
    dense = spline(np.linspace(0.0, chord[-1], 4000))
    arclength = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))]
    samples = np.arange(0.0, arclength[-1], _STEP_MM)
    return np.stack([np.interp(samples, arclength, dense[:, k]) for k in range(2)], axis=1)


def base_arc_length_mm() -> float:
    """Arc length of the base arc (the longest course possible, before offsets)."""
    return float((len(base_arc()) - 1) * _STEP_MM)


@dataclass(frozen=True)
class PcsCourse:
    """One sulcus of one hemisphere, in template millimetres.

    Args:
        hemisphere: ``"L"`` or ``"R"``.
        length_mm: length along the base arc.
        start_mm: where along the base arc it begins (0 = posterior end).
        offset_mm: constant shift along the arc's normal (positive dorsal).
        wave_mm, wavelength_mm, phase: a sinusoidal wander along the normal.
        tilt: dz/d|x| of the sheet (its slope in coronal view).
        depth_mm: |x| reached by the fundus in the sulcus' middle.
        half_width_mm: half the width of its CSF core.
        halo_mm: grey matter lining the walls and fundus.
    """

    hemisphere: str
    length_mm: float
    start_mm: float
    offset_mm: float
    wave_mm: float
    wavelength_mm: float
    phase: float
    tilt: float
    depth_mm: float
    half_width_mm: float
    halo_mm: float

    @property
    def side(self) -> float:
        return -1.0 if self.hemisphere == "L" else 1.0

    def centreline(self) -> np.ndarray:
        """(n, 2) points (y, z) of the course in the plane |x| = 0, ``_STEP_MM`` apart."""
        arc = base_arc()
        first = int(round(self.start_mm / _STEP_MM))
        count = max(2, int(round(self.length_mm / _STEP_MM)) + 1)
        idx = np.clip(np.arange(first, first + count), 0, len(arc) - 1)
        points = arc[idx]
        tangent = np.gradient(arc, axis=0)[idx]
        tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
        # the tangent runs forward and down, so (-dz, dy) points away from the
        # corpus callosum: dorsal at the back, anterior at the front
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
        s = np.arange(count) * _STEP_MM
        shift = self.offset_mm + self.wave_mm * np.sin(2 * np.pi * s / self.wavelength_mm
                                                        + self.phase)
        return points + shift[:, None] * normal

    def depth_profile(self, s_mm: np.ndarray) -> np.ndarray:
        """|x| of the fundus at distance ``s_mm`` along the course: shallower at the ends."""
        from_end = np.minimum(s_mm, self.length_mm - s_mm)
        taper = np.clip(from_end / 8.0, 0.0, 1.0)
        shallow = min(5.0, self.depth_mm)
        return shallow + (self.depth_mm - shallow) * taper * (2 - taper)

    def length_line(self) -> np.ndarray:
        """(n, 3) mm points where the sulcus cuts the plane |x| = ``LENGTH_LINE_X_MM``."""
        yz = self.centreline()
        x = self.side * LENGTH_LINE_X_MM
        return np.column_stack([np.full(len(yz), x), yz[:, 0],
                                yz[:, 1] + self.tilt * LENGTH_LINE_X_MM])


def draw_course(rng: np.random.Generator, hemisphere: str, length_mm: float) -> PcsCourse:
    """A random course of ``length_mm`` along the base arc (clipped to the arc)."""
    if hemisphere not in HEMISPHERES:
        raise ValueError(f"hemisphere must be 'L' or 'R', not {hemisphere!r}")
    total = base_arc_length_mm()
    length = float(min(length_mm, total))
    start = float(rng.uniform(0.0, total - length))
    return PcsCourse(
        hemisphere=hemisphere,
        length_mm=length,
        start_mm=start,
        # ranges chosen so the sheet stays inside the Harvard-Oxford paracingulate
        # gyrus, which thins laterally and dorsally (tested)
        offset_mm=float(rng.uniform(-1.5, 1.0)),
        wave_mm=float(rng.uniform(0.0, 1.5)),
        wavelength_mm=float(rng.uniform(25.0, 50.0)),
        phase=float(rng.uniform(0.0, 2 * np.pi)),
        tilt=float(rng.uniform(-0.25, 0.1)),
        depth_mm=float(rng.uniform(8.0, 11.0)),
        half_width_mm=float(rng.uniform(0.75, 1.15)),
        halo_mm=float(rng.uniform(1.5, 2.5)),
    )


@dataclass(frozen=True)
class CarvedLabel:
    """Voxels turned from tissue into CSF: ``mask`` over ``levels[box]``."""

    box: tuple[slice, slice, slice]
    mask: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())


def carve(levels: np.ndarray, affine: np.ndarray, course: PcsCourse) -> CarvedLabel:
    """Cut ``course`` into ``levels`` (in place); the label is exactly the carved voxels.

    Around the sheet the levels are lowered to CSF in its core, to grey matter
    in a lining of ``halo_mm`` (a sulcus has cortex on both walls and at its
    fundus), and left alone beyond; nothing is ever raised.
    """
    centre = course.centreline()
    reach = course.half_width_mm + course.halo_mm + 2.0
    tilt_span = abs(course.tilt) * _MAX_DEPTH_X_MM
    lo = np.array([min(0.0, course.side * _MAX_DEPTH_X_MM), centre[:, 0].min() - reach,
                   centre[:, 1].min() - reach - tilt_span])
    hi = np.array([max(0.0, course.side * _MAX_DEPTH_X_MM), centre[:, 0].max() + reach,
                   centre[:, 1].max() + reach + tilt_span])
    box = _box_slices(lo, hi, affine, levels.shape)
    grid = _box_mm(box, affine)
    x_abs = np.abs(grid[0])

    tree = cKDTree(centre)
    query = np.stack([grid[1].ravel(), (grid[2] - course.tilt * x_abs).ravel()], axis=1)
    in_plane, nearest = tree.query(query)
    in_plane = in_plane.reshape(x_abs.shape)
    s_mm = (nearest * _STEP_MM).reshape(x_abs.shape)
    beyond_fundus = np.maximum(0.0, x_abs - course.depth_profile(s_mm))
    distance = np.hypot(in_plane, beyond_fundus)

    h, ramp, halo = course.half_width_mm, 0.7, course.halo_mm
    ceiling = np.interp(distance, [h, h + ramp, h + ramp + halo, h + 2 * ramp + halo],
                        [1.0, 2.0, 2.0, 5.0])
    # only this hemisphere, lateral of the fissure
    # flat ends: nothing beyond the course's first and last points, so the
    # label is exactly as long as the course
    nearest = nearest.reshape(x_abs.shape)
    ceiling[(nearest == 0) | (nearest == len(centre) - 1)] = np.inf
    ceiling[x_abs < _MEDIAL_X_MM] = np.inf
    ceiling[np.sign(grid[0]) != course.side] = np.inf
    region = levels[box]
    before = region.copy()
    np.minimum(region, ceiling.astype(region.dtype), out=region)
    mask = (before > 1.5) & (region <= 1.5)
    return CarvedLabel(box, mask)


def smooth_out_band(levels: np.ndarray, affine: np.ndarray, radius_mm: float = 4.0
                    ) -> np.ndarray:
    """``levels`` with the sulci of the paracingulate band closed (filled with tissue).

    A source brain may already carry a sulcus where the synthetic PCS goes (the
    single subject Colin27 does); closing them first makes "absent" truly
    absent. The closing works in sagittal planes with a disc of 3 mm radius: a
    sulcus is a thin dark line there and disappears, while the interhemispheric
    fissure fills whole planes and stays. Only a tube of ``radius_mm`` around
    the base arc changes, fading out over 1.5 mm.
    """
    out = levels.copy()
    arc = base_arc()
    lo = np.array([-_MAX_DEPTH_X_MM, arc[:, 0].min() - radius_mm - 6,
                   arc[:, 1].min() - radius_mm - 6])
    hi = np.array([_MAX_DEPTH_X_MM, arc[:, 0].max() + radius_mm + 6,
                   arc[:, 1].max() + radius_mm + 6])
    box = _box_slices(lo, hi, affine, levels.shape)
    grid = _box_mm(box, affine)
    in_plane, _ = cKDTree(arc).query(np.stack([grid[1].ravel(), grid[2].ravel()], axis=1))
    weight = np.clip((radius_mm - in_plane.reshape(grid[1].shape)) / 1.5, 0.0, 1.0)
    region = out[box]
    yy, zz = np.mgrid[-3:4, -3:4]
    disc = (yy**2 + zz**2 <= 9)[None, :, :]
    closed = ndimage.grey_closing(region, footprint=disc)
    region += (weight * (closed - region) * (region > 0.5)).astype(region.dtype)
    return out


def _box_slices(lo_mm: np.ndarray, hi_mm: np.ndarray, affine: np.ndarray,
                shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    """Voxel slices covering the mm box [lo, hi] on a grid with an axis-aligned ``affine``."""
    inv = np.linalg.inv(affine)
    corners = np.array([[a, b, c] for a in (lo_mm[0], hi_mm[0]) for b in (lo_mm[1], hi_mm[1])
                        for c in (lo_mm[2], hi_mm[2])])
    vox = corners @ inv[:3, :3].T + inv[:3, 3]
    first = np.clip(np.floor(vox.min(0)).astype(int), 0, np.array(shape))
    last = np.clip(np.ceil(vox.max(0)).astype(int) + 1, 0, np.array(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(first, last, strict=True))  # type: ignore[return-value]


def _box_mm(box: tuple[slice, slice, slice], affine: np.ndarray) -> list[np.ndarray]:
    """x, y, z mm of every voxel of ``box`` (broadcast arrays of the box shape)."""
    idx = np.meshgrid(*[np.arange(sl.start, sl.stop, dtype=np.float32) for sl in box],
                      indexing="ij")
    return [affine[k, 0] * idx[0] + affine[k, 1] * idx[1] + affine[k, 2] * idx[2]
            + affine[k, 3] for k in range(3)]
