"""The derivatives writer: names, atomic files, concurrent runs, BIDS validity."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_pcs.io.atomic import atomic_path, write_json
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.io.derivatives import (
    crop_path,
    derivative_name,
    derivative_path,
    dseg_lookup_tsv,
    init_derivatives,
    probseg_path,
    sidecar_path,
    write_sidecar,
)
from bids_pcs.io.validator import validate

IMAGE = T1wImage(path=Path("/raw/sub-01/ses-a/anat/sub-01_ses-a_run-2_T1w.nii.gz"),
                 subject="01", session="a", entities=(("run", "2"),),
                 relpath="sub-01/ses-a/anat/sub-01_ses-a_run-2_T1w.nii.gz")


def test_names_follow_bids_entity_order():
    name = derivative_name(IMAGE, desc="pcs", space="T1w", label="PCS", suffix="probseg",
                           extension=".nii.gz")
    assert name == "sub-01_ses-a_run-2_space-T1w_label-PCS_desc-pcs_probseg.nii.gz"
    assert crop_path(Path("/o"), IMAGE, "R").name == (
        "sub-01_ses-a_run-2_space-MNI152NLin2009aSym_desc-medialfrontalR_T1w.nii.gz")
    assert probseg_path(Path("/o"), IMAGE, "L").name == (
        "sub-01_ses-a_run-2_space-T1w_label-PCSL_probseg.nii.gz")
    with pytest.raises(ValueError, match="surfaces"):
        derivative_name(IMAGE, hemi="L", suffix="T1w", extension=".nii.gz")
    xfm = derivative_name(IMAGE, from_="T1w", to="MNI152NLin2009aSym", mode="image",
                          suffix="xfm", extension="mat")
    assert xfm == "sub-01_ses-a_run-2_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat"
    path = derivative_path(Path("/out"), IMAGE, space="T1w", desc="pcs", suffix="dseg",
                           extension=".nii.gz")
    assert path == Path("/out/sub-01/ses-a/anat/sub-01_ses-a_run-2_space-T1w_desc-pcs_dseg.nii.gz")
    assert sidecar_path(path).name == "sub-01_ses-a_run-2_space-T1w_desc-pcs_dseg.json"
    with pytest.raises(ValueError, match="unknown derivative entities"):
        derivative_name(IMAGE, colour="red", suffix="T1w", extension=".nii.gz")


@pytest.mark.bad_input("crash:exception inside an atomic write")
def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "x.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    write_json(target, {"a": np.float32(1.5)})
    assert json.loads(target.read_text()) == {"a": 1.5}


def test_atomic_keeps_previous_file_until_rename(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"
        assert tmp.name.endswith(".txt")
    assert target.read_text() == "new"


def test_dataset_description_and_lookup(tmp_path, monkeypatch):
    monkeypatch.setenv("BIDS_PCS_CONTAINER_TYPE", "docker")
    monkeypatch.setenv("BIDS_PCS_CONTAINER_TAG", "bids_pcs:0.1.0")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "dataset_description.json").write_text('{"Name": "r", "BIDSVersion": "1.10.0"}')
    out = init_derivatives(tmp_path / "out", raw)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    generated = description["GeneratedBy"][0]
    assert generated["Name"] == "bids_pcs"
    assert generated["Container"] == {"Type": "docker", "Tag": "bids_pcs:0.1.0"}
    assert description["SourceDatasets"][0]["URL"] == raw.absolute().as_uri()
    assert description["DatasetLinks"]["raw"] == raw.absolute().as_uri()
    assert "logs/" in (out / ".bidsignore").read_text()
    assert (out / "desc-pcs_dseg.tsv").read_text() == dseg_lookup_tsv()
    assert dseg_lookup_tsv().splitlines()[3].startswith("2\tright paracingulate sulcus")


def test_the_dseg_lookup_follows_the_recipe_label_map(tmp_path):
    """[labels] dseg_left/dseg_right are the one source of the indices in desc-pcs_dseg.tsv."""
    from bids_pcs.config import LabelSettings, RecipeError, load_settings

    labels = load_settings("default", {"labels": {"dseg_left": 7, "dseg_right": 3}}).labels
    out = init_derivatives(tmp_path / "out", labels=labels)
    rows = [line.split("\t") for line in (out / "desc-pcs_dseg.tsv").read_text().splitlines()]
    assert [(r[0], r[2]) for r in rows[1:]] == [("0", "BG"), ("3", "PCSR"), ("7", "PCSL")]
    with pytest.raises(RecipeError, match="two different integers"):
        LabelSettings(dseg_left=2, dseg_right=2)


@pytest.mark.bad_input("output:unwritable OUTPUT_DIR")
def test_unwritable_output_dir_is_a_clear_error(tmp_path):
    from bids_pcs.errors import OutputError

    # tests run as root, for whom permission bits do not stop writes; a path
    # under a regular file cannot be created by anyone
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="is not writable"):
        init_derivatives(blocker / "out")


def _concurrent_writer(args):
    out, raw, index = args
    init_derivatives(Path(out), Path(raw))
    image = T1wImage(path=Path(raw) / f"sub-{index:02d}_T1w.nii.gz", subject=f"{index:02d}",
                     relpath=f"sub-{index:02d}/anat/sub-{index:02d}_T1w.nii.gz")
    _write_dseg(Path(out), image)
    return index


@pytest.mark.bad_input("crash:concurrent writers of one OUTPUT_DIR")
def test_concurrent_runs_leave_one_valid_dataset(tmp_path):
    raw = _raw_dataset(tmp_path / "raw", 8)
    out = tmp_path / "out"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        done = pool.map(_concurrent_writer, [(str(out), str(raw), i) for i in range(1, 9)])
    assert done == list(range(1, 9))
    json.loads((out / "dataset_description.json").read_text())
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert len(list(out.rglob("*_dseg.nii.gz"))) == 8
    report = validate(out)
    assert report.ok, report.summary()


def test_written_derivatives_pass_the_validator(tmp_path):
    raw = _raw_dataset(tmp_path / "raw", 1)
    out = init_derivatives(tmp_path / "out", raw)
    image = T1wImage(path=raw / "sub-01/anat/sub-01_T1w.nii.gz", subject="01",
                     relpath="sub-01/anat/sub-01_T1w.nii.gz")
    _write_dseg(out, image)
    for hemi in ("L", "R"):
        crop = crop_path(out, image, hemi)
        with atomic_path(crop) as tmp:
            nib.save(nib.Nifti1Image(np.zeros((32, 32, 32), np.float32), np.eye(4)), tmp)
        write_sidecar(crop, image, SkullStripped=False)
    report = validate(out)
    assert report.ok, report.summary()
    # a broken sidecar is caught: the check can fail
    (out / "dataset_description.json").write_text("{}")
    assert not validate(out).ok


def _write_dseg(out: Path, image: T1wImage) -> None:
    path = derivative_path(out, image, space="T1w", desc="pcs", suffix="dseg",
                           extension=".nii.gz")
    data = np.zeros((16, 16, 16), np.uint8)
    data[4:8, 4:8, 4:8] = 1
    with atomic_path(path) as tmp:
        nib.save(nib.Nifti1Image(data, np.eye(4)), tmp)
    write_sidecar(path, image, Description="PCS segmentation")
    for hemi in ("L", "R"):
        prob = probseg_path(out, image, hemi)
        with atomic_path(prob) as tmp:
            nib.save(nib.Nifti1Image(data.astype(np.float32) * 0.9, np.eye(4)), tmp)
        write_sidecar(prob, image)


def _raw_dataset(root: Path, n: int) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "raw", "BIDSVersion": "1.10.0", "DatasetType": "raw"}))
    for i in range(1, n + 1):
        anat = root / f"sub-{i:02d}" / "anat"
        anat.mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.int16), np.eye(4)),
                 anat / f"sub-{i:02d}_T1w.nii.gz")
    return root
