"""Real anatomy that every synthetic head starts from, as tissue *levels*.

A source image is turned into a level map on the template grid (nilearn's
MNI152NLin2009aSym 1 mm grid, RAS): 0 air, 1 cerebrospinal fluid, 2 grey
matter, 3 white matter, above 3 fat and other bright tissue. Each participant
then maps levels to its own intensities (:mod:`bids_pcs.synth.contrast`), so
two sources of different scanners share one contrast model, and carving a
sulcus is a matter of lowering levels.

Sources:

- ``MNI152NLin2009aSym``: the template T1 that nilearn ships, blended per
  participant with the level map implied by nilearn's grey/white matter maps
  (so grey/white contrast and sharpness vary); its head (skull, scalp, neck)
  is Colin27's when ``mricron-data`` is installed, else a layered shell.
- ``Colin27``: the single-subject whole-head T1 of Debian's ``mricron-data``.

The base brains' own sulci where synthetic ones are carved are removed first
by a sagittal grey closing (a sulcus and its grey banks close as if the gyri
had never been folded apart), in one of two regions (``base_sulci``):
``pcs_band`` (the easy preset) is a 4 mm tube around the PCS arc;
``medial_wall`` (the benchmark) is 8 mm around the PCS arc and 4.5 mm around
the cingulate sulcus, whose place a synthetic cingulate sulcus then takes
(:func:`bids_pcs.synth.pcs_geometry.close_medial_wall`). Sulci outside those
tubes (the superior frontal gyrus' own dimples, say) stay as the base brain
has them: unlabelled, as they are not paracingulate sulci.

Each source is read once per process and kept (about 0.1 GB per rule).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_pcs.config import TEMPLATE_NAME
from bids_pcs.errors import InputDataError
from bids_pcs.synth import morphology, pcs_geometry

COLIN27_T1 = Path("/usr/share/mricron/templates/ch2.nii.gz")
COLIN27_BRAIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")
MNI_NAME = TEMPLATE_NAME  # the registration template serves as one anatomy source
COLIN_NAME = "Colin27"

# levels of the tissue classes (contrast.py maps them to intensities)
AIR, CSF, GM, WM = 0.0, 1.0, 2.0, 3.0
BRIGHTEST = 4.5  # the brightest tissue of a head (scalp fat)
BASE_SULCI_RULES = ("pcs_band", "medial_wall")
# defacing removes head tissue below this plane (z < a + b y, template mm) and
# farther than _FACE_MARGIN_MM from the brain: the face, eyes and nose
_FACE_PLANE = (-75.0 - 1.64 * 20.0, 1.64)
_FACE_MARGIN_MM = 4


@dataclass(frozen=True)
class AnatomySource:
    """One anatomy on the template grid.

    Args:
        name: ``MNI152NLin2009aSym`` or ``Colin27``.
        brain_levels: float32 levels inside the brain, 0 outside.
        tissue_levels: levels implied by tissue probability maps (or ``None``);
            blended with ``brain_levels`` per participant.
        head_levels: float32 levels of everything outside the brain (scalp,
            skull, neck, the CSF around the brain), 0 inside it.
        brain_mask: bool mask of the brain.
        affine: voxel-to-mm affine of the template grid.
    """

    name: str
    brain_levels: np.ndarray
    tissue_levels: np.ndarray | None
    head_levels: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray

    def levels(self, *, skull: bool, tissue_weight: float = 0.0) -> np.ndarray:
        """A fresh float32 level volume: brain (blended) plus head when ``skull``."""
        out = self.brain_levels.copy()
        if self.tissue_levels is not None and tissue_weight > 0:
            out *= np.float32(1.0 - tissue_weight)
            out += np.float32(tissue_weight) * self.tissue_levels
        if skull:
            out += self.head_levels
        return out

    @functools.cached_property
    def head_bbox_mm(self) -> np.ndarray:
        """(2, 3) min/max corners in mm of the whole head (with skull)."""
        return _bbox_mm(self._head_mask, self.affine)

    @functools.cached_property
    def head_outline_mm(self) -> np.ndarray:
        """(n, 3) mm points on the surface of the head: a rotated head's extent."""
        return _outline_mm(self._head_mask, self.affine)

    @functools.cached_property
    def brain_outline_mm(self) -> np.ndarray:
        """(n, 3) mm points on the surface of the brain."""
        return _outline_mm(self.brain_mask, self.affine)

    @functools.cached_property
    def _head_mask(self) -> np.ndarray:
        return (self.head_levels > 0.3) | self.brain_mask

    @functools.cached_property
    def defaced_head_levels(self) -> np.ndarray:
        """``head_levels`` without the face (see ``_FACE_PLANE``)."""
        shape = self.head_levels.shape
        j, k = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
        y = self.affine[1, 1] * j + self.affine[1, 3]
        z = self.affine[2, 2] * k + self.affine[2, 3]
        below = (z < _FACE_PLANE[0] + _FACE_PLANE[1] * y)[None, :, :]
        near_brain = ndimage.binary_dilation(self.brain_mask, iterations=_FACE_MARGIN_MM)
        return np.where(below & ~near_brain, np.float32(0.0), self.head_levels)

    @functools.cached_property
    def ventricles(self) -> morphology.VentricleMap:
        """Where the lateral ventricles are (for their enlargement with age)."""
        return morphology.ventricle_map(self.brain_levels, self.affine)

    @functools.cached_property
    def brain_box(self) -> tuple[slice, slice, slice]:
        """Voxel box of the brain (one voxel of margin)."""
        idx = np.argwhere(self.brain_mask)
        low = np.maximum(idx.min(0) - 1, 0)
        high = np.minimum(idx.max(0) + 2, self.brain_mask.shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))  # type: ignore[return-value]


