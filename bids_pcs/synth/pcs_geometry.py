"""Where the sulci of the medial frontal wall run, and carving them into a level map.

All coordinates here are template millimetres (MNI152NLin2009aSym, RAS).

The PCS runs on the medial surface of the frontal lobe, dorsal to and
roughly parallel with the cingulate sulcus, inside the paracingulate gyrus
(Harvard-Oxford cortical label 28). Every sulcus here is described the same
way: its *course* is a curve in the sagittal (y, z) plane, a stretch of a base
arc offset and waved by a few millimetres; the sulcus is the sheet swept by
that curve from the midline laterally to its fundus (tilted a little, as sulci
are in coronal view). Carving lowers the levels to CSF in the sheet's core and
to grey matter in a bank on both walls and at the fundus, so the fold is CSF
lined by cortex wherever it cuts white matter.

Base arcs (posterior to anterior):

- ``PCS_ARC``: the middle of the Harvard-Oxford paracingulate band at
  x = -5 mm (read off the atlas over the 2009a template), from above the
  anterior commissure forward and down around the genu of the corpus callosum;
- ``CINGULATE_ARC``: the cingulate sulcus as seen in sagittal slices of the
  2009a template and of Colin27 at |x| = 4 to 7 mm, from y = -25 mm (the crop
  boxes start at -16) around the genu to below it;
- ``SUPERIOR_ROSTRAL_ARC``: the superior rostral sulcus below the genu, read
  off the same slices (it lies at the lower edge of the crop boxes).

A course may be interrupted by gyral bridges: it is then two or three
segments, and its labelled length is the sum of the segments' lengths (as in
the Garrison et al. 2015 protocol).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import interpolate, ndimage
from scipy.spatial import cKDTree

from bids_pcs.config import HEMISPHERES

Points = tuple[tuple[float, float], ...]

# (y, z) mm of the middle of the paracingulate band, posterior to anterior
PCS_ARC: Points = (
    (4.0, 49.5), (10.0, 48.5), (20.0, 45.5), (30.0, 41.5), (39.0, 35.0),
    (46.0, 26.0), (49.5, 16.0), (50.5, 6.0),
)
CINGULATE_ARC: Points = (
    (-25.0, 40.0), (-10.0, 40.5), (0.0, 40.0), (10.0, 39.0), (20.0, 36.0), (30.0, 31.0),
    (38.0, 24.0), (43.0, 15.0), (45.0, 6.0), (45.5, 1.0),
)
SUPERIOR_ROSTRAL_ARC: Points = ((38.0, -6.0), (47.0, -5.5), (56.0, -4.5), (65.0, -3.5))
_STEP_MM = 0.25
# sulci are carved lateral of this |x|; medial of it lies the interhemispheric fissure
_MEDIAL_X_MM = 1.0
_MAX_DEPTH_X_MM = 18.0
# the visible line of a sulcus on the medial surface, used to measure its length
LENGTH_LINE_X_MM = 4.0
# partial-volume ramp (mm) between CSF and grey matter and at the outer edge of a bank
_RAMP_MM = 0.7
# how far the depth tapers at each end of a segment
_TAPER_MM = 8.0


@functools.lru_cache(maxsize=64)
def dense_arc(points: Points) -> np.ndarray:
    """(n, 2) points (y, z) of the spline through ``points``, ``_STEP_MM`` apart along it."""
    control = np.asarray(points, dtype=float)
    chord = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(control, axis=0), axis=1))]
    spline = interpolate.CubicSpline(chord, control, bc_type="natural")
    dense = spline(np.linspace(0.0, chord[-1], 4000))
    arclength = np.r_[0.0, np.cumsum(np.linalg.norm(np.diff(dense, axis=0), axis=1))]
    samples = np.arange(0.0, arclength[-1], _STEP_MM)
    out = np.stack([np.interp(samples, arclength, dense[:, k]) for k in range(2)], axis=1)
    out.setflags(write=False)
    return out


def base_arc() -> np.ndarray:
    """(n, 2) points (y, z) of the PCS base arc, ``_STEP_MM`` apart along it."""
    return dense_arc(PCS_ARC)


def arc_length_mm(points: Points = PCS_ARC) -> float:
    """Arc length of a base arc (the longest course possible along it, before offsets)."""
    return float((len(dense_arc(points)) - 1) * _STEP_MM)


def base_arc_length_mm() -> float:
    """Arc length of the PCS base arc."""
    return arc_length_mm(PCS_ARC)


def arc_normals(points: Points) -> np.ndarray:
    """(n, 2) unit normals of a dense arc, pointing away from the corpus callosum.

    The arcs run forward and down, so (-dz, dy) points dorsal at the back and
    anterior at the front.
    """
    arc = dense_arc(points)
    tangent = np.gradient(arc, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True)
    return np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class SulcusShape:
    """Ranges from which a sulcus' course is drawn (uniform within each; see ``doc`` metadata)."""

    offset_mm: tuple[float, float] = field(default=(-1.5, 1.0), metadata=_doc(
        "constant shift from the base arc along its normal (mm, positive dorsal)"))
    wave_mm: tuple[float, float] = field(default=(0.0, 1.5), metadata=_doc(
        "amplitude of a sinusoidal wander along the normal"))
    wavelength_mm: tuple[float, float] = field(default=(25.0, 50.0), metadata=_doc(
        "its wavelength"))
    tilt: tuple[float, float] = field(default=(-0.25, 0.1), metadata=_doc(
        "dz/d|x| of the sheet (its slope in coronal view)"))
    curl: tuple[float, float] = field(default=(0.0, 0.0), metadata=_doc(
        "d2z/d|x|2 / 2 of the sheet (mm per mm2: how it bends in coronal view)"))
    depth_mm: tuple[float, float] = field(default=(8.0, 11.0), metadata=_doc(
        "|x| reached by the fundus away from the ends"))
    half_width_mm: tuple[float, float] = field(default=(0.75, 1.15), metadata=_doc(
        "half the width of the CSF core"))
    bank_mm: tuple[float, float] = field(default=(1.5, 2.5), metadata=_doc(
        "grey matter lining each wall and the fundus (it takes the place of white matter)"))
    variation: float = field(default=0.0, metadata=_doc(
        "relative amplitude of the smooth change of depth along the course "
        "(0: constant; 0.3: up to +-30 %)"))
    width_variation: float = field(default=0.0, metadata=_doc(
        "the same for the width of the CSF core (where it is low the banks nearly touch)"))
    collapse: float = field(default=0.0, metadata=_doc(
        "share of the CSF core's width lost from the opening to the fundus (deep parts of "
        "a sulcus are often closed, seen only by partial volume)"))
    min_depth_mm: float = field(default=5.0, metadata=_doc(
        "depth at the very ends of a segment (the depth tapers to it over 8 mm)"))
    end_narrowing: float = field(default=0.0, metadata=_doc(
        "share of the width lost at the ends of a segment"))
    segments: tuple[float, float, float] = field(default=(1.0, 0.0, 0.0), metadata=_doc(
        "probabilities of one, two and three segments (interruptions by gyral bridges; the "
        "labelled length is the sum of the segments)"))
    bridge_mm: tuple[float, float] = field(default=(3.0, 8.0), metadata=_doc(
        "length of each gyral bridge along the course"))
    min_segment_mm: float = field(default=6.0, metadata=_doc(
        "shortest segment of an interrupted course"))


