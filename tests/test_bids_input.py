"""Selecting T1w units on real BIDS layouts (bids-examples; their images are empty)."""

from __future__ import annotations

import pytest

from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import collect_t1w, normalise_label
from bids_pcs.io.derivatives import crop_path, xfm_path
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


def _layout(root, names):
    raw = root / "raw"
    anat = raw / "sub-01" / "anat"
    anat.mkdir(parents=True)
    (raw / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    for name in names:
        (anat / name).write_bytes(b"")
    return raw


TASK_ONLY = [f"sub-01_task-{task}_acq-mprage_rec-norm_T1w.nii.gz"
             for task in ("still", "nodding", "shaking")]


def test_images_that_differ_only_by_task_get_their_own_derivative_names(tmp_path):
    # a public dataset names its anat MPRAGEs this way (issue 18): once all three
    # became sub-01_acq-mprage_rec-norm_..., and two of them were lost
    images = collect_t1w(_layout(tmp_path, TASK_ONLY))
    assert [im.prefix for im in images] == [
        "sub-01_task-nodding_acq-mprage_rec-norm", "sub-01_task-shaking_acq-mprage_rec-norm",
        "sub-01_task-still_acq-mprage_rec-norm"]
    crops = {crop_path(tmp_path / "out", im, "L") for im in images}
    assert len(crops) == 3
    assert crop_path(tmp_path / "out", images[2], "L").name == (
        "sub-01_task-still_acq-mprage_rec-norm_space-MNI152NLin2009aSym_"
        "desc-medialfrontalL_T1w.nii.gz")


def test_every_entity_of_a_t1w_name_is_kept_in_bids_order(tmp_path):
    (image,) = collect_t1w(_layout(tmp_path, [
        "sub-01_task-a_acq-b_ce-c_rec-d_run-2_echo-1_inv-2_mt-on_part-mag_chunk-3_T1w.nii"]))
    assert image.entities == (("task", "a"), ("acq", "b"), ("ce", "c"), ("rec", "d"),
                              ("run", "2"), ("echo", "1"), ("inv", "2"), ("mt", "on"),
                              ("part", "mag"), ("chunk", "3"))
    # the schema puts chunk- after space-: derivative entities are placed among them
    assert xfm_path(tmp_path, image, extension=".h5").name == (
        "sub-01_task-a_acq-b_ce-c_rec-d_run-2_echo-1_inv-2_mt-on_part-mag_from-T1w_"
        "to-MNI152NLin2009aSym_mode-image_chunk-3_xfm.h5")
    assert crop_path(tmp_path, image, "R").name.endswith(
        "_part-mag_space-MNI152NLin2009aSym_chunk-3_desc-medialfrontalR_T1w.nii.gz")


@pytest.mark.bad_input("dataset:two T1w images with one derivative name")
def test_two_images_that_would_share_derivative_names_are_refused(tmp_path):
    raw = _layout(tmp_path, ["sub-01_T1w.nii", "sub-01_T1w.nii.gz"])
    with pytest.raises(InputDataError, match="would get the same derivative names") as error:
        collect_t1w(raw)
    assert "sub-01_T1w.nii and " in str(error.value)
    assert str(raw / "sub-01" / "anat" / "sub-01_T1w.nii.gz") in str(error.value)


@pytest.mark.bad_input("dataset:T1w name with an entity BIDS does not define")
def test_an_entity_bids_does_not_define_is_refused_naming_the_file(tmp_path):
    with pytest.raises(InputDataError, match="has entity foo-, which BIDS does not define"):
        collect_t1w(_layout(tmp_path, ["sub-01_foo-bar_T1w.nii.gz"]))


@pytest.mark.parametrize("bad", ["../x", "sub-01/..", "a b", "", "sub-"])
@pytest.mark.bad_input("dataset:participant label not a BIDS label")
def test_invalid_labels_refused(bad):
    with pytest.raises(InputDataError, match="not a valid BIDS label"):
        normalise_label(bad, "sub")


def test_placeholder_image_fails_naming_the_file(bids_examples):
    image = collect_t1w(bids_examples / "ds114", ["01"])[0]
    with pytest.raises(InputDataError, match=r"sub-01_ses-retest_T1w\.nii\.gz is an empty file"):
        load_t1w(image.path)