def colin27_available() -> bool:
    """Whether Debian's ``mricron-data`` (Colin27) is installed."""
    return COLIN27_T1.is_file() and COLIN27_BRAIN.is_file()


def available_sources() -> tuple[str, ...]:
    """Names of the anatomy sources this machine can use."""
    return (MNI_NAME, COLIN_NAME) if colin27_available() else (MNI_NAME,)


@functools.lru_cache(maxsize=4)
def load_source(name: str, base_sulci: str = "pcs_band") -> AnatomySource:
    """The anatomy ``name`` with its sulci removed by rule ``base_sulci``, read once per process."""
    if base_sulci not in BASE_SULCI_RULES:
        raise ValueError(f"base_sulci must be one of {BASE_SULCI_RULES}, not {base_sulci!r}")
    if name == MNI_NAME:
        return _load_mni(base_sulci)
    if name == COLIN_NAME:
        if not colin27_available():
            raise InputDataError(
                f"Colin27 ({COLIN27_T1}) is not installed; install the Debian package "
                "mricron-data or use only the MNI152 anatomy."
            )
        return _load_colin(base_sulci)
    raise InputDataError(f"Unknown anatomy source {name!r}; use {MNI_NAME} or {COLIN_NAME}.")


@functools.lru_cache(maxsize=1)
def _mni_images() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from nilearn import datasets  # nilearn ships these in its wheel: no download

    t1 = datasets.load_mni152_template(resolution=1)
    gm = datasets.load_mni152_gm_template(resolution=1)
    wm = datasets.load_mni152_wm_template(resolution=1)
    mask = datasets.load_mni152_brain_mask(resolution=1)
    arrays = [np.asarray(img.dataobj, dtype=np.float32) for img in (t1, gm, wm, mask)]
    return (*arrays, t1.affine.copy())  # type: ignore[return-value]


def template_grid() -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of the template grid every source lives on."""
    t1, *_, affine = _mni_images()
    return t1.shape, affine  # type: ignore[return-value]


def _remove_base_sulci(levels: np.ndarray, affine: np.ndarray, rule: str) -> np.ndarray:
    if rule == "medial_wall":
        return pcs_geometry.close_medial_wall(levels, affine, grey_level=GM)
    return pcs_geometry.smooth_out_band(levels, affine)


def _load_mni(base_sulci: str) -> AnatomySource:
    t1, gm, wm, mask, affine = _mni_images()
    brain = mask > 0.5
    # tissue peaks of the template intensity, read where the maps are sure
    csf_p = np.clip(mask - gm - wm, 0.0, 1.0)
    peaks = [float(np.median(t1[p > 0.9])) for p in (csf_p, gm, wm)]
    levels = _levels_from_intensity(t1, peaks, float(t1[brain].max())) * brain
    tissue = (CSF * csf_p + GM * gm + WM * wm) * brain
    levels = _remove_base_sulci(levels, affine, base_sulci)
    tissue = _remove_base_sulci(tissue, affine, base_sulci)
    head = _colin_head_levels(brain, affine) if colin27_available() else _layered_shell(brain)
    return AnatomySource(MNI_NAME, levels.astype(np.float32), tissue.astype(np.float32),
                         head.astype(np.float32), brain, affine)


def _load_colin(base_sulci: str) -> AnatomySource:
    shape, affine = template_grid()
    head_t1 = _on_template_grid(nib.load(COLIN27_T1), shape, affine)
    brain = _on_template_grid(nib.load(COLIN27_BRAIN), shape, affine) > 0
    peaks = _histogram_peaks(head_t1[brain])
    levels = _levels_from_intensity(head_t1, peaks, float(head_t1.max()))
    brain_levels = _remove_base_sulci(levels * brain, affine, base_sulci)
    head_levels = levels * ~brain
    return AnatomySource(COLIN_NAME, brain_levels.astype(np.float32), None,
                         head_levels.astype(np.float32), brain, affine)


def _colin_head_levels(brain: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Colin27's skull, scalp and neck around another brain (the MNI one).

    Where Colin's brain was larger than the new one, the gap becomes CSF, as
    the subarachnoid space would be.
    """
    shape = brain.shape
    head_t1 = _on_template_grid(nib.load(COLIN27_T1), shape, affine)
    colin_brain = _on_template_grid(nib.load(COLIN27_BRAIN), shape, affine) > 0
    peaks = _histogram_peaks(head_t1[colin_brain])
    levels = _levels_from_intensity(head_t1, peaks, float(head_t1.max()))
    head = np.where(colin_brain, CSF, levels)
    head[brain] = 0.0
    return head


