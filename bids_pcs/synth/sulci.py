"""The PCS's neighbours: sulci that are carved but never labelled (distractors).

A network that only learns "a dark curve above the cingulate sulcus" should
not pass the benchmark, so the medial frontal wall carries, per hemisphere:

- the **cingulate sulcus**, carved anew where the base one was closed, with a
  course, depth and width of its own and interruptions (gyral bridges);
- sometimes an **intralimbic sulcus**: short and shallow, inside the cingulate
  gyrus, parallel to the cingulate sulcus;
- usually a **superior rostral sulcus** below the genu of the corpus callosum;
- a few short, shallow **dimples** of the medial superior frontal gyrus,
  dorsal of the paracingulate band, in any orientation;
- (drawn in :mod:`bids_pcs.synth.population`) a **short PCS-like sulcus** in an
  absent hemisphere: shorter than 20 mm, so the protocol calls it absent.

Every distractor keeps its CSF core a bank and ``min_gap_mm`` away from the
PCS's and from each other's, so that no label voxel is ever a distractor's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from bids_pcs.synth.pcs_geometry import (
    CINGULATE_ARC,
    PCS_ARC,
    SUPERIOR_ROSTRAL_ARC,
    SulcusCourse,
    SulcusShape,
    arc_length_mm,
    arc_normals,
    dense_arc,
    draw_course,
    min_distance_mm,
)

KINDS = ("pcs", "short_pcs", "cingulate", "intralimbic", "superior_rostral", "dimple")
KIND_NAMES = {"pcs": "paracingulate sulcus (label)",
              "short_pcs": "PCS-like sulcus < 20 mm (absent, no label)",
              "cingulate": "cingulate sulcus", "intralimbic": "intralimbic sulcus",
              "superior_rostral": "superior rostral sulcus", "dimple": "medial frontal dimple"}


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


CINGULATE_SHAPE = SulcusShape(
    offset_mm=(-1.5, 1.5), wave_mm=(0.0, 2.0), wavelength_mm=(25.0, 60.0), tilt=(-0.2, 0.1),
    curl=(-0.02, 0.02), depth_mm=(11.0, 16.0), half_width_mm=(0.5, 1.1), bank_mm=(1.8, 2.8),
    variation=0.3, width_variation=0.5, collapse=0.4,
    min_depth_mm=3.0, end_narrowing=0.5, segments=(0.6, 0.3, 0.1), bridge_mm=(3.0, 8.0),
    min_segment_mm=8.0)
INTRALIMBIC_SHAPE = SulcusShape(
    offset_mm=(-6.5, -4.5), wave_mm=(0.0, 1.0), wavelength_mm=(20.0, 40.0), tilt=(-0.15, 0.1),
    depth_mm=(3.0, 6.0), half_width_mm=(0.4, 0.8), bank_mm=(1.5, 2.5), variation=0.3,
    width_variation=0.4, collapse=0.3,
    min_depth_mm=1.5, end_narrowing=0.5)
SUPERIOR_ROSTRAL_SHAPE = SulcusShape(
    offset_mm=(-1.5, 1.5), wave_mm=(0.0, 1.5), wavelength_mm=(20.0, 40.0), tilt=(-0.15, 0.15),
    curl=(-0.02, 0.02), depth_mm=(6.0, 10.0), half_width_mm=(0.5, 1.0), bank_mm=(1.8, 2.8),
    variation=0.3, width_variation=0.5, collapse=0.4,
    min_depth_mm=2.0, end_narrowing=0.5)
DIMPLE_SHAPE = SulcusShape(
    offset_mm=(0.0, 0.0), wave_mm=(0.0, 0.5), wavelength_mm=(10.0, 20.0), tilt=(-0.2, 0.2),
    depth_mm=(2.0, 5.0), half_width_mm=(0.4, 0.9), bank_mm=(1.5, 2.5), variation=0.2,
    width_variation=0.3, collapse=0.3,
    min_depth_mm=1.0, end_narrowing=0.6)


@dataclass(frozen=True)
class DistractorOptions:
    """Which neighbouring sulci are carved and how (see each field's ``doc`` metadata)."""

    cingulate: bool = field(default=True, metadata=_doc(
        "carve a cingulate sulcus of the participant's own (needed with base_sulci = "
        "'medial_wall', which removes the base brain's)"))
    cingulate_shape: SulcusShape = field(default=CINGULATE_SHAPE, metadata=_doc(
        "ranges of the cingulate sulcus' course (offset from its arc, depth, width, banks, "
        "interruptions)"))
    intralimbic_probability: float = field(default=0.5, metadata=_doc(
        "chance of an intralimbic sulcus inside the cingulate gyrus"))
    intralimbic_length_mm: tuple[float, float] = field(default=(8.0, 25.0), metadata=_doc(
        "its length"))
    intralimbic_shape: SulcusShape = field(default=INTRALIMBIC_SHAPE, metadata=_doc(
        "ranges of its course (offset from the cingulate sulcus, towards the corpus callosum)"))
    superior_rostral_probability: float = field(default=0.9, metadata=_doc(
        "chance of a superior rostral sulcus below the genu"))
    superior_rostral_length_mm: tuple[float, float] = field(default=(15.0, 27.0),
                                                            metadata=_doc("its length"))
    superior_rostral_shape: SulcusShape = field(default=SUPERIOR_ROSTRAL_SHAPE,
                                                metadata=_doc("ranges of its course"))
    dimples: tuple[int, int] = field(default=(0, 3), metadata=_doc(
        "fewest and most medial frontal dimples per hemisphere"))
    dimple_length_mm: tuple[float, float] = field(default=(4.0, 12.0), metadata=_doc(
        "length of a dimple"))
    dimple_offset_mm: tuple[float, float] = field(default=(7.0, 16.0), metadata=_doc(
        "how far dorsal (or anterior) of the PCS arc a dimple lies"))
    dimple_shape: SulcusShape = field(default=DIMPLE_SHAPE, metadata=_doc(
        "ranges of a dimple's depth, width and banks"))
    min_gap_mm: float = field(default=1.0, metadata=_doc(
        "space kept between the CSF cores of two sulci beyond the wider bank (mm)"))

    @property
    def any(self) -> bool:
        return (self.cingulate or self.intralimbic_probability > 0
                or self.superior_rostral_probability > 0 or self.dimples[1] > 0)


NO_DISTRACTORS = DistractorOptions(cingulate=False, intralimbic_probability=0.0,
                                   superior_rostral_probability=0.0, dimples=(0, 0))


def draw_distractors(rng: np.random.Generator, hemisphere: str, options: DistractorOptions,
                     placed: list[SulcusCourse]) -> list[tuple[str, SulcusCourse]]:
    """The distractor sulci of one hemisphere, clear of the courses in ``placed``.

    Args:
        rng: draws every choice; nothing is drawn when ``options`` is all off.
        hemisphere: ``"L"`` or ``"R"``.
        options: which sulci and their ranges.
        placed: courses already carved in this hemisphere (the PCS); the new
            ones are appended as they are drawn.
    """
    out: list[tuple[str, SulcusCourse]] = []
    placed = list(placed)

    def keep(kind: str, course: SulcusCourse | None) -> SulcusCourse | None:
        if course is not None:
            out.append((kind, course))
            placed.append(course)
        return course

    cingulate = None
    if options.cingulate:
        total = arc_length_mm(CINGULATE_ARC)
        trim_start, trim_end = rng.uniform(0.0, 6.0, size=2)
        course = draw_course(rng, hemisphere, total - trim_start - trim_end,
                             options.cingulate_shape, arc=CINGULATE_ARC,
                             start_range=(trim_start, trim_start))
        cingulate = keep("cingulate", _clear_of(course, placed, options.min_gap_mm))
    if options.intralimbic_probability > 0 and rng.uniform() < options.intralimbic_probability:
        total = arc_length_mm(CINGULATE_ARC)
        length = float(rng.uniform(*options.intralimbic_length_mm))
        # above the body and genu of the corpus callosum: the first 60 % of the arc
        course = draw_course(rng, hemisphere, length, options.intralimbic_shape,
                             arc=CINGULATE_ARC, start_range=(0.0, 0.6 * total - length))
        if cingulate is not None:
            course = dataclasses.replace(course, offset_mm=course.offset_mm
                                         + cingulate.offset_mm)
        keep("intralimbic", _clear_of(course, placed, options.min_gap_mm, max_shift_mm=2.0))
    if options.superior_rostral_probability > 0 \
            and rng.uniform() < options.superior_rostral_probability:
        length = float(rng.uniform(*options.superior_rostral_length_mm))
        course = draw_course(rng, hemisphere, length, options.superior_rostral_shape,
                             arc=SUPERIOR_ROSTRAL_ARC)
        keep("superior_rostral", _clear_of(course, placed, options.min_gap_mm))
    low, high = options.dimples
    count = int(rng.integers(low, high + 1)) if high > 0 else 0
    for _ in range(count):
        for _attempt in range(5):
            course = _draw_dimple(rng, hemisphere, options)
            if all(_gap(course, other) >= options.min_gap_mm for other in placed):
                keep("dimple", course)
                break
    return out


def _draw_dimple(rng: np.random.Generator, hemisphere: str, options: DistractorOptions
                 ) -> SulcusCourse:
    arc, normals = dense_arc(PCS_ARC), arc_normals(PCS_ARC)
    at = int(rng.integers(len(arc)))
    centre = arc[at] + float(rng.uniform(*options.dimple_offset_mm)) * normals[at]
    angle = float(rng.uniform(0.0, np.pi))
    length = float(rng.uniform(*options.dimple_length_mm))
    half = 0.5 * length * np.array([np.cos(angle), np.sin(angle)])
    ends = ((float(centre[0] - half[0]), float(centre[1] - half[1])),
            (float(centre[0] + half[0]), float(centre[1] + half[1])))
    return draw_course(rng, hemisphere, length, options.dimple_shape, arc=ends)


def _gap(a: SulcusCourse, b: SulcusCourse) -> float:
    """Space between two sulci's CSF cores beyond the wider bank (negative: too close).

    Two sulci closer than both banks share one thin gyrus of grey matter, as
    neighbouring sulci do; their CSF never meets.
    """
    reach = a.max_half_width_mm() + b.max_half_width_mm() + max(a.bank_mm, b.bank_mm)
    return min_distance_mm(a, b) - reach


def _clear_of(course: SulcusCourse, placed: list[SulcusCourse], min_gap_mm: float,
              max_shift_mm: float = 6.0) -> SulcusCourse | None:
    """``course`` moved towards the corpus callosum until it clears ``placed`` (or ``None``)."""
    shifted = 0.0
    for _ in range(8):
        worst = min((_gap(course, other) for other in placed), default=np.inf)
        if worst >= min_gap_mm:
            return course
        step = min_gap_mm - worst + 0.25
        if shifted + step > max_shift_mm:
            return None
        shifted += step
        course = dataclasses.replace(course, offset_mm=course.offset_mm - step)
    return None
