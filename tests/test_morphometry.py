"""PCS length and volume of synthetic shapes of known size, on coarse and oblique grids."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from bids_pcs import morphometry
from bids_pcs.config import LabelSettings
from bids_pcs.morphometry import (
    measure_dseg,
    measure_pcs,
    pcs_length_mm,
    pcs_volume_mm3,
    split_hemispheres,
)

FOV_MM = 56.0


def make_grid(spacing, rotation=None, fov_mm=FOV_MM):
    """Shape and affine of a grid covering a ``fov_mm`` cube, a voxel centred on the origin."""
    spacing = np.asarray(spacing, dtype=float)
    shape = tuple(int(np.ceil(fov_mm / s)) for s in spacing)
    affine = np.eye(4)
    affine[:3, :3] = (np.eye(3) if rotation is None else rotation) @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ (np.asarray(shape) // 2)
    return shape, affine


def rasterise(inside, shape, affine):
    """Boolean mask of the voxels whose centre (world mm) satisfies ``inside``."""
    idx = np.indices(shape).reshape(3, -1).T
    return inside(idx @ affine[:3, :3].T + affine[:3, 3]).reshape(shape)


def segment(p0, p1, radius):
    """Points within ``radius`` of the segment p0-p1, with flat ends at p0 and p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    axis = p1 - p0

    def inside(x):
        t = (x - p0) @ axis / (axis @ axis)
        nearest = p0 + np.clip(t, 0.0, 1.0)[:, None] * axis
        return (np.linalg.norm(x - nearest, axis=1) <= radius) & (t >= 0) & (t <= 1)
    return inside


def sagittal_arc(radius_mm, tube_mm, x_mm=-5.0, depth_mm=0.0):
    """Half circle in the y-z plane (an arched sulcus): length pi * radius_mm."""
    def inside(x):
        ring = np.abs(np.hypot(x[:, 1], x[:, 2]) - radius_mm)
        lateral = np.maximum(0.0, np.abs(x[:, 0] - x_mm) - depth_mm / 2)
        return (np.hypot(ring, lateral) <= tube_mm) & (x[:, 2] >= 0)
    return inside


OBLIQUE = Rotation.from_euler("xyz", [20, 15, 30], degrees=True).as_matrix()
GRIDS = {
    "1mm": ((1.0, 1.0, 1.0), None),
    "0.5x0.5x1.5mm": ((0.5, 0.5, 1.5), None),
    "1.5x0.5x0.5mm": ((1.5, 0.5, 0.5), None),
    "oblique 1mm": ((1.0, 1.0, 1.0), OBLIQUE),
    "oblique 0.5x0.5x1.5mm": ((0.5, 0.5, 1.5), OBLIQUE),
    "oblique 1.2x0.9x1.4mm": ((1.2, 0.9, 1.4), OBLIQUE),
}


@pytest.mark.parametrize("grid", GRIDS)
def test_straight_tube_along_y_is_30mm(grid):
    shape, affine = make_grid(*GRIDS[grid])
    mask = rasterise(segment((-4, -15, 0), (-4, 15, 0), 1.5), shape, affine)
    assert pcs_length_mm(mask, affine) == pytest.approx(30.0, rel=0.06)


@pytest.mark.parametrize("grid", GRIDS)
def test_oblique_tube_in_the_sagittal_plane_is_30mm(grid):
    shape, affine = make_grid(*GRIDS[grid])
    mask = rasterise(segment((-4, -12, -9), (-4, 12, 9), 1.0), shape, affine)
    assert pcs_length_mm(mask, affine) == pytest.approx(30.0, rel=0.06)


@pytest.mark.parametrize("grid", ["1mm", "0.5x0.5x1.5mm", "oblique 1.2x0.9x1.4mm"])
def test_arched_sulcus_is_measured_along_its_curve(grid):
    shape, affine = make_grid(*GRIDS[grid])
    mask = rasterise(sagittal_arc(radius_mm=15.0, tube_mm=1.2), shape, affine)
    expected = np.pi * 15.0  # 47.1 mm; its chord would be 30 mm
    assert pcs_length_mm(mask, affine) == pytest.approx(expected, rel=0.06)


@pytest.mark.parametrize("grid", ["1mm", "0.5x0.5x1.5mm", "oblique 1mm"])
def test_a_deep_sheet_measures_its_course_not_its_diagonal(grid):
    # a sulcus 12 mm deep (along x) and 2 mm thick; its diagonal is 32.3 mm
    # and a 3D curve skeleton of it would be about 12 mm short
    shape, affine = make_grid(*GRIDS[grid])

    def sheet(x):
        return (np.abs(x[:, 2]) <= 1.0) & (np.abs(x[:, 1]) <= 15.0) & (x[:, 0] >= -13.0) & (
            x[:, 0] <= -1.0)
    mask = rasterise(sheet, shape, affine)
    assert pcs_length_mm(mask, affine) == pytest.approx(30.0, rel=0.06)


def test_a_deep_arched_sheet():
    shape, affine = make_grid((1.0, 1.0, 1.0))
    mask = rasterise(sagittal_arc(radius_mm=12.0, tube_mm=1.0, x_mm=-7.0, depth_mm=10.0),
                     shape, affine)
    assert pcs_length_mm(mask, affine) == pytest.approx(np.pi * 12.0, rel=0.06)


