"""The synthetic cohort generator (bids_pcs.synth, bids_pcs-synth), on the easy preset.

The easy preset is the carved-sheet cohort the fast tests rely on; the
benchmark preset's anatomy, distractors, prevalence and variety are tested in
test_synth_benchmark.py.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import ndimage

from bids_pcs.config import LabelSettings
from bids_pcs.io.validator import validate
from bids_pcs.synth import SynthOptions, anatomy, make_cohort, pcs_geometry, population
from bids_pcs.synth.command import main
from bids_pcs.synth.synthesis import synthesize_participant

HARVARD_OXFORD = Path("/usr/share/mricron/templates/HarvardOxford-cort-maxprob-thr0-1mm.nii.gz")
PARACINGULATE = 28
LABELS = LabelSettings()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Three participants, sessions and skull-stripping mixed in."""
    bids_dir = tmp_path_factory.mktemp("synth") / "bids"
    options = SynthOptions.from_preset("easy", sessions_fraction=0.5, stripped_fraction=0.3)
    return make_cohort(bids_dir, 3, seed=3, options=options)


def _easy_options(**changes) -> SynthOptions:
    base = dict(voxel_sizes=((1.0, 1.0, 1.0), (1.0, 1.0, 1.3)), orientations=("LPS", "PIR"),
                noise_range=(0.01, 0.03))
    base.update(changes)
    return SynthOptions.from_preset("easy", **base)


def _spec(classes: dict[str, str], lengths: dict[str, float | None],
          source: str = anatomy.MNI_NAME) -> population.ParticipantSpec:
    return population.ParticipantSpec(label="01", index=0, age=30, sex="F", group="control",
                                      source=source, classes=classes,
                                      target_length_mm=lengths, sessions=(None,),
                                      head_scale=0.97)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _course_length_mm(dseg: nib.Nifti1Image, value: int, truth: dict) -> float:
    """Length of a label along its course, measured on the image.

    The label is brought back to template millimetres with the linear part of
    the synthetic warp, its voxels near the medial surface (3-5 mm from the
    midline, where the true length is defined) are placed along the base arc
    of the paracingulate band, and the extent along it is scaled to native mm.
    """
    idx = np.argwhere(np.asarray(dseg.dataobj) == value)
    if len(idx) == 0:
        return 0.0
    to_scanner = np.asarray(truth["TemplateToScannerAffine"])
    template_mm = nib.affines.apply_affine(np.linalg.inv(to_scanner),
                                           nib.affines.apply_affine(dseg.affine, idx))
    slab = template_mm[(np.abs(template_mm[:, 0]) > 2.5) & (np.abs(template_mm[:, 0]) < 5.5)]
    arc = pcs_geometry.base_arc()
    nearest = np.argmin(np.linalg.norm(slab[:, None, 1:] - arc[None], axis=2), axis=1)
    step = pcs_geometry.base_arc_length_mm() / (len(arc) - 1)
    scale = abs(np.linalg.det(to_scanner[:3, :3])) ** (1 / 3)
    return float((nearest.max() - nearest.min()) * step * scale)


def test_same_seed_same_files_other_seed_other_files(tmp_path, cohort):
    options = SynthOptions(figure=False)  # the benchmark: every random path
    first = make_cohort(tmp_path / "a", 1, seed=7, options=options)
    again = make_cohort(tmp_path / "b", 1, seed=7, options=options)
    files = sorted(p.relative_to(first.bids_dir) for p in first.bids_dir.rglob("*")
                   if p.is_file())
    assert files == sorted(p.relative_to(again.bids_dir) for p in again.bids_dir.rglob("*")
                           if p.is_file())
    for rel in files:
        assert _sha(first.bids_dir / rel) == _sha(again.bids_dir / rel), rel
    # another seed (the cohort fixture's) makes other participants
    assert first.participants[0] != cohort.participants[0]