@dataclass(frozen=True)
class SulcusCourse:
    """One sulcus of one hemisphere, in template millimetres.

    Args:
        hemisphere: ``"L"`` or ``"R"``.
        length_mm: extent along the base arc, gyral bridges included.
        start_mm: where along the base arc it begins (0 = posterior end).
        offset_mm, wave_mm, wavelength_mm, phase: shift and wander along the normal.
        tilt: dz/d|x| of the sheet.
        curl: its bend in coronal view (z += curl |x|^2).
        depth_mm: |x| reached by the fundus away from the ends.
        half_width_mm: half the width of the CSF core.
        bank_mm: grey matter lining the walls and the fundus.
        arc: control points of the base arc (``PCS_ARC`` by default).
        segment_fractions: shares of the labelled length in each segment
            (one segment when empty).
        bridge_widths_mm: length of the gyral bridge after each segment but the last.
        depth_terms, width_terms: (relative amplitude, wavelength mm, phase)
            of sinusoids that change depth and width along the course.
        min_depth_mm: depth at the ends of each segment.
        end_narrowing: share of the width lost at the ends of each segment.
        collapse: share of the width lost from the opening to the fundus.
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
    bank_mm: float
    arc: Points = PCS_ARC
    segment_fractions: tuple[float, ...] = ()
    bridge_widths_mm: tuple[float, ...] = ()
    depth_terms: tuple[tuple[float, float, float], ...] = ()
    width_terms: tuple[tuple[float, float, float], ...] = ()
    min_depth_mm: float = 5.0
    end_narrowing: float = 0.0
    curl: float = 0.0
    collapse: float = 0.0

    @property
    def side(self) -> float:
        return -1.0 if self.hemisphere == "L" else 1.0

    @property
    def bridge_total_mm(self) -> float:
        return float(sum(self.bridge_widths_mm))

    @property
    def labelled_length_mm(self) -> float:
        """Length of the sulcus itself along the arc: the extent less its bridges."""
        return self.length_mm - sum(self.bridge_widths_mm)

    def segments(self) -> list[tuple[float, float]]:
        """(start, end) mm along the course of each segment."""
        if not self.bridge_widths_mm:
            return [(0.0, self.length_mm)]
        labelled = self.labelled_length_mm
        out, position = [], 0.0
        for k, fraction in enumerate(self.segment_fractions):
            end = position + fraction * labelled
            out.append((position, end))
            position = end + (self.bridge_widths_mm[k] if k < len(self.bridge_widths_mm)
                              else 0.0)
        return out

    def centreline(self) -> np.ndarray:
        """(n, 2) points (y, z) of the course in the plane |x| = 0, ``_STEP_MM`` apart."""
        arc = dense_arc(self.arc)
        first = int(round(self.start_mm / _STEP_MM))
        count = max(2, int(round(self.length_mm / _STEP_MM)) + 1)
        idx = np.clip(np.arange(first, first + count), 0, len(arc) - 1)
        points = arc[idx]
        normal = arc_normals(self.arc)[idx]
        s = np.arange(count) * _STEP_MM
        shift = self.offset_mm + self.wave_mm * np.sin(2 * np.pi * s / self.wavelength_mm
                                                        + self.phase)
        return points + shift[:, None] * normal

    def in_segments(self, s_mm: np.ndarray) -> np.ndarray:
        """Whether points at ``s_mm`` along the course lie on a segment (not on a bridge)."""
        inside = np.ones(np.shape(s_mm), dtype=bool)
        for (_, end), (start, _) in zip(self.segments()[:-1], self.segments()[1:],
                                        strict=True):
            inside &= ~((s_mm > end) & (s_mm < start))
        return inside

    def _from_segment_end(self, s_mm: np.ndarray) -> np.ndarray:
        from_end = np.minimum(s_mm, self.length_mm - s_mm)
        for (_, end), (start, _) in zip(self.segments()[:-1], self.segments()[1:],
                                        strict=True):
            gap = np.where(s_mm <= end, end - s_mm, np.where(s_mm >= start, s_mm - start, 0.0))
            from_end = np.minimum(from_end, gap)
        return from_end

    def depth_profile(self, s_mm: np.ndarray) -> np.ndarray:
        """|x| of the fundus at distance ``s_mm`` along the course: shallower at the ends."""
        taper = np.clip(self._from_segment_end(s_mm) / _TAPER_MM, 0.0, 1.0)
        shallow = min(self.min_depth_mm, self.depth_mm)
        deep = self.depth_mm
        if self.depth_terms:
            deep = self.depth_mm * (1.0 + _sinusoids(self.depth_terms, s_mm))
        return shallow + (deep - shallow) * taper * (2 - taper)

    def half_width_at(self, s_mm: np.ndarray) -> np.ndarray | float:
        """Half width of the CSF core at ``s_mm`` (a number when it does not vary)."""
        if not self.width_terms and self.end_narrowing <= 0:
            return self.half_width_mm
        width = self.half_width_mm * (1.0 + _sinusoids(self.width_terms, s_mm))
        width = np.maximum(width, 0.0)
        if self.end_narrowing > 0:
            taper = np.clip(self._from_segment_end(s_mm) / _TAPER_MM, 0.0, 1.0)
            width = width * (1.0 - self.end_narrowing * (1.0 - taper))
        return width

    def sheet_z_mm(self, x_abs):
        """How far the sheet has risen (mm) at |x| = ``x_abs`` from the midline."""
        if self.curl == 0:
            return self.tilt * x_abs
        return self.tilt * x_abs + self.curl * x_abs * x_abs

    def max_half_width_mm(self) -> float:
        return self.half_width_mm * (1.0 + sum(abs(a) for a, _, _ in self.width_terms))

    def length_lines(self) -> list[np.ndarray]:
        """Per segment, (n, 3) mm points where it cuts the plane |x| = ``LENGTH_LINE_X_MM``."""
        yz = self.centreline()
        x = self.side * LENGTH_LINE_X_MM
        points = np.column_stack([np.full(len(yz), x), yz[:, 0],
                                  yz[:, 1] + self.sheet_z_mm(LENGTH_LINE_X_MM)])
        if not self.bridge_widths_mm:
            return [points]
        s = np.arange(len(yz)) * _STEP_MM
        lines = []
        for k, (start, end) in enumerate(self.segments()):
            last = k == len(self.bridge_widths_mm)
            inside = (s >= start - 1e-9) & ((s <= end + 1e-9) | last)
            if inside.sum() >= 2:
                lines.append(points[inside])
        return lines


def _sinusoids(terms: Sequence[tuple[float, float, float]], s_mm: np.ndarray) -> np.ndarray:
    out = np.zeros(np.shape(s_mm))
    for amplitude, wavelength, phase in terms:
        out = out + amplitude * np.sin(2 * np.pi * s_mm / wavelength + phase)
    return out


def draw_course(rng: np.random.Generator, hemisphere: str, length_mm: float,
                shape: SulcusShape | None = None, arc: Points = PCS_ARC,
                start_range: tuple[float, float] | None = None) -> SulcusCourse:
    """A random course whose segments sum to ``length_mm`` along ``arc`` (clipped to it).

    Args:
        rng: draws every random choice.
        hemisphere: ``"L"`` or ``"R"``.
        length_mm: labelled length (gyral bridges come on top).
        shape: ranges to draw from (the default keeps the sheet inside the
            Harvard-Oxford paracingulate gyrus, which thins laterally and
            dorsally; tested).
        arc: control points of the base arc.
        start_range: where along the arc the course may begin (mm); anywhere
            it fits by default.
    """
    if hemisphere not in HEMISPHERES:
        raise ValueError(f"hemisphere must be 'L' or 'R', not {hemisphere!r}")
    shape = shape or SulcusShape()
    total = arc_length_mm(arc)
    length = float(min(length_mm, total))
    low, high = start_range if start_range is not None else (0.0, total)
    start = float(rng.uniform(low, max(low, min(high, total - length))))
    course = SulcusCourse(
        hemisphere=hemisphere,
        length_mm=length,
        start_mm=start,
        offset_mm=float(rng.uniform(*shape.offset_mm)),
        wave_mm=float(rng.uniform(*shape.wave_mm)),
        wavelength_mm=float(rng.uniform(*shape.wavelength_mm)),
        phase=float(rng.uniform(0.0, 2 * np.pi)),
        tilt=float(rng.uniform(*shape.tilt)),
        depth_mm=float(rng.uniform(*shape.depth_mm)),
        half_width_mm=float(rng.uniform(*shape.half_width_mm)),
        bank_mm=float(rng.uniform(*shape.bank_mm)),
        arc=arc,
        min_depth_mm=shape.min_depth_mm,
        end_narrowing=shape.end_narrowing,
        collapse=shape.collapse,
    )
    changes: dict = {}
    if shape.variation > 0:
        changes["depth_terms"] = _draw_terms(rng, shape.variation)
    if shape.width_variation > 0:
        changes["width_terms"] = _draw_terms(rng, shape.width_variation)
    if shape.curl != (0.0, 0.0):
        changes["curl"] = float(rng.uniform(*shape.curl))
    if shape.segments[0] < 1.0:
        fractions, bridges = _draw_segments(rng, length, shape)
        if bridges:
            extent = min(total, length + sum(bridges))
            changes.update(segment_fractions=fractions, bridge_widths_mm=bridges,
                           length_mm=extent, start_mm=min(start, total - extent))
    if changes:
        import dataclasses

        course = dataclasses.replace(course, **changes)
    return course


def _draw_terms(rng: np.random.Generator, variation: float
                ) -> tuple[tuple[float, float, float], ...]:
    """Two sinusoids (wavelengths 8-35 mm) whose amplitudes sum to at most ``variation``."""
    weights = rng.dirichlet((2.0, 2.0))
    return tuple((float(variation * w), float(rng.uniform(8.0, 35.0)),
                  float(rng.uniform(0.0, 2 * np.pi))) for w in weights)


def _draw_segments(rng: np.random.Generator, length_mm: float, shape: SulcusShape
                   ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    p = np.asarray(shape.segments, dtype=float)
    count = int(rng.choice(3, p=p / p.sum())) + 1
    # no segment shorter than min_segment_mm: fewer segments on a short sulcus
    count = max(1, min(count, int(length_mm // shape.min_segment_mm)))
    if count == 1:
        return (), ()
    free = length_mm - count * shape.min_segment_mm
    shares = rng.dirichlet(np.full(count, 2.0))
    fractions = tuple(float((shape.min_segment_mm + free * w) / length_mm) for w in shares)
    bridges = tuple(float(rng.uniform(*shape.bridge_mm)) for _ in range(count - 1))
    return fractions, bridges


def min_distance_mm(a: SulcusCourse, b: SulcusCourse) -> float:
    """Closest approach of two courses' centrelines in the sagittal plane (mm)."""
    return float(cKDTree(a.centreline()).query(b.centreline())[0].min())


