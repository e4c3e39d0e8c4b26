"""The brain's interior (bids_pcs.spatial.brainmask.brain_interior) that places the crops.

A ball with a fissure cut into it, whose depths are known, and the template's
own interior on the 2 mm registration grid.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bids_pcs.spatial.antsio import to_nibabel
from bids_pcs.spatial.brainmask import brain_interior
from bids_pcs.spatial.registration import INTERIOR_DEPTH_MM, _interior_at, _template_at

SPACING_MM = 2.0
RADIUS_MM = 40.0


def _ball_with_fissure() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 40 mm ball cut by a 2 mm wide, 30 mm deep cleft from the top.

    Returns the mask, the cleft, each voxel's distance from the centre (mm)
    and its distance from the cleft's plane (mm).
    """
    n = 56
    centre = (n - 1) / 2
    ijk = np.indices((n, n, n)) - centre
    radius = np.sqrt((ijk ** 2).sum(axis=0)) * SPACING_MM
    ball = radius <= RADIUS_MM
    fissure = (np.abs(ijk[0]) < 0.6) & (ijk[2] * SPACING_MM > RADIUS_MM - 30.0)
    return ball & ~fissure, fissure & ball, radius, np.abs(ijk[0]) * SPACING_MM


def test_the_interior_is_the_ball_less_its_outer_shell_with_the_fissure_closed():
    mask, fissure, radius, _ = _ball_with_fissure()
    interior = brain_interior(mask, SPACING_MM, depth_mm=8.0, closing_mm=5.0)
    # the outer surface is eroded by 8 mm, within a voxel
    assert interior[radius < RADIUS_MM - 8.0 - SPACING_MM].all()
    assert not interior[radius > RADIUS_MM - 8.0 + SPACING_MM].any()
    # the cleft is inside the hull: deep in the ball it is interior, like the tissue beside it
    deep_cleft = fissure & (radius < RADIUS_MM - 8.0 - SPACING_MM)
    assert deep_cleft.any() and interior[deep_cleft].all()


def test_without_closing_the_fissure_is_a_surface_and_is_eroded_too():
    mask, fissure, radius, from_plane = _ball_with_fissure()
    closed = brain_interior(mask, SPACING_MM, depth_mm=8.0, closing_mm=5.0)
    open_ = brain_interior(mask, SPACING_MM, depth_mm=8.0, closing_mm=0.0)
    # tissue 2-4 mm beside the cleft, deep in the ball, at the cleft's height
    cleft_height = fissure.any(axis=(0, 1))[None, None, :]
    beside = mask & (from_plane <= 4.0) & cleft_height & (radius < RADIUS_MM - 12.0)
    assert beside.any()
    assert closed[beside].all() and not open_[beside].any()


def test_template_interior_keeps_the_cingulate_and_drops_the_dorsal_cortex():
    fixed = to_nibabel(_template_at(SPACING_MM)[0])
    interior = _interior_at(SPACING_MM)
    template = np.asarray(fixed.dataobj) > 0.2
    to_voxel = np.linalg.inv(fixed.affine)

    def at(ras_mm) -> tuple[int, ...]:
        return tuple(int(round(v)) for v in nib.affines.apply_affine(to_voxel, ras_mm))

    # the left cingulate / paracingulate cortex near the midline, deep in the brain
    assert interior[at([-6.0, 30.0, 30.0])]
    # the top of the brain above the left superior frontal gyrus, and half the depth below it
    i, j, _ = at([-20.0, 20.0, 0.0])
    top = np.flatnonzero(template[i, j])[-1]
    below = top - int(round(INTERIOR_DEPTH_MM / 2 / SPACING_MM))
    assert template[i, j, below] and not interior[i, j, below]
