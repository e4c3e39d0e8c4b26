"""Per-participant changes of the anatomy: cortical thickness and ventricle size.

Both act on the level map of the template grid (0 air, 1 CSF, 2 grey matter,
3 white matter) before any sulcus is carved, so a carved sulcus keeps the
grey banks it was drawn with.

- **Cortical thickness**: the grey/white boundary moves by up to one voxel
  (1 mm) into white matter (thicker cortex) or into grey matter (thinner),
  blended by the fraction asked, which partial volume makes a sub-millimetre
  change. Borders with CSF stay where they are.
- **Ventricles**: the lateral ventricles grow into the tissue around them (as
  they do with age), keeping the septum between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from bids_pcs.synth.pcs_geometry import box_mm, box_slices

# template mm box of the lateral ventricles, seeds inside them, and the
# half-width of the midline (septum, third ventricle, fissure) left out
_VENTRICLE_BOX_MM = (np.array([-24.0, -40.0, 0.0]), np.array([24.0, 32.0, 34.0]))
_VENTRICLE_SEEDS_MM = ((-6.0, 0.0, 20.0), (6.0, 0.0, 20.0))
_SEPTUM_HALF_MM = 2.5
_KEEP_SEPTUM_MM = 1.5


@dataclass(frozen=True)
class VentricleMap:
    """Distance (mm) from the lateral ventricles over a box of the template grid."""

    box: tuple[slice, slice, slice]
    distance_mm: np.ndarray
    midline: np.ndarray


def ventricle_map(levels: np.ndarray, affine: np.ndarray) -> VentricleMap:
    """Find the lateral ventricles of a level map (CSF connected to two seeds)."""
    box = box_slices(*_VENTRICLE_BOX_MM, affine, levels.shape)
    x_mm = box_mm(box, affine)[0]
    region = levels[box]
    components, _ = ndimage.label((region < 1.5) & (np.abs(x_mm) > _SEPTUM_HALF_MM))
    inverse = np.linalg.inv(affine)
    start = np.array([sl.start for sl in box])
    keep = []
    for seed in _VENTRICLE_SEEDS_MM:
        voxel = np.round(inverse[:3, :3] @ seed + inverse[:3, 3]).astype(int) - start
        if components[tuple(voxel)] > 0:
            keep.append(components[tuple(voxel)])
    ventricles = np.isin(components, keep)
    spacing = np.abs(np.diag(affine)[:3])
    distance = ndimage.distance_transform_edt(~ventricles, sampling=spacing)
    return VentricleMap(box, distance.astype(np.float32), np.abs(x_mm) < _KEEP_SEPTUM_MM)


def enlarge_ventricles(levels: np.ndarray, ventricles: VentricleMap, enlargement_mm: float
                       ) -> None:
    """Grow the ventricles by ``enlargement_mm`` into the tissue around them (in place)."""
    if enlargement_mm <= 0:
        return
    region = levels[ventricles.box]
    ceiling = np.interp(ventricles.distance_mm, [enlargement_mm - 0.5, enlargement_mm + 0.5],
                        [1.0, 5.0]).astype(region.dtype)
    ceiling[ventricles.midline | (region <= 0.5)] = np.inf
    np.minimum(region, ceiling, out=region)


def change_cortical_thickness(levels: np.ndarray, box: tuple[slice, slice, slice],
                              change_mm: float) -> None:
    """Move the grey/white boundary inside ``box`` by ``change_mm`` (<= 1; in place).

    Positive: white matter next to grey matter becomes grey (thicker cortex);
    negative: grey matter next to white matter becomes white (thinner), except
    where the grey matter also touches CSF, so no white matter meets the pial
    surface.
    """
    weight = float(np.clip(abs(change_mm), 0.0, 1.0))
    if weight == 0:
        return
    region = levels[box]
    grey, white = np.float32(2.0), np.float32(3.0)
    if change_mm > 0:
        # CSF counts as white here, so white matter next to a ventricle stays white
        eroded = ndimage.grey_erosion(np.where(region < 1.5, white, region), size=3)
        target = np.where(region > grey, np.minimum(region, np.maximum(grey, eroded)), region)
    else:
        dilated = ndimage.grey_dilation(region, size=3)
        near_csf = ndimage.minimum_filter(region, size=3) < 1.5
        target = np.where((region >= 1.8) & ~near_csf,
                          np.maximum(region, np.minimum(dilated, white)), region)
    region += np.float32(weight) * (target - region)
