"""A small raw dataset and the participant-level outputs of it, for report tests.

The outputs follow the contract of docs/architecture.md ("Per-image PCS
results") and are written through the :mod:`bids_pcs.io.derivatives` helpers:
crops cut from the template itself (so the registration outlines fit), a
dseg with one curved blob per hemisphere on the native T1w grid, probsegs
smoothed from it, ``desc-pcs_pcs.tsv/json`` and the registration QC json.

The T1w is the real head of ``../shared/data/real-t1`` when present (an
oblique LSA-oriented acquisition, which exercises the reorientation), else a
synthetic ellipsoid head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_pcs.config import TEMPLATE_NAME, CropSettings, load_settings
from bids_pcs.io.atomic import write_json, write_text
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.io.derivatives import (
    crop_path,
    derivative_path,
    dseg_path,
    init_derivatives,
    probseg_path,
    registration_qc_path,
    write_sidecar,
)
from bids_pcs.preprocess import preprocessing_settings
from bids_pcs.reports.registration_figures import template_on_grid
from bids_pcs.spatial.qc import QC_METRIC

REAL_T1 = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-t1" / \
    "KmeansTest_T1UCharRaw.nii.gz"

PARTICIPANTS = (
    # participant_id, age, sex, group
    ("sub-01", "31", "F", "control"),
    ("sub-02", "27", "M", "patient"),
    ("sub-03", "45", "F", "control"),
    ("sub-04", "38", "n/a", "patient"),
)


@dataclass(frozen=True)
class ImageSpec:
    """One T1w image of the fixture and what the participant level found in it."""

    subject: str
    session: str | None
    entities: tuple[tuple[str, str], ...]
    lengths_mm: tuple[float, float] | None  # (left, right); None: no model was applied
    qc_correlation: float

    @property
    def relpath(self) -> str:
        ses = f"ses-{self.session}/" if self.session else ""
        stem = "_".join([f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session
                                                   else []) + [f"{k}-{v}" for k, v in
                                                               self.entities])
        return f"sub-{self.subject}/{ses}anat/{stem}_T1w.nii.gz"


IMAGES = (
    ImageSpec("01", None, (), (46.0, 27.0), 0.83),
    ImageSpec("02", "a", (), (31.0, 0.0), 0.78),
    ImageSpec("02", "b", (("run", "1"),), (44.0, 24.0), 0.81),
    ImageSpec("02", "b", (("run", "2"),), (33.0, 22.0), 0.31),  # fails registration QC
    ImageSpec("03", None, (), None, 0.76),                        # preprocessing only
    ImageSpec("04", None, (), (12.0, 0.0), 0.72),
)
QC_THRESHOLD = 0.5


def class_of(length_mm: float) -> str:
    return "prominent" if length_mm > 40 else "present" if length_mm >= 20 else "absent"


def build_raw(root: Path) -> Path:
    """A BIDS raw dataset with a participants.tsv (``group`` column) and real T1w files."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text(json.dumps(
        {"Name": "PCS report fixture", "BIDSVersion": "1.10.0", "DatasetType": "raw",
         "Authors": ["bids_pcs tests"]}))
    (root / "README").write_text("Fixture dataset for the bids_pcs report tests.\n")
    lines = ["participant_id\tage\tsex\tgroup"] + ["\t".join(p) for p in PARTICIPANTS]
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    (root / "participants.json").write_text(json.dumps({
        "age": {"Description": "age at scan", "Units": "year"},
        "sex": {"Description": "sex", "Levels": {"F": "female", "M": "male"}},
        "group": {"Description": "diagnostic group",
                  "Levels": {"control": "healthy control", "patient": "psychosis"}}}))
    head = _head()
    for spec in IMAGES:
        path = root / spec.relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        nib.save(head, str(path))
        path.with_name(path.name.replace(".nii.gz", ".json")).write_text(
            json.dumps({"MagneticFieldStrength": 3}))
    return root


def build_outputs(output_dir: Path, raw_dir: Path) -> list[T1wImage]:
    """Participant-level outputs of every fixture image; returns the images."""
    init_derivatives(output_dir, raw_dir)
    crop = CropSettings()
    head = _head()
    images = []
    for index, spec in enumerate(IMAGES):
        image = T1wImage(path=raw_dir / spec.relpath, subject=spec.subject,
                         session=spec.session, entities=spec.entities, relpath=spec.relpath)
        images.append(image)
        rng = np.random.default_rng(index)
        for hemisphere in ("L", "R"):
            _write_crop(output_dir, image, hemisphere, crop, rng)
        # the record the preprocessing writes (bids_pcs.spatial.qc.registration_qc), with
        # the settings it ran with (bids_pcs.preprocess.preprocessing_settings)
        write_json(registration_qc_path(output_dir, image),
                   {"Template": TEMPLATE_NAME, "Metric": QC_METRIC,
                    "Correlation": {"L": spec.qc_correlation, "R": spec.qc_correlation},
                    "MinCorrelation": spec.qc_correlation, "Threshold": QC_THRESHOLD,
                    "Passed": spec.qc_correlation >= QC_THRESHOLD,
                    "Settings": preprocessing_settings(load_settings("default"))})
        if spec.lengths_mm is not None:
            _write_pcs(output_dir, image, spec, head, rng)
    return images