@dataclass(frozen=True)
class CarvedLabel:
    """Voxels turned from tissue into CSF: ``mask`` over ``levels[box]``."""

    box: tuple[slice, slice, slice]
    mask: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(self.mask.sum())


def carve(levels: np.ndarray, affine: np.ndarray, course: SulcusCourse,
          blur_mm: float = 0.0) -> CarvedLabel:
    """Cut ``course`` into ``levels`` (in place); the label is exactly the carved voxels.

    Around the sheet the levels are lowered to CSF in its core, to grey matter
    in a bank of ``bank_mm`` (a sulcus has cortex on both walls and at its
    fundus, so grey matter takes the place of white matter there), and left
    alone beyond; nothing is ever raised. Gyral bridges and the ends are left
    untouched. With ``blur_mm`` the change is blurred (Gaussian s.d. in mm)
    to the softness of the base brain's own sulci (an average template's);
    the label stays the unblurred CSF core.
    """
    centre = course.centreline()
    reach = course.max_half_width_mm() + course.bank_mm + 2.0 + 2.5 * blur_mm
    tilt_span = abs(course.tilt) * _MAX_DEPTH_X_MM + abs(course.curl) * _MAX_DEPTH_X_MM ** 2
    lo = np.array([min(0.0, course.side * _MAX_DEPTH_X_MM), centre[:, 0].min() - reach,
                   centre[:, 1].min() - reach - tilt_span])
    hi = np.array([max(0.0, course.side * _MAX_DEPTH_X_MM), centre[:, 0].max() + reach,
                   centre[:, 1].max() + reach + tilt_span])
    box = box_slices(lo, hi, affine, levels.shape)
    grid = box_mm(box, affine)
    x_abs = np.abs(grid[0])

    tree = cKDTree(centre)
    query = np.stack([grid[1].ravel(), (grid[2] - course.sheet_z_mm(x_abs)).ravel()], axis=1)
    in_plane, nearest = tree.query(query)
    in_plane = in_plane.reshape(x_abs.shape)
    s_mm = (nearest * _STEP_MM).reshape(x_abs.shape)
    fundus = course.depth_profile(s_mm)
    beyond_fundus = np.maximum(0.0, x_abs - fundus)
    distance = np.hypot(in_plane, beyond_fundus)

    half_width = course.half_width_at(s_mm)
    if course.collapse > 0:
        half_width = half_width * (1.0 - course.collapse * np.clip(x_abs / fundus, 0.0, 1.0))
    ceiling = _bank_ceiling(distance, half_width, course.bank_mm)
    # flat ends: nothing beyond the course's first and last points, so the
    # label is exactly as long as the course
    nearest = nearest.reshape(x_abs.shape)
    ceiling[(nearest == 0) | (nearest == len(centre) - 1)] = np.inf
    if course.bridge_widths_mm:
        ceiling[~course.in_segments(s_mm)] = np.inf
    # only this hemisphere, lateral of the fissure
    ceiling[x_abs < _MEDIAL_X_MM] = np.inf
    ceiling[np.sign(grid[0]) != course.side] = np.inf
    region = levels[box]
    before = region.copy()
    np.minimum(region, ceiling.astype(region.dtype), out=region)
    mask = (before > 1.5) & (region <= 1.5)
    if blur_mm > 0:
        sigma = blur_mm / np.abs(np.diag(affine)[:3])
        region[...] = before + ndimage.gaussian_filter(region - before, sigma)
    return CarvedLabel(box, mask)