def _layered_shell(brain: np.ndarray) -> np.ndarray:
    """A scalp and skull of typical thickness around ``brain`` (no Colin27).

    Layers outward from the brain surface (mm): CSF, inner table of the skull
    (dark), diploe (marrow, bright), outer table, scalp fat, skin.
    """
    distance = ndimage.distance_transform_edt(~brain)
    edges = np.array([0.0, 2.5, 4.5, 8.0, 10.0, 14.0, 16.0])
    values = np.array([CSF, 0.3, 2.8, 0.3, 4.2, 2.3])
    idx = np.clip(np.searchsorted(edges, distance, side="right") - 1, 0, len(values))
    shell = np.concatenate([values, [AIR]])[idx]
    shell[brain] = 0.0
    return ndimage.gaussian_filter(shell.astype(np.float32), 0.7) * ~brain


def _levels_from_intensity(image: np.ndarray, peaks: list[float], brightest: float
                           ) -> np.ndarray:
    """Piecewise-linear map of intensity to levels through the CSF, GM, WM peaks."""
    csf, gm, wm = peaks
    top = max(brightest, wm * 1.05)
    return np.interp(image, [0.0, csf, gm, wm, top], [AIR, CSF, GM, WM, BRIGHTEST]
                     ).astype(np.float32)


def _histogram_peaks(values: np.ndarray) -> list[float]:
    """CSF, GM and WM intensity modes of a brain (three Otsu classes, mode of each)."""
    from skimage.filters import threshold_multiotsu

    thresholds = threshold_multiotsu(values, classes=3)
    bounds = [values.min(), *thresholds, values.max() + 1]
    hist, edges = np.histogram(values, bins=256)
    centres = (edges[:-1] + edges[1:]) / 2
    peaks = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        inside = (centres >= lo) & (centres < hi)
        peaks.append(float(centres[inside][np.argmax(hist[inside])]))
    return peaks


def _on_template_grid(img: nib.Nifti1Image, shape: tuple[int, ...], affine: np.ndarray
                      ) -> np.ndarray:
    """``img`` on the template grid (an integer shift when the grids align, else trilinear)."""
    data = np.asarray(img.dataobj, dtype=np.float32)
    # voxel of img -> voxel of the template grid
    mapping = np.linalg.solve(affine, img.affine)
    offset = mapping[:3, 3]
    if np.allclose(mapping[:3, :3], np.eye(3)) and np.allclose(offset, np.round(offset)):
        out = np.zeros(shape, dtype=np.float32)
        off = np.round(offset).astype(int)
        src = tuple(slice(max(0, -o), min(s, t - o)) for o, s, t in zip(off, data.shape, shape,
                                                                          strict=True))
        dst = tuple(slice(sl.start + o, sl.stop + o) for sl, o in zip(src, off, strict=True))
        out[dst] = data[src]
        return out
    inverse = np.linalg.inv(mapping)
    return ndimage.affine_transform(data, inverse[:3, :3], inverse[:3, 3], output_shape=shape,
                                    order=1, cval=0.0).astype(np.float32)


def _outline_mm(mask: np.ndarray, affine: np.ndarray, keep_every: int = 5) -> np.ndarray:
    surface = mask & ~ndimage.binary_erosion(mask)
    idx = np.argwhere(surface)[::keep_every]
    return nib.affines.apply_affine(affine, idx)


def _bbox_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    idx = np.argwhere(mask)
    corners = np.array([idx.min(0), idx.max(0)], dtype=float)
    mm = nib.affines.apply_affine(affine, corners)
    return np.array([mm.min(0), mm.max(0)])
