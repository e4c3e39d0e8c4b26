"""Crop geometry, forward/inverse resampling, intensity and QC (no registration needed)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from preprocess_helpers import dice, rigid_motion

from bids_pcs.config import CropSettings, IntensitySettings, load_settings
from bids_pcs.inference.native import crop_to_native
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.io.nifti import load_crop
from bids_pcs.preprocess import PreprocessedImage
from bids_pcs.spatial.antsio import import_ants
from bids_pcs.spatial.crops import (
    box_mask,
    crop_affine,
    crop_reference,
    resample_to_crop,
    resample_to_native,
)
from bids_pcs.spatial.intensity import normalise_intensity
from bids_pcs.spatial.qc import registration_qc, template_crops
from bids_pcs.spatial.template import load_template

CROP = load_settings("default").crop


def test_default_crop_grid_is_32_96_64_at_1mm():
    assert CROP.shape_vox == (32, 96, 64)
    assert all(s % 32 == 0 for s in CROP.size_mm)


@pytest.mark.parametrize("hemisphere", ["L", "R"])
def test_crop_voxels_cover_the_box_exactly(hemisphere):
    affine = crop_affine(CROP, hemisphere)
    corners = nib.affines.apply_affine(affine, [[-0.5, -0.5, -0.5],
                                                np.asarray(CROP.shape_vox) - 0.5])
    low, high = corners.min(axis=0), corners.max(axis=0)
    np.testing.assert_allclose(low, CROP.min_mm(hemisphere))
    np.testing.assert_allclose(high, np.asarray(CROP.min_mm(hemisphere)) + CROP.size_mm)


def test_right_crop_is_stored_mirrored_with_negated_x_axis():
    left, right = crop_affine(CROP, "L"), crop_affine(CROP, "R")
    assert left[0, 0] > 0 > right[0, 0]
    ijk = np.array([[0, 0, 0], [5, 17, 40], [31, 95, 63]])
    xyz_left = nib.affines.apply_affine(left, ijk)
    xyz_right = nib.affines.apply_affine(right, ijk)
    # voxel i of the stored right crop is the mirror image of voxel i of the left one
    np.testing.assert_allclose(xyz_right[:, 0], -xyz_left[:, 0])
    np.testing.assert_allclose(xyz_right[:, 1:], xyz_left[:, 1:])
    unmirrored = CropSettings(mirror_right=False)
    assert crop_affine(unmirrored, "R")[0, 0] > 0


def test_template_is_2009a_symmetric_so_mirrored_crops_match():
    template = load_template()
    assert "sym_09a" in template.source.name
    assert template.t1.shape == (197, 233, 189)
    crops = template_crops(CROP)
    # the symmetric template seen through the mirrored right box is its left box
    corr = np.corrcoef(crops["L"].ravel(), crops["R"].ravel())[0, 1]
    assert corr > 0.97


def test_qc_passes_on_the_template_and_fails_when_shifted():
    ref = template_crops(CROP)
    good = {h: nib.Nifti1Image(ref[h], crop_affine(CROP, h)) for h in "LR"}
    record = registration_qc(good, CROP, 0.5)
    assert record["Passed"] and record["MinCorrelation"] > 0.99
    shifted = {h: nib.Nifti1Image(np.roll(ref[h], 8, axis=2), crop_affine(CROP, h))
               for h in "LR"}
    record = registration_qc(shifted, CROP, 0.5)
    assert not record["Passed"] and record["MinCorrelation"] < 0.5


def test_percentile_and_zscore_normalisation():
    rng = np.random.default_rng(0)
    data = rng.gamma(2.0, 50.0, size=(32, 96, 64)).astype(np.float32)
    out = normalise_intensity(data, IntensitySettings())
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    z = normalise_intensity(data, IntensitySettings(method="zscore"))
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1) < 1e-3


@pytest.fixture(scope="module")
def oblique_native(tmp_path_factory) -> dict:
    """An oblique, anisotropic native grid, and an affine native<->template pair of transforms."""
    ants = import_ants()
    folder = tmp_path_factory.mktemp("roundtrip")
    motion = rigid_motion(seed=11, max_rotation_deg=20, max_translation_mm=15)
    affine = motion @ np.array([[0.0, 0.0, -1.2, 95.0],
                                [-1.0, 0.0, 0.0, 120.0],
                                [0.0, 1.4, 0.0, -80.0],
                                [0.0, 0.0, 0.0, 1.0]])
    shape = (150, 130, 160)
    native = nib.Nifti1Image(np.zeros(shape, dtype=np.float32), affine)
    # the transform ANTs applies to images maps template points to native points
    # (in LPS); here a known scaling + rotation + shift stands in for a registration
    lps = np.diag([-1.0, -1.0, 1.0, 1.0])
    template_to_native = lps @ motion @ np.diag([1.05, 0.95, 1.1, 1.0]) @ lps
    forward = ants.create_ants_transform(
        transform_type="AffineTransform", dimension=3,
        matrix=template_to_native[:3, :3], offset=template_to_native[:3, 3])
    fwd_file, inv_file = folder / "fwd.mat", folder / "inv.mat"
    ants.write_transform(forward, str(fwd_file))
    ants.write_transform(forward.invert(), str(inv_file))
    return {"native": native, "forward": fwd_file, "inverse": inv_file, "folder": folder,
            "template_to_native_ras": motion @ np.diag([1.05, 0.95, 1.1, 1.0])}


def _blob_in_native(native: nib.Nifti1Image, template_to_native: np.ndarray,
                    centre_mm, radius_mm: float) -> np.ndarray:
    """A ball drawn in native space, centred where ``centre_mm`` (template) lands."""
    centre = nib.affines.apply_affine(template_to_native, centre_mm)
    ijk = np.indices(native.shape).reshape(3, -1).T
    xyz = nib.affines.apply_affine(native.affine, ijk)
    inside = np.linalg.norm(xyz - centre, axis=1) <= radius_mm
    return inside.reshape(native.shape).astype(np.uint8)


@pytest.mark.parametrize("hemisphere,centre", [("L", (-8.0, 30.0, 25.0)),
                                                 ("R", (9.0, 35.0, 20.0))])
def test_blob_round_trip_native_crop_native_keeps_dice(oblique_native, hemisphere, centre):
    native = oblique_native["native"]
    blob = _blob_in_native(native, oblique_native["template_to_native_ras"], centre, 9.0)
    assert blob.sum() > 500
    blob_img = nib.Nifti1Image(blob, native.affine)
    in_crop = resample_to_crop(blob_img, [oblique_native["forward"]], CROP, hemisphere,
                               kind="label")
    assert set(np.unique(np.asarray(in_crop.dataobj))) <= {0, 1}
    assert np.asarray(in_crop.dataobj).sum() > 1000  # ~ 4/3 pi 9^3 mm3 at 1 mm
    back = resample_to_native(in_crop, native, [oblique_native["inverse"]], kind="label")
    assert back.shape == native.shape and np.allclose(back.affine, native.affine)
    assert dice(np.asarray(back.dataobj), blob) >= 0.9


def test_crop_to_native_api_for_labels_and_probabilities(oblique_native, tmp_path):
    native = oblique_native["native"]
    native_file = tmp_path / "sub-01_T1w.nii.gz"
    nib.save(native, native_file)
    crops = {}
    for hemisphere in "LR":
        crops[hemisphere] = tmp_path / f"crop_{hemisphere}.nii.gz"
        nib.save(crop_reference(CROP, hemisphere), crops[hemisphere])
    item = PreprocessedImage(
        image=T1wImage(path=native_file, subject="01", relpath="sub-01/anat/x.nii.gz"),
        crops=crops, forward_transform=oblique_native["forward"],
        inverse_transform=oblique_native["inverse"], qc_file=Path("qc.json"),
        qc={"Passed": True})
    assert load_crop(crops["R"]).shape == CROP.shape_vox
    # a label drawn in the stored (mirrored) right crop: its lateral half in array terms
    label = np.zeros(CROP.shape_vox, dtype=np.uint8)
    label[4:16, 30:60, 20:40] = 2
    out = crop_to_native(label, "R", item, kind="label")
    values = np.asarray(out.dataobj)
    assert out.shape == native.shape and values.dtype == np.uint8
    assert set(np.unique(values)) == {0, 2}
    # the mirrored array's low x indices are the right box's lateral side: x > 0 in template
    idx = np.argwhere(values > 0)
    xyz_native = nib.affines.apply_affine(native.affine, idx)
    to_template = np.linalg.inv(oblique_native["template_to_native_ras"])
    xyz_template = nib.affines.apply_affine(to_template, xyz_native)
    assert np.all(xyz_template[:, 0] > 10)
    prob = crop_to_native(label.astype(np.float32) / 4, "R", item, kind="probability")
    p = np.asarray(prob.dataobj)
    assert p.dtype == np.float32 and p.min() >= 0.0 and p.max() <= 0.5 + 1e-6
    with pytest.raises(ValueError):
        crop_to_native(label[:10], "R", item)


def test_box_mask_covers_union_of_boxes():
    template = load_template().t1
    mask = box_mask(template, CROP)
    assert mask.sum() == pytest.approx(2 * np.prod(CROP.size_mm) - 4 * 96 * 64, rel=0.02)