def _bank_ceiling(distance: np.ndarray, half_width, bank_mm: float) -> np.ndarray:
    """Highest level allowed at ``distance`` from the sheet: CSF, ramp, grey bank, ramp, free.

    Piecewise linear through (h, 1), (h + r, 2), (h + r + bank, 2), (h + 2r + bank, 5),
    computed as :func:`numpy.interp` does (``half_width`` may vary per voxel).
    """
    h = half_width
    knots = [h, h + _RAMP_MM, h + _RAMP_MM + bank_mm, h + 2 * _RAMP_MM + bank_mm]
    values = [1.0, 2.0, 2.0, 5.0]
    out = np.where(distance < knots[0], values[0], values[-1])
    for j in range(3):
        slope = (values[j + 1] - values[j]) / (knots[j + 1] - knots[j])
        inside = (distance >= knots[j]) & (distance < knots[j + 1])
        out = np.where(inside, slope * (distance - knots[j]) + values[j], out)
    return out


def smooth_out_band(levels: np.ndarray, affine: np.ndarray, radius_mm: float = 4.0
                    ) -> np.ndarray:
    """``levels`` with the sulci of the paracingulate band closed (the ``close`` rule).

    A source brain may already carry a sulcus where the synthetic PCS goes (the
    single subject Colin27 does); closing them first makes "absent" truly
    absent. The closing works in sagittal planes with a disc of 3 mm radius: a
    sulcus is a thin dark line there and disappears, while the interhemispheric
    fissure fills whole planes and stays. Only a tube of ``radius_mm`` around
    the base arc changes, fading out over 1.5 mm. Grey matter between white
    matter fingers closes to white matter as well.
    """
    out = levels.copy()
    arc = base_arc()
    lo = np.array([-_MAX_DEPTH_X_MM, arc[:, 0].min() - radius_mm - 6,
                   arc[:, 1].min() - radius_mm - 6])
    hi = np.array([_MAX_DEPTH_X_MM, arc[:, 0].max() + radius_mm + 6,
                   arc[:, 1].max() + radius_mm + 6])
    box = box_slices(lo, hi, affine, levels.shape)
    grid = box_mm(box, affine)
    in_plane, _ = cKDTree(arc).query(np.stack([grid[1].ravel(), grid[2].ravel()], axis=1))
    weight = np.clip((radius_mm - in_plane.reshape(grid[1].shape)) / 1.5, 0.0, 1.0)
    region = out[box]
    closed = ndimage.grey_closing(region, footprint=_SAGITTAL_DISC)
    region += (weight * (closed - region) * (region > 0.5)).astype(region.dtype)
    return out


