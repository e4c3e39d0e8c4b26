"""Selecting T1w units on real BIDS layouts (bids-examples; their images are empty)."""

from __future__ import annotations

import pytest

from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import collect_t1w, normalise_label
from bids_pcs.io.nifti import load_t1w


def test_all_participants_of_ds001(bids_examples):
    images = collect_t1w(bids_examples / "ds001")
    assert len(images) == 16
    assert [im.subject for im in images[:3]] == ["01", "02", "03"]
    assert images[0].prefix == "sub-01"
    assert images[0].anat_dir == "sub-01/anat"
    assert images[0].bids_uri == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"


@pytest.mark.parametrize("labels", [["01", "03"], ["sub-01", "sub-03"], ["sub-03", "01"]])
def test_labels_with_or_without_prefix(bids_examples, labels):
    images = collect_t1w(bids_examples / "ds001", labels)
    assert [im.subject for im in images] == ["01", "03"]


def test_sessions_are_separate_units(bids_examples):
    images = collect_t1w(bids_examples / "ds114", ["02"])
    assert [(im.subject, im.session) for im in images] == [("02", "retest"), ("02", "test")]
    assert images[1].prefix == "sub-02_ses-test"
    assert images[1].anat_dir == "sub-02/ses-test/anat"


@pytest.mark.parametrize("session", ["test", "ses-test"])
def test_session_filter(bids_examples, session):
    images = collect_t1w(bids_examples / "ds114", (), [session])
    assert len(images) == 10
    assert {im.session for im in images} == {"test"}


def test_uncompressed_nifti_and_derivatives_ignored(bids_examples):
    images = collect_t1w(bids_examples / "synthetic", ["04"])
    assert [im.relpath for im in images] == ["sub-04/ses-01/anat/sub-04_ses-01_T1w.nii",
                                            "sub-04/ses-02/anat/sub-04_ses-02_T1w.nii"]


def test_acq_and_run_entities_name_units(tmp_path):
    raw = tmp_path / "raw"
    anat = raw / "sub-7" / "anat"
    anat.mkdir(parents=True)
    (raw / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    for name in ("sub-7_acq-mprage_run-1_T1w.nii.gz", "sub-7_acq-mprage_run-2_T1w.nii.gz",
                 "sub-7_rec-norm_T1w.nii.gz"):
        (anat / name).write_bytes(b"")
    prefixes = [im.prefix for im in collect_t1w(raw)]
    assert prefixes == ["sub-7_acq-mprage_run-1", "sub-7_acq-mprage_run-2", "sub-7_rec-norm"]


@pytest.mark.parametrize("bad", ["../x", "sub-01/..", "a b", "", "sub-"])
@pytest.mark.bad_input("dataset:participant label not a BIDS label")
def test_invalid_labels_refused(bad):
    with pytest.raises(InputDataError, match="not a valid BIDS label"):
        normalise_label(bad, "sub")


def test_placeholder_image_fails_naming_the_file(bids_examples):
    image = collect_t1w(bids_examples / "ds114", ["01"])[0]
    with pytest.raises(InputDataError, match=r"sub-01_ses-retest_T1w\.nii\.gz is an empty file"):
        load_t1w(image.path)