@pytest.mark.parametrize("pcs_class", ["absent", "present", "prominent"])
def test_labelled_length_falls_in_its_class(pcs_class):
    rng = np.random.default_rng(11)
    left = population.draw_length(rng, pcs_class, LABELS, dimple_probability=1.0)
    spec = _spec({"L": pcs_class, "R": "prominent"}, {"L": left, "R": 50.0})
    result = synthesize_participant(spec, _easy_options(), rng)
    acq = result.acquisitions[0]
    for hemi, value, side in (("L", 1, "left"), ("R", 2, "right")):
        expected = spec.classes[hemi]
        assert LABELS.class_from_length(result.length_mm[hemi]) == expected
        assert acq.truth["PcsLengthMm"][side] == pytest.approx(result.length_mm[hemi], abs=0.01)
        measured = _course_length_mm(acq.dseg, value, acq.truth)
        assert measured == pytest.approx(result.length_mm[hemi], abs=4.0)
        assert LABELS.class_from_length(measured) == expected, (hemi, measured)


def test_absent_without_dimple_has_no_label():
    rng = np.random.default_rng(5)
    spec = _spec({"L": "absent", "R": "absent"}, {"L": None, "R": None})
    result = synthesize_participant(spec, _easy_options(), rng)
    assert not np.asarray(result.acquisitions[0].dseg.dataobj).any()
    assert result.length_mm == {"L": 0.0, "R": 0.0}


@pytest.mark.skipif(not HARVARD_OXFORD.is_file(), reason="mricron-data is not installed")
def test_label_sits_in_harvard_oxford_paracingulate_gyrus_and_crop_box():
    source = anatomy.load_source(anatomy.MNI_NAME)
    atlas = nib.load(HARVARD_OXFORD)
    paracingulate = np.asarray(atlas.dataobj) == PARACINGULATE
    # the atlas was drawn on another MNI template than 2009a: allow 2 mm
    near = ndimage.binary_dilation(paracingulate, iterations=2)
    to_atlas = np.linalg.inv(atlas.affine)
    strict = []
    for k in range(12):
        rng = np.random.default_rng(100 + k)
        hemi = "LR"[k % 2]
        pcs_class = ("absent", "present", "prominent")[k % 3]
        length = population.draw_length(rng, pcs_class, LABELS, dimple_probability=1.0)
        levels = source.levels(skull=False)
        label = pcs_geometry.carve(levels, source.affine, pcs_geometry.draw_course(rng, hemi,
                                                                                   length))
        assert label.n_voxels > 50
        idx = np.argwhere(label.mask) + np.array([sl.start for sl in label.box])
        mm = nib.affines.apply_affine(source.affine, idx)
        vox = np.rint(nib.affines.apply_affine(to_atlas, mm)).astype(int)
        assert near[tuple(vox.T)].mean() > 0.9
        strict.append(paracingulate[tuple(vox.T)].mean())
        # inside the hemisphere's crop box of the preprocessing (template mm)
        low = np.array((-30.0, -16.0, -6.0)) if hemi == "L" else np.array((-2.0, -16.0, -6.0))
        assert (mm >= low).all() and (mm <= low + np.array((32.0, 96.0, 64.0))).all()
        # carved voxels are CSF now, and they were tissue before
        assert (levels[label.box][label.mask] <= 1.5).all()
        assert (source.brain_levels[label.box][label.mask] > 1.5).all()
    assert np.mean(strict) > 0.7


