"""Brain masks for registration: a native image's rough brain, a brain's interior.

The template is skull-stripped; a whole-head scan is not.  Matching the two
by mutual information lets scalp, skull and neck pull the fit (a larger
"brain" scaled onto the head is as good a match as the true pose), so the
moving image is masked like the template before it is registered.  The mask
is morphological and cheap (about 0.3 s at 2 mm): the tissue above the
first of three Otsu classes (dark: background, bone, CSF), opened to cut the
thin bridges through the skull, and the connected piece that fills the middle
of the head.  On a skull-stripped image it returns the brain itself.
Crops are always resampled from the unmasked image.

:func:`brain_interior` is the other side of the same problem: the part of a
brain mask far enough inside that a brain extraction and the head it came
from hold the same image there (see :mod:`bids_pcs.spatial.registration`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import ball

from bids_pcs.spatial.intensity import foreground_mask

# scalp + skull are at most about this thick; the brain's middle is deeper
_CORE_DEPTH_MM = 12.0
# opening radius that cuts tissue bridges through the skull
_OPENING_MM = 4.0


def rough_brain_mask(data: np.ndarray, spacing_mm: float) -> np.ndarray:
    """Boolean brain mask of a T1w array with isotropic ``spacing_mm`` voxels."""
    from skimage.filters import threshold_multiotsu

    head = foreground_mask(data)
    if head.sum() < 100:
        return head
    dark_limit = threshold_multiotsu(data[head], classes=3)[0]
    tissue = (data > dark_limit) & head
    radius = max(1, int(round(_OPENING_MM / spacing_mm)))
    opened = ndimage.binary_opening(tissue, _ball(radius))
    core = ndimage.binary_erosion(head, _ball(max(1, int(round(_CORE_DEPTH_MM / spacing_mm)))))
    labels, count = ndimage.label(opened)
    if count == 0 or not core.any():
        return head
    overlap = ndimage.sum_labels(core, labels, index=np.arange(1, count + 1))
    brain = labels == int(np.argmax(overlap)) + 1
    # give back what the opening took from the cortex, and a rim of CSF like the
    # template mask's dilation
    brain = ndimage.binary_dilation(brain, _ball(2 * radius)) & head
    return ndimage.binary_fill_holes(brain)


def _ball(radius: int) -> np.ndarray:
    return ball(radius).astype(bool)


def brain_interior(mask: np.ndarray, spacing_mm: float, depth_mm: float,
                   closing_mm: float) -> np.ndarray:
    """Voxels of ``mask`` more than ``depth_mm`` inside its outer surface.

    The mask is closed by ``closing_mm`` first (and its holes filled), so the
    surface is the brain's hull: the interhemispheric fissure and the sulci
    are inside, and only the outer surface is eroded.  Distances are
    Euclidean, in millimetres on the isotropic ``spacing_mm`` grid; the array
    is padded so that a brain touching the grid's edge closes like any other.
    """
    pad = int(np.ceil(closing_mm / spacing_mm)) + 1
    padded = np.pad(np.asarray(mask, dtype=bool), pad)
    dilated = ndimage.distance_transform_edt(~padded, sampling=spacing_mm) <= closing_mm
    closed = ndimage.distance_transform_edt(dilated, sampling=spacing_mm) > closing_mm
    hull = ndimage.binary_fill_holes(closed[pad:-pad, pad:-pad, pad:-pad])
    return ndimage.distance_transform_edt(hull, sampling=spacing_mm) > depth_mm
