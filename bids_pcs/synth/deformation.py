"""Random head shapes and poses, and the one resampling from template to scanner.

A participant's anatomy is the template warped by a *shape*: a smooth random
displacement field defined in template space (cubic B-spline, control points
``spacing_mm`` apart) followed by a linear part (head size, proportions,
shear). Each acquisition adds a *pose*: how the head sits in the scanner
(rotation, translation). A second session keeps the shape and draws a new
pose, so its brain is the same brain.

Scanner point ``p`` comes from template point ``q`` by ``p = P S r`` with
``q = r + u(r)``; images are made by pulling back every scanner voxel to the
template, so the template is resampled exactly once per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nibabel.affines import apply_affine
from scipy import ndimage

# how the scanner grid's displacement is sampled before separable upsampling;
# the field varies over ~30 mm, so 6 mm samples interpolate it to ~0.1 mm
_COARSE_STEP_MM = 6.0


@dataclass(frozen=True)
class Shape:
    """A participant's head shape relative to the template.

    Args:
        linear: 3x3 matrix (scale, proportions, shear) from template mm.
        coefficients: (3, a, b, c) B-spline coefficients (mm) of the displacement.
        origin_mm: template mm of coefficient (0, 0, 0).
        spacing_mm: distance between control points.
    """

    linear: np.ndarray
    coefficients: np.ndarray
    origin_mm: np.ndarray
    spacing_mm: float

    def displacement(self, points_mm: np.ndarray) -> np.ndarray:
        """u(r) in mm at (n, 3) template points ``r``."""
        lattice = (points_mm - self.origin_mm) / self.spacing_mm
        return np.stack([
            ndimage.map_coordinates(self.coefficients[k], lattice.T, order=3,
                                    prefilter=False, mode="nearest")
            for k in range(3)
        ], axis=1)

    def undeform(self, points_mm: np.ndarray, iterations: int = 30,
                 tolerance_mm: float = 1e-6) -> np.ndarray:
        """r with r + u(r) = q for template points q (fixed point; u is small and smooth).

        Stops once no point moves by more than ``tolerance_mm``.
        """
        r = points_mm.copy()
        for _ in range(iterations):
            updated = points_mm - self.displacement(r)
            moved = float(np.abs(updated - r).max()) if len(r) else 0.0
            r = updated
            if moved < tolerance_mm:
                break
        return r


@dataclass(frozen=True)
class Pose:
    """A rigid placement of the head in the scanner: 4x4 matrix on mm."""

    matrix: np.ndarray


@dataclass(frozen=True)
class NativeGrid:
    """The acquired voxel grid, axis-aligned in scanner RAS (reoriented on writing)."""

    shape: tuple[int, int, int]
    affine: np.ndarray

    @property
    def voxel_mm(self) -> tuple[float, float, float]:
        return tuple(float(v) for v in np.abs(np.diag(self.affine)[:3]))  # type: ignore[return-value]


def draw_shape(rng: np.random.Generator, *, amplitude_mm: float, head_scale: float,
               bbox_mm: np.ndarray, spacing_mm: float = 30.0) -> Shape:
    """A random smooth shape: control-point displacements ~ N(0, ``amplitude_mm``)."""
    proportions = np.exp(rng.normal(0.0, 0.035, size=3))
    shear = rng.normal(0.0, 0.02, size=(3, 3))
    np.fill_diagonal(shear, 0.0)
    linear = head_scale * (np.diag(proportions) + shear)
    origin = bbox_mm[0] - 2 * spacing_mm
    size = np.ceil((bbox_mm[1] - origin) / spacing_mm).astype(int) + 3
    coefficients = rng.normal(0.0, amplitude_mm, size=(3, *size))
    return Shape(linear, coefficients, origin, spacing_mm)


def draw_pose(rng: np.random.Generator, *, max_rotation_deg: float,
              max_shift_mm: float) -> Pose:
    """A random head position: pitch up to ``max_rotation_deg``, roll and yaw half of it."""
    limits = np.deg2rad(np.array([1.0, 0.5, 0.5]) * max_rotation_deg)
    pitch, roll, yaw = rng.uniform(-limits, limits)
    rx = _rotation(0, pitch)
    ry = _rotation(1, roll)
    rz = _rotation(2, yaw)
    matrix = np.eye(4)
    matrix[:3, :3] = rz @ ry @ rx
    matrix[:3, 3] = rng.uniform(-max_shift_mm, max_shift_mm, size=3)
    return Pose(matrix)


def template_to_scanner(shape: Shape, pose: Pose) -> np.ndarray:
    """4x4 linear part of the template -> scanner map (the warp u left out)."""
    linear = np.eye(4)
    linear[:3, :3] = shape.linear
    return pose.matrix @ linear


def native_grid(outline_mm: np.ndarray, to_scanner: np.ndarray, voxel_mm: tuple[float, ...],
                margin_mm: float) -> NativeGrid:
    """A grid of ``voxel_mm`` covering the template points ``outline_mm`` placed in the scanner.

    Placing the outline rather than the corners of its box keeps the field of
    view tight around a rotated head (voxels cost time).
    """
    placed = apply_affine(to_scanner, outline_mm)
    low = placed.min(0) - margin_mm
    high = placed.max(0) + margin_mm
    vox = np.asarray(voxel_mm, dtype=float)
    shape = tuple(int(n) for n in np.ceil((high - low) / vox).astype(int) + 1)
    affine = np.eye(4)
    affine[:3, :3] = np.diag(vox)
    affine[:3, 3] = np.round(low, 2)
    return NativeGrid(shape, affine)  # type: ignore[arg-type]


def pullback_coordinates(grid: NativeGrid, shape: Shape, pose: Pose,
                         template_affine: np.ndarray) -> np.ndarray:
    """(3, *grid.shape) float32 template voxel coordinates of every scanner voxel."""
    scanner_to_template = np.linalg.inv(template_to_scanner(shape, pose))
    # scanner voxel -> undeformed template mm r, an affine map of the index
    to_r = scanner_to_template @ grid.affine
    # template voxel of r + u: inv(template) @ (r + u)
    inv_template = np.linalg.inv(template_affine)
    to_vox = inv_template @ to_r

    coarse_axes, weights = [], []
    for n, v in zip(grid.shape, grid.voxel_mm, strict=True):
        step = max(1, int(round(_COARSE_STEP_MM / v)))
        axis = np.arange(0, n - 1 + step, step, dtype=float)
        coarse_axes.append(axis)
        weights.append(_linear_weights(n, axis).astype(np.float32))
    lattice = np.stack(np.meshgrid(*coarse_axes, indexing="ij"), axis=-1).reshape(-1, 3)
    r_coarse = apply_affine(to_r, lattice)
    u_coarse = shape.displacement(r_coarse) @ inv_template[:3, :3].T
    u_coarse = u_coarse.reshape(*[len(a) for a in coarse_axes], 3)

    ijk = [np.arange(n, dtype=np.float32) for n in grid.shape]
    out = np.empty((3, *grid.shape), dtype=np.float32)
    for c in range(3):
        field = _separable_upsample(u_coarse[..., c].astype(np.float32), weights)
        field += (to_vox[c, 0] * ijk[0])[:, None, None]
        field += (to_vox[c, 1] * ijk[1])[None, :, None]
        field += (to_vox[c, 2] * ijk[2] + to_vox[c, 3])[None, None, :]
        out[c] = field
    return out


def scanner_points(points_mm: np.ndarray, shape: Shape, pose: Pose) -> np.ndarray:
    """Scanner mm of (n, 3) template points, through the whole warp."""
    r = shape.undeform(points_mm)
    matrix = template_to_scanner(shape, pose)
    return apply_affine(matrix, r)


def separable_bspline_field(coefficients: np.ndarray, shape: tuple[int, int, int]
                            ) -> np.ndarray:
    """A smooth field over ``shape`` from a small grid of cubic B-spline coefficients."""
    weights = [_bspline_weights(n, c).astype(np.float32)
               for n, c in zip(shape, coefficients.shape, strict=True)]
    return _separable_upsample(coefficients.astype(np.float32), weights)


def _separable_upsample(coarse: np.ndarray, weights: list[np.ndarray]) -> np.ndarray:
    # three small matrix products instead of one interpolation per voxel
    wx, wy, wz = weights
    out = np.tensordot(coarse, wz, axes=([2], [1]))          # (a, b, nz)
    out = np.einsum("jb,abz->ajz", wy, out, optimize=True)   # (a, ny, nz)
    out = np.tensordot(wx, out, axes=([1], [0]))             # (nx, ny, nz)
    return np.ascontiguousarray(out, dtype=np.float32)


def _linear_weights(n: int, axis: np.ndarray) -> np.ndarray:
    """(n, len(axis)) linear interpolation from samples at ``axis`` to 0..n-1."""
    fine = np.arange(n, dtype=float)
    pos = np.interp(fine, axis, np.arange(len(axis)))
    low = np.clip(np.floor(pos).astype(int), 0, len(axis) - 2)
    frac = pos - low
    w = np.zeros((n, len(axis)))
    w[np.arange(n), low] = 1 - frac
    w[np.arange(n), low + 1] += frac
    return w


def _bspline_weights(n: int, count: int) -> np.ndarray:
    """(n, count) cubic B-spline basis over 0..n-1 with ``count`` coefficients."""
    if count < 4:
        raise ValueError("a cubic B-spline field needs at least 4 coefficients per axis")
    t = np.linspace(0.0, count - 3, n)[:, None]
    x = np.abs(t - (np.arange(count)[None, :] - 1))
    return np.where(x < 1, 2 / 3 - x**2 + x**3 / 2, np.where(x < 2, (2 - x) ** 3 / 6, 0.0))


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    a, b = [k for k in range(3) if k != axis]
    out = np.eye(3)
    out[a, a], out[a, b], out[b, a], out[b, b] = c, -s, s, c
    return out