# where a synthetic PCS (with its offsets, waves and banks) or cingulate sulcus may be carved
MEDIAL_WALL_TUBES: tuple[tuple[Points, float], ...] = ((PCS_ARC, 8.0), (CINGULATE_ARC, 4.5))
_FADE_MM = 1.5
_FADE_X_MM = 3.0
_MEDIAL_CORTEX_MM = 4.0


def close_medial_wall(levels: np.ndarray, affine: np.ndarray, *, grey_level: float = 2.0,
                      tubes: Sequence[tuple[Points, float]] = MEDIAL_WALL_TUBES) -> np.ndarray:
    """``levels`` with every sulcus inside ``tubes`` removed (the ``medial_wall`` rule).

    The same sagittal grey closing as :func:`smooth_out_band` (disc of 3 mm
    radius): a sulcus narrower than about 6 mm in a sagittal plane, its CSF
    and the grey banks on both walls, closes as if the two gyri had never
    been folded apart: white matter where the gyri had white cores, grey
    matter where the plane cuts the cortex of the medial surface, and the
    interhemispheric fissure (which fills whole planes) stays. Within 4 mm of
    the midline (the cortex of the medial surface) nothing rises above
    ``grey_level``, so the fissure stays lined with cortex. Each tube is
    (arc control points, radius mm), faded out over its last 1.5 mm in the
    sagittal plane and over the last 3 mm before |x| = 18 mm.
    """
    out = levels.copy()
    arcs = [(dense_arc(points), radius) for points, radius in tubes]
    reach = max(radius for _, radius in arcs) + 6
    every = np.concatenate([arc for arc, _ in arcs])
    lo = np.array([-_MAX_DEPTH_X_MM, every[:, 0].min() - reach, every[:, 1].min() - reach])
    hi = np.array([_MAX_DEPTH_X_MM, every[:, 0].max() + reach, every[:, 1].max() + reach])
    box = box_slices(lo, hi, affine, levels.shape)
    grid = box_mm(box, affine)
    plane = np.stack([grid[1].ravel(), grid[2].ravel()], axis=1)
    weight = np.zeros(grid[1].shape)
    for arc, radius in arcs:
        in_plane, _ = cKDTree(arc).query(plane)
        weight = np.maximum(weight, np.clip((radius - in_plane.reshape(weight.shape))
                                            / _FADE_MM, 0.0, 1.0))
    weight *= np.clip((_MAX_DEPTH_X_MM - np.abs(grid[0])) / _FADE_X_MM, 0.0, 1.0)
    region = out[box]
    closed = ndimage.grey_closing(region, footprint=_SAGITTAL_DISC)
    # the cortex lining the interhemispheric fissure stays grey: near the
    # midline a closed sulcus becomes grey matter at most
    cap = np.interp(np.abs(grid[0]), [_MEDIAL_CORTEX_MM, _MEDIAL_CORTEX_MM + 1.5],
                    [grey_level, np.inf]).astype(region.dtype)
    closed = np.maximum(region, np.minimum(closed, cap))
    region += (weight * (closed - region) * (region > 0.5)).astype(region.dtype)
    return out