def _write_crop(output_dir: Path, image: T1wImage, hemisphere: str, crop: CropSettings,
                rng: np.random.Generator) -> None:
    x0, y0, z0 = crop.min_mm(hemisphere)
    affine = np.eye(4)
    affine[:3, 3] = (x0 + 0.5, y0 + 0.5, z0 + 0.5)
    if hemisphere == "R":
        # stored mirrored: voxel 0 is the lateral end, as for the left crop
        affine[0, 0] = -1.0
        affine[0, 3] = x0 + crop.size_mm[0] - 0.5
    tissue = template_on_grid(affine, crop.shape_vox)
    # grey ~0.5, white ~0.9, CSF dark: a T1w-like contrast, plus scanner noise
    data = 0.15 + 0.45 * tissue["brain"] + 0.35 * tissue["white"]
    data = data + rng.normal(0, 0.03, data.shape)
    path = crop_path(output_dir, image, hemisphere)
    _save(nib.Nifti1Image(data.astype(np.float32), affine), path)
    write_sidecar(path, image, SkullStripped=False)


def _write_pcs(output_dir: Path, image: T1wImage, spec: ImageSpec, head: nib.Nifti1Image,
               rng: np.random.Generator) -> None:
    canonical = nib.as_closest_canonical(head)
    labels = np.zeros(canonical.shape, dtype=np.uint8)
    volumes = []
    for value, (hemisphere, length) in enumerate(zip("LR", spec.lengths_mm, strict=True), 1):
        blob = _sulcus_blob(canonical, hemisphere, length)
        labels[blob] = value
        volumes.append(float(blob.sum() * np.prod(canonical.header.get_zooms()[:3])))
    native_labels = _to_native(labels, head)
    dseg = dseg_path(output_dir, image)
    dseg_img = nib.Nifti1Image(native_labels, head.affine)
    dseg_img.set_data_dtype(np.uint8)
    _save(dseg_img, dseg)
    model = {"name": "finetune-contrastive-lora", "stage": "finetune",
             "method": "contrastive", "strategy": "lora",
             "sha256": "3f1c9a0be27d4c5e8b6a71f0d2e4c6a8b9d0e1f2a3b4c5d6e7f8091a2b3c4d5e",
             "version": "0.1.0"}
    write_sidecar(dseg, image, Model=model, SoftwareVersion="0.1.0")
    for value, hemisphere in ((1, "L"), (2, "R")):
        mask = (native_labels == value).astype(np.float32)
        probability = np.clip(ndimage.gaussian_filter(mask, 1.0) * 1.6, 0, 1)
        path = probseg_path(output_dir, image, hemisphere)
        _save(nib.Nifti1Image(probability.astype(np.float32), head.affine), path)
        write_sidecar(path, image)
    rows = ["hemisphere\tpcs_class\tp_absent\tp_present\tp_prominent\tpcs_length_mm\t"
            "pcs_volume_mm3\tqc_correlation\tqc_passed"]
    passed = "true" if spec.qc_correlation >= QC_THRESHOLD else "false"
    for hemisphere, length, volume in zip("LR", spec.lengths_mm, volumes, strict=True):
        cls = class_of(length)
        probs = rng.dirichlet([1, 1, 1]) * 0.3
        probs[("absent", "present", "prominent").index(cls)] += 0.7
        length_text = f"{length:.2f}" if length > 0 else "0.00"
        rows.append(f"{hemisphere}\t{cls}\t{probs[0]:.4f}\t{probs[1]:.4f}\t{probs[2]:.4f}\t"
                    f"{length_text}\t{volume:.1f}\t{spec.qc_correlation:.4f}\t{passed}")
    write_text(derivative_path(output_dir, image, desc="pcs", suffix="pcs", extension=".tsv"),
               "\n".join(rows) + "\n")
    write_json(derivative_path(output_dir, image, desc="pcs", suffix="pcs", extension=".json"),
               {"Sources": [image.bids_uri], "Model": model,
                "Thresholds": {"present_min_mm": 20.0, "prominent_min_mm": 40.0},
                "FlipTTA": False, "SoftwareVersion": "0.1.0"})


