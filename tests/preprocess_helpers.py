"""Helpers for the preprocessing tests: real images, known perturbations, label overlap."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from nibabel.processing import resample_from_to
from scipy.spatial.transform import Rotation

MRICRON = Path("/usr/share/mricron/templates")
COLIN27 = MRICRON / "ch2.nii.gz"
COLIN27_BRAIN = MRICRON / "ch2bet.nii.gz"  # mricron's brain extraction of Colin27
HARVARD_OXFORD = MRICRON / "HarvardOxford-cort-maxprob-thr0-1mm.nii.gz"
PARACINGULATE_LABEL = 28


def rigid_motion(seed: int, max_rotation_deg: float = 15.0,
                 max_translation_mm: float = 20.0) -> np.ndarray:
    """A random 4x4 world (RAS mm) rigid motion: rotation about a random axis, translation."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(0.5, 1.0) * max_rotation_deg)
    motion = np.eye(4)
    motion[:3, :3] = Rotation.from_rotvec(axis * angle).as_matrix()
    direction = rng.normal(size=3)
    motion[:3, 3] = direction / np.linalg.norm(direction) * rng.uniform(0.5, 1.0) \
        * max_translation_mm
    return motion


def move(img: nib.Nifti1Image, motion: np.ndarray) -> nib.Nifti1Image:
    """``img`` with its content moved by ``motion`` in world space (header only, lossless)."""
    return nib.Nifti1Image(np.asarray(img.dataobj), motion @ img.affine)


def resample_anisotropic(img: nib.Nifti1Image, voxel_mm: tuple[float, float, float],
                         order: int = 1) -> nib.Nifti1Image:
    """``img`` resampled to ``voxel_mm`` voxels along its own axes, same field of view."""
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    new_zooms = np.asarray(voxel_mm, dtype=float)
    shape = np.ceil(np.asarray(img.shape[:3]) * zooms / new_zooms).astype(int)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] / zooms * new_zooms
    # keep the field of view's first corner where it was
    affine[:3, 3] = img.affine[:3, 3] + img.affine[:3, :3] @ ((new_zooms / zooms - 1) / 2)
    return resample_from_to(img, (tuple(shape), affine), order=order, mode="constant", cval=0)


def reorient(img: nib.Nifti1Image, axcodes: tuple[str, str, str]) -> nib.Nifti1Image:
    """``img`` stored with other axis codes (array permuted/flipped, world unchanged)."""
    transform = orientations.ornt_transform(orientations.io_orientation(img.affine),
                                            orientations.axcodes2ornt(axcodes))
    data = orientations.apply_orientation(np.asarray(img.dataobj), transform)
    affine = img.affine @ orientations.inv_ornt_aff(transform, img.shape[:3])
    return nib.Nifti1Image(data, affine)


def perturb(img: nib.Nifti1Image, motion: np.ndarray, voxel_mm: tuple[float, float, float],
            axcodes: tuple[str, str, str], order: int = 1) -> nib.Nifti1Image:
    """Move, resample to anisotropic voxels, and store with other orientation codes."""
    moved = move(nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine),
                 motion)
    resampled = resample_anisotropic(moved, voxel_mm, order=order)
    out = reorient(resampled, axcodes)
    data = np.asarray(out.dataobj)
    if order == 0:
        data = np.rint(data).astype(np.uint8)
    return nib.Nifti1Image(data.astype(np.float32) if order else data, out.affine)


def paracingulate_label() -> nib.Nifti1Image:
    """Harvard-Oxford cortical label 28 (paracingulate gyrus), MNI space, uint8 0/1."""
    atlas = nib.load(str(HARVARD_OXFORD))
    data = (np.asarray(atlas.dataobj) == PARACINGULATE_LABEL).astype(np.uint8)
    return nib.Nifti1Image(data, atlas.affine)


def label_volume_mm3(img: nib.Nifti1Image) -> float:
    voxel = float(abs(np.linalg.det(img.affine[:3, :3])))
    return float((np.asarray(img.dataobj) > 0).sum()) * voxel


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))