def test_cohort_tables_images_and_labels_agree(cohort):
    raw = pd.read_csv(cohort.bids_dir / "participants.tsv", sep="\t")
    derived = pd.read_csv(cohort.labels_dir / "participants.tsv", sep="\t")
    assert list(raw.participant_id) == ["sub-01", "sub-02", "sub-03"]
    assert {"age", "sex", "group", "site", "anatomy_source", "pcs_left", "pcs_right",
            "pcs_left_length_mm", "pcs_right_length_mm"} <= set(raw.columns)
    assert set(raw.site) == {"A"}  # the easy preset has one site
    assert list(derived.pcs_left) == list(raw.pcs_left)
    sidecar = json.loads((cohort.bids_dir / "participants.json").read_text())
    assert sidecar["pcs_left_length_mm"]["Units"] == "mm"
    for row in raw.itertuples():
        for side in ("left", "right"):
            length = getattr(row, f"pcs_{side}_length_mm")
            assert LABELS.class_from_length(length) == getattr(row, f"pcs_{side}")
    t1ws = sorted(cohort.bids_dir.glob("sub-*/**/anat/*_T1w.nii.gz"))
    assert len(t1ws) == cohort.n_images >= 3
    assert {p.parent.parent.name for p in t1ws} <= {"ses-1", "ses-2"}
    for t1w_path in t1ws:
        rel = t1w_path.relative_to(cohort.bids_dir)
        dseg_path = cohort.labels_dir / rel.parent / t1w_path.name.replace(
            "_T1w.nii.gz", "_space-T1w_desc-pcs_dseg.nii.gz")
        t1w, dseg = nib.load(t1w_path), nib.load(dseg_path)
        assert t1w.shape == dseg.shape
        assert np.allclose(t1w.affine, dseg.affine)
        labels = np.asarray(dseg.dataobj)
        assert set(np.unique(labels)) <= {0, 1, 2}
        truth = json.loads(dseg_path.with_name(dseg_path.name.replace(".nii.gz", ".json"))
                           .read_text())["SyntheticTruth"]
        assert "".join(nib.aff2axcodes(t1w.affine)) == truth["Orientation"]
        image = np.asarray(t1w.dataobj, dtype=np.float32)
        for value, side in ((1, "left"), (2, "right")):
            mask = labels == value
            assert mask.any() == (truth["PcsLengthMm"][side] > 0)
            if mask.sum() > 100:
                # the sulcus is visibly darker than the cortex around it
                ring = ndimage.binary_dilation(mask, iterations=3) & ~ndimage.binary_dilation(
                    mask, iterations=1)
                assert image[mask].mean() < 0.85 * image[ring].mean()
    assert cohort.figure is not None and cohort.figure.stat().st_size > 10_000


@pytest.mark.skipif(shutil.which("bids-validator-deno") is None,
                    reason="bids-validator-deno is not installed")
def test_cohort_passes_bids_validator_with_derivatives(cohort):
    for recursive in (False, True):
        report = validate(cohort.bids_dir, recursive=recursive)
        assert report.ok, report.summary()


def test_cli_exit_codes(tmp_path):
    runner = CliRunner()
    assert runner.invoke(main, ["--help"]).exit_code == 0
    assert runner.invoke(main, [str(tmp_path / "x"), "--participants", "0"]).exit_code == 2
    assert runner.invoke(main, [str(tmp_path / "x"), "--voxel-sizes", "1x1"]).exit_code == 2
    assert runner.invoke(main, [str(tmp_path / "x"), "--orientations", "RAX"]).exit_code == 2
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "data.txt").write_text("not a synthetic cohort")
    result = runner.invoke(main, [str(busy), "--participants", "1"])
    assert result.exit_code == 1
    assert "not empty" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    result = runner.invoke(main, [str(busy), "--participants", "1", "--overwrite"])
    assert result.exit_code == 1 and "refusing to overwrite" in result.output


def test_cli_writes_a_cohort(tmp_path):
    # the default (benchmark) preset; --voxel-sizes overrides its sites' sizes
    result = CliRunner().invoke(main, [str(tmp_path / "c"), "-n", "1", "--seed", "2",
                                       "--no-skull", "--no-figure", "--voxel-sizes", "1.2",
                                       "--orientations", "LAS"])
    assert result.exit_code == 0, result.output
    t1w = nib.load(tmp_path / "c" / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    assert nib.aff2axcodes(t1w.affine) == ("L", "A", "S")
    assert np.allclose(t1w.header.get_zooms(), 1.2)
    # skull-stripped: the background is exactly zero
    assert (np.asarray(t1w.dataobj)[:5, :5, :5] == 0).all()
    assert "left PCS" in result.output
    assert "--preset benchmark --seed 2`" in (tmp_path / "c" / "README").read_text()