def _sulcus_blob(canonical: nib.Nifti1Image, hemisphere: str, length_mm: float) -> np.ndarray:
    """A tube following an arc above the corpus callosum, ``length_mm`` long."""
    shape = canonical.shape
    mask = np.zeros(shape, dtype=bool)
    if length_mm <= 0:
        return mask
    zooms = np.asarray(canonical.header.get_zooms()[:3])
    ijk = np.indices(shape).reshape(3, -1).T * zooms  # mm from the corner, RAS axes
    extent = np.asarray(shape) * zooms
    # the arc: centred over the frontal lobe, 62 mm radius in the y-z plane
    centre = np.array([extent[0] / 2 + (-5.0 if hemisphere == "L" else 5.0),
                       extent[1] * 0.55, extent[2] * 0.50])
    radius = 0.22 * extent[2]
    y = ijk[:, 1] - centre[1]
    z = ijk[:, 2] - centre[2]
    r = np.hypot(y, z)
    angle = np.arctan2(y, z)  # 0 straight up, positive anterior
    half_angle = length_mm / radius / 2
    start = 0.55  # the PCS runs anterior and upward: centre the arc in front of the vertex
    tube = (np.abs(r - radius) < 3.0) & (np.abs(angle - start) < half_angle) & \
        (np.abs(ijk[:, 0] - centre[0]) < 3.0)
    mask.reshape(-1)[:] = tube
    return mask


def _to_native(canonical_array: np.ndarray, native: nib.Nifti1Image) -> np.ndarray:
    """Reorient an array of the RAS-canonical grid back to ``native``'s grid."""
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))
    target = nib.orientations.io_orientation(native.affine)
    transform = nib.orientations.ornt_transform(ras, target)
    out = nib.orientations.apply_orientation(canonical_array, transform)
    assert out.shape == native.shape[:3]
    return np.ascontiguousarray(out)


def _head() -> nib.Nifti1Image:
    if REAL_T1.is_file():
        img = nib.load(str(REAL_T1))
        return nib.Nifti1Image(np.asarray(img.dataobj), img.affine)
    # synthetic head: scalp, skull, grey and white matter ellipsoids (1.5 mm)
    shape = (110, 130, 110)
    grid = np.indices(shape).astype(np.float32)
    centre = np.array(shape, dtype=np.float32)[:, None, None, None] / 2
    radii = np.array([60, 75, 62], dtype=np.float32)[:, None, None, None] / 1.5
    r = np.sqrt((((grid - centre) / radii) ** 2).sum(0))
    data = np.where(r < 1.0, 260, 0) + np.where(r < 0.93, -200, 0) + \
        np.where(r < 0.88, 90, 0) + np.where(r < 0.65, 60, 0)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = -np.array(shape) * 1.5 / 2
    return nib.Nifti1Image(data.astype(np.int16), affine)


def _save(img: nib.Nifti1Image, path: Path) -> None:
    from bids_pcs.io.atomic import atomic_path

    img.header.set_xyzt_units("mm")
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


_COHORTS: dict[str, tuple[Path, Path, list[T1wImage]]] = {}


def cohort(tmp_path_factory) -> tuple[Path, Path, list[T1wImage]]:
    """(raw_dir, output_dir, images), built once per test session and shared."""
    if "default" not in _COHORTS:
        root = tmp_path_factory.mktemp("pcs-cohort")
        raw = build_raw(root / "raw")
        out = root / "out"
        _COHORTS["default"] = (raw, out, build_outputs(out, raw))
    return _COHORTS["default"]


def screenshot_dir(tmp_path: Path) -> Path:
    """Where browser tests save screenshots: $BIDS_PCS_SCREENSHOT_DIR, else ``tmp_path``."""
    import os

    chosen = os.environ.get("BIDS_PCS_SCREENSHOT_DIR")
    path = Path(chosen) if chosen else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_browser() -> str:
    """The Chromium executable; skip without one, unless CI demands it.

    CI sets BIDS_PCS_REQUIRE_BROWSER=1 after installing the Debian package
    ``chromium``, so there a missing browser fails instead of skipping.
    """
    import os

    import pytest

    from bids_pcs.reports.browser import find_browser

    exe = find_browser()
    if exe is None:
        if os.environ.get("BIDS_PCS_REQUIRE_BROWSER") == "1":
            pytest.fail("BIDS_PCS_REQUIRE_BROWSER=1 but no Chromium is installed "
                        "(apt-get install chromium)")
        pytest.skip("headless Chromium not installed (Debian package 'chromium')")
    return exe