def test_even_thickness_sheet_is_not_lost():
    # exactly two voxels thick: scikit-image's 3D thinning returns nothing for this
    mask = np.zeros((40, 50, 20), dtype=bool)
    mask[5:15, 10:40, 9:11] = True
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    assert pcs_length_mm(mask, affine) == pytest.approx(30.0, rel=0.06)


def test_length_ignores_voxel_order_and_position():
    shape, affine = make_grid((1.0, 1.0, 1.0))
    mask = rasterise(segment((-4, -12, -9), (-4, 12, 9), 1.0), shape, affine)
    # the same voxels stored flipped along every axis, with the affine to match
    flipped = mask[::-1, ::-1, ::-1]
    flip = np.eye(4)
    flip[:3, :3] = -np.eye(3)
    flip[:3, 3] = np.asarray(shape) - 1
    moved = affine @ flip
    moved[:3, 3] += (100.0, -50.0, 20.0)
    assert pcs_length_mm(flipped, moved) == pytest.approx(pcs_length_mm(mask, affine), abs=0.3)


def test_interrupted_sulcus_adds_its_pieces():
    shape, affine = make_grid((1.0, 1.0, 1.0))
    first = rasterise(segment((-4, -22, 0), (-4, -5, 0), 1.2), shape, affine)
    second = rasterise(segment((-4, 5, 0), (-4, 20, 0), 1.2), shape, affine)
    morph = measure_pcs(first | second, affine)
    assert morph.n_pieces == 2
    assert morph.length_mm == pytest.approx(32.0, rel=0.06)


def test_double_sweep_agrees_with_exact_diameter(monkeypatch):
    shape, affine = make_grid((0.5, 0.5, 1.5))
    mask = rasterise(sagittal_arc(radius_mm=15.0, tube_mm=1.2), shape, affine)
    exact = pcs_length_mm(mask, affine)
    monkeypatch.setattr(morphometry, "_EXACT_DIAMETER_MAX_NODES", 1)
    assert pcs_length_mm(mask, affine) == pytest.approx(exact, abs=0.5)


@pytest.mark.parametrize("grid", ["0.5x0.5x1.5mm", "oblique 1.2x0.9x1.4mm"])
def test_volume_is_voxel_count_times_voxel_volume(grid):
    shape, affine = make_grid(*GRIDS[grid])
    mask = rasterise(segment((-4, -15, 0), (-4, 15, 0), 1.5), shape, affine)
    voxel = float(np.prod(GRIDS[grid][0]))
    assert pcs_volume_mm3(mask, affine) == pytest.approx(mask.sum() * voxel, rel=1e-12)
    morph = measure_pcs(mask, affine)
    assert morph.volume_mm3 == pytest.approx(mask.sum() * voxel, rel=1e-12)
    assert morph.n_voxels == int(mask.sum())


def test_volume_of_a_finely_sampled_tube():
    shape, affine = make_grid((0.4, 0.4, 0.4), OBLIQUE, fov_mm=40.0)
    mask = rasterise(segment((-4, -15, 0), (-4, 15, 0), 2.0), shape, affine)
    assert pcs_volume_mm3(mask, affine) == pytest.approx(np.pi * 2.0 ** 2 * 30.0, rel=0.05)


def test_empty_and_single_voxel_masks():
    affine = np.diag([0.8, 0.8, 0.8, 1.0])
    empty = measure_pcs(np.zeros((10, 10, 10), dtype=bool), affine)
    assert (empty.length_mm, empty.volume_mm3, empty.n_voxels, empty.n_pieces) == (0, 0, 0, 0)
    dot = np.zeros((10, 10, 10), dtype=bool)
    dot[5, 5, 5] = True
    single = measure_pcs(dot, affine)
    assert single.n_pieces == 1
    assert 0.0 <= single.length_mm <= 1.0
    assert single.volume_mm3 == pytest.approx(0.512)


def test_split_and_measure_a_dseg():
    shape, affine = make_grid((1.0, 1.0, 1.0))
    dseg = np.zeros(shape, dtype=np.int16)
    dseg[rasterise(segment((-5, -20, 0), (-5, 22, 0), 1.2), shape, affine)] = 1
    dseg[rasterise(segment((5, -8, 0), (5, 8, 0), 1.2), shape, affine)] = 2
    masks = split_hemispheres(dseg)
    assert set(masks) == {"L", "R"}
    assert masks["L"].sum() + masks["R"].sum() == np.count_nonzero(dseg)
    assert not (masks["L"] & masks["R"]).any()
    result = measure_dseg(dseg, affine)
    assert result["L"].length_mm == pytest.approx(42.0, rel=0.06)
    assert result["R"].length_mm == pytest.approx(16.0, rel=0.1)
    labels = LabelSettings()
    assert labels.class_from_length(result["L"].length_mm) == "prominent"
    assert labels.class_from_length(result["R"].length_mm) == "absent"
    # another label map swaps the hemispheres
    swapped = measure_dseg(dseg, affine, LabelSettings(dseg_left=2, dseg_right=1))
    assert swapped["L"].n_voxels == result["R"].n_voxels


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="3D"):
        measure_pcs(np.zeros((4, 4), dtype=bool), np.eye(4))
    with pytest.raises(ValueError, match="pixel_mm"):
        pcs_length_mm(np.ones((3, 3, 3), dtype=bool), np.eye(4), pixel_mm=0.0)