_yy, _zz = np.mgrid[-3:4, -3:4]
_SAGITTAL_DISC = (_yy**2 + _zz**2 <= 9)[None, :, :]


def box_slices(lo_mm: np.ndarray, hi_mm: np.ndarray, affine: np.ndarray,
                shape: tuple[int, ...]) -> tuple[slice, slice, slice]:
    """Voxel slices covering the mm box [lo, hi] on a grid with an axis-aligned ``affine``."""
    inv = np.linalg.inv(affine)
    corners = np.array([[a, b, c] for a in (lo_mm[0], hi_mm[0]) for b in (lo_mm[1], hi_mm[1])
                        for c in (lo_mm[2], hi_mm[2])])
    vox = corners @ inv[:3, :3].T + inv[:3, 3]
    first = np.clip(np.floor(vox.min(0)).astype(int), 0, np.array(shape))
    last = np.clip(np.ceil(vox.max(0)).astype(int) + 1, 0, np.array(shape))
    return tuple(slice(int(a), int(b)) for a, b in zip(first, last, strict=True))  # type: ignore[return-value]


def box_mm(box: tuple[slice, slice, slice], affine: np.ndarray) -> list[np.ndarray]:
    """x, y, z mm of every voxel of ``box`` (broadcast arrays of the box shape)."""
    idx = np.meshgrid(*[np.arange(sl.start, sl.stop, dtype=np.float32) for sl in box],
                      indexing="ij")
    return [affine[k, 0] * idx[0] + affine[k, 1] * idx[1] + affine[k, 2] * idx[2]
            + affine[k, 3] for k in range(3)]
