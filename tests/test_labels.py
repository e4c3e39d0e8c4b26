"""Reading PCS label datasets built on the fly: classes, derived classes, refusals."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bids_pcs.config import LabelSettings
from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import T1wImage, collect_t1w
from bids_pcs.io.labels import (
    SOURCE_LENGTH,
    SOURCE_RATING,
    SOURCE_TABLE,
    SOURCE_TABLE_LENGTH,
    SOURCE_TSV,
    check_label_values,
    find_dseg,
    load_dseg,
    parse_pcs_class,
    read_labels,
)

SHAPE = (40, 64, 40)  # a T1w spans at least 40 mm along every axis
AFFINE = np.array([[1.0, 0, 0, -12], [0, 1.0, 0, -32], [0, 0, 1.0, -20], [0, 0, 0, 1]])


def write_json(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content))


def add_t1w(raw: Path, subject: str, session: str | None = None, extra: str = "",
            shape=SHAPE, affine=AFFINE) -> T1wImage:
    """Write a random T1w into ``raw`` and return its unit."""
    anat = raw / f"sub-{subject}" / (f"ses-{session}/anat" if session else "anat")
    anat.mkdir(parents=True, exist_ok=True)
    prefix = f"sub-{subject}" + (f"_ses-{session}" if session else "") + extra
    path = anat / f"{prefix}_T1w.nii.gz"
    data = np.random.default_rng(0).random(shape).astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    entities = tuple(tuple(part.split("-", 1)) for part in extra.strip("_").split("_") if part)
    return T1wImage(path=path.absolute(), subject=subject, session=session,
                    entities=entities, relpath=path.relative_to(raw).as_posix())


def line_dseg(left_mm: float = 0.0, right_mm: float = 0.0, shape=SHAPE) -> np.ndarray:
    """A dseg with a straight PCS along y of the given length per hemisphere (1 mm voxels)."""
    dseg = np.zeros(shape, dtype=np.uint8)
    for value, x, length in ((1, 8, left_mm), (2, 16, right_mm)):
        if length > 0:
            first = 10
            dseg[x - 1:x + 1, first:first + int(round(length)), 18:20] = value
    return dseg


def add_dseg(labels: Path, image: T1wImage, data: np.ndarray, affine=AFFINE,
             name: str | None = None) -> Path:
    anat = labels / image.anat_dir
    anat.mkdir(parents=True, exist_ok=True)
    path = anat / (name or f"{image.prefix}_space-T1w_desc-pcs_dseg.nii.gz")
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def write_participants(root: Path, rows: list[tuple[str, str, str]]) -> None:
    lines = ["participant_id\tage\tpcs_left\tpcs_right"]
    lines += [f"sub-{s}\t30\t{left}\t{right}" for s, left, right in rows]
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")


@pytest.fixture
def datasets(tmp_path):
    raw, labels = tmp_path / "raw", tmp_path / "labels"
    write_json(raw / "dataset_description.json", {"Name": "raw", "BIDSVersion": "1.10.0"})
    write_json(labels / "dataset_description.json",
               {"Name": "PCS labels", "BIDSVersion": "1.10.0", "DatasetType": "derivative"})
    return raw, labels


def test_classes_from_the_label_datasets_participants_tsv(datasets):
    raw, labels = datasets
    images = [add_t1w(raw, "01"), add_t1w(raw, "02")]
    for image in images:
        add_dseg(labels, image, line_dseg(25, 25))
    write_participants(labels, [("01", "present", "absent"), ("02", " Prominent", "PRESENT")])
    records = read_labels(labels, images)
    assert [r.image.subject for r in records] == ["01", "02"]
    assert records[0].classes == {"L": "present", "R": "absent"}
    assert records[1].classes == {"L": "prominent", "R": "present"}
    assert records[0].class_sources == {"L": SOURCE_TSV, "R": SOURCE_TSV}
    assert records[0].dseg_path == labels.absolute() / "sub-01/anat" / (
        "sub-01_space-T1w_desc-pcs_dseg.nii.gz")


def test_classes_from_the_raw_participants_tsv_and_label_tsv_wins(datasets):
    raw, labels = datasets
    images = [add_t1w(raw, "01"), add_t1w(raw, "02")]
    for image in images:
        add_dseg(labels, image, line_dseg(25, 25))
    write_participants(raw, [("01", "absent", "prominent"), ("02", "absent", "absent")])
    records = read_labels(labels, images)
    assert records[0].classes == {"L": "absent", "R": "prominent"}
    # the label dataset's table overrides the raw one where it has a value
    write_participants(labels, [("02", "present", "n/a")])
    records = read_labels(labels, images)
    assert records[1].classes == {"L": "present", "R": "absent"}
    assert records[0].classes == {"L": "absent", "R": "prominent"}


def test_classes_derived_from_length_where_missing(datasets, caplog):
    raw, labels = datasets
    images = [add_t1w(raw, "01"), add_t1w(raw, "02"), add_t1w(raw, "03")]
    add_dseg(labels, images[0], line_dseg(left_mm=30, right_mm=45))
    add_dseg(labels, images[1], line_dseg(left_mm=12, right_mm=0))
    add_dseg(labels, images[2], line_dseg(left_mm=0, right_mm=30))
    # 01 not listed, 02 with empty cells, 03 with one class given
    write_participants(labels, [("02", "n/a", ""), ("03", "present", "n/a")])
    with caplog.at_level(logging.WARNING):
        records = read_labels(labels, images)
    assert records[0].classes == {"L": "present", "R": "prominent"}
    assert records[0].class_sources == {"L": SOURCE_LENGTH, "R": SOURCE_LENGTH}
    assert records[1].classes == {"L": "absent", "R": "absent"}
    assert records[2].classes == {"L": "present", "R": "present"}
    assert records[2].class_sources == {"L": SOURCE_TSV, "R": SOURCE_LENGTH}
    # the table says present where the mask has nothing: kept, but flagged
    assert "sub-03" in caplog.text and "no voxel" in caplog.text
    # the thresholds come from the settings
    strict = read_labels(labels, images, LabelSettings(present_min_mm=35, prominent_min_mm=50))
    assert strict[0].classes == {"L": "absent", "R": "present"}


def test_a_class_only_label_dataset_and_a_raw_participants_tsv_are_label_sources(datasets):
    raw, labels = datasets
    images = [add_t1w(raw, "01"), add_t1w(raw, "02"), add_t1w(raw, "03")]
    write_participants(raw, [("01", "present", "absent"), ("02", "prominent", "n/a")])
    # the raw dataset itself (no masks anywhere): classes only
    records = read_labels(raw, images, require_all=False)
    assert [r.image.subject for r in records] == ["01", "02"]
    assert all(not r.has_mask and r.dseg_path is None for r in records)
    assert records[1].classes == {"L": "prominent", "R": None}
    assert records[1].class_sources == {"L": SOURCE_TSV, "R": None}
    # a label dataset with masks for some images and classes for others
    add_dseg(labels, images[2], line_dseg(30, 0))
    records = read_labels(labels, images, bids_dir=raw)
    assert [(r.image.subject, r.has_mask) for r in records] == [
        ("01", False), ("02", False), ("03", True)]
    assert records[2].classes == {"L": "present", "R": "absent"}


def test_a_class_and_length_table_given_with_labels(datasets, tmp_path, caplog):
    raw, _ = datasets
    images = [add_t1w(raw, "01", "a"), add_t1w(raw, "01", "b"), add_t1w(raw, "02")]
    table = tmp_path / "pcs_labels.tsv"
    table.write_text(
        "participant_id\tsession_id\tpcs_left\tpcs_right\tpcs_left_length_mm\t"
        "pcs_right_length_mm\n"
        "sub-01\tses-a\tn/a\tabsent\t43.5\tn/a\n"
        "01\tb\tpresent\tn/a\t12\t21\n"
        "sub-02\t\tn/a\tn/a\tn/a\t19.5\n")
    with caplog.at_level(logging.WARNING):
        records = read_labels(table, images, bids_dir=raw)
    by_prefix = {r.image.prefix: r for r in records}
    assert by_prefix["sub-01_ses-a"].classes == {"L": "prominent", "R": "absent"}
    assert by_prefix["sub-01_ses-a"].class_sources == {"L": SOURCE_TABLE_LENGTH,
                                                       "R": SOURCE_TABLE}
    assert by_prefix["sub-01_ses-b"].classes == {"L": "present", "R": "present"}
    assert by_prefix["sub-01_ses-b"].lengths_mm == {"L": 12.0, "R": 21.0}
    assert by_prefix["sub-02"].classes == {"L": None, "R": "absent"}
    # a class its own length contradicts is kept (the lab's call) but said
    assert "sub-01_ses-b L (present, 12 mm)" in caplog.text
    csv = tmp_path / "labels.csv"
    csv.write_text("participant_id,pcs_left,pcs_right\nsub-02,absent,present\n")
    assert read_labels(csv, images, require_all=False)[0].classes == {"L": "absent",
                                                                      "R": "present"}


@pytest.mark.bad_input("labels:table without label columns", "labels:bad length",
                       "labels:not a table")
def test_bad_tables_are_refused_in_one_sentence(datasets, tmp_path):
    raw, _ = datasets
    images = [add_t1w(raw, "01")]
    table = tmp_path / "labels.tsv"
    table.write_text("participant_id\tleft\nsub-01\tpresent\n")
    with pytest.raises(InputDataError, match="none of the columns pcs_left"):
        read_labels(table, images)
    table.write_text("participant_id\tpcs_left_length_mm\nsub-01\t-3\n")
    with pytest.raises(InputDataError, match=r"line 2, pcs_left_length_mm.*not a length"):
        read_labels(table, images)
    other = tmp_path / "labels.xlsx"
    other.write_bytes(b"PK")
    with pytest.raises(InputDataError, match="not a .tsv or .csv table"):
        read_labels(other, images)


def test_binary_labels_merge_prominent_into_present(datasets):
    raw, labels = datasets
    binary = LabelSettings(classes=("absent", "present"))
    images = [add_t1w(raw, "01"), add_t1w(raw, "02")]
    add_dseg(labels, images[1], line_dseg(45, 10))
    write_participants(labels, [("01", "prominent", "absent")])
    records = read_labels(labels, images, binary)
    assert records[0].classes == {"L": "present", "R": "absent"}
    assert records[1].classes == {"L": "present", "R": "absent"}  # 45 mm by length
    with pytest.raises(InputDataError, match="valid classes are absent, present \\("):
        write_participants(labels, [("01", "maybe", "absent")])
        read_labels(labels, images, binary)


def test_rating_files_are_a_label_source_and_override_tables(datasets, tmp_path):
    raw, labels = datasets
    images = [add_t1w(raw, "01"), add_t1w(raw, "02"), add_t1w(raw, "03")]
    write_participants(raw, [("01", "absent", "absent"), ("02", "present", "present")])
    ratings = tmp_path / "ratings"
    ratings.mkdir()
    columns = "image\themisphere\tdecision\tpcs_class\tregistration_qc\trated_at\n"
    (ratings / "sub-01_ratings.tsv").write_text(
        columns + "sub-01\tL\tcorrect\tprominent\tgood\t2025-01-01T10:00:00Z\n"
        "sub-01\tR\taccept\tabsent\tgood\t2025-01-01T10:00:00Z\n")
    # a later download of the same report: its answer wins
    (ratings / "sub-01_ratings (1).tsv").write_text(
        columns + "sub-01\tL\tcorrect\tpresent\tgood\t2025-01-02T09:00:00Z\n")
    (ratings / "sub-02_ratings.json").write_text(json.dumps({"BidsPcsRatings": 1, "Ratings": [
        {"image": "sub-02", "hemisphere": "L", "decision": "accept", "pcs_class": "present",
         "registration_qc": "bad", "rated_at": "2025-01-01T10:00:00Z"}]}))
    (ratings / "sub-03_ratings.tsv").write_text(
        columns + "sub-03\tL\taccept\tabsent\t\t2025-01-01T10:00:00Z\n"
        "sub-03\tR\t\t\t\t2025-01-01T10:00:00Z\n")
    records = read_labels(ratings, images, bids_dir=raw, require_all=False)
    by_subject = {r.image.subject: r for r in records}
    # 02's registration was rated bad: left out; 03's right hemisphere was not rated
    assert sorted(by_subject) == ["01", "03"]
    assert by_subject["01"].classes == {"L": "present", "R": "absent"}
    assert by_subject["01"].class_sources == {"L": SOURCE_RATING, "R": SOURCE_RATING}
    assert by_subject["03"].classes == {"L": "absent", "R": None}
    # inside a label dataset, rating files override its tables
    shutil.copytree(ratings, labels / "ratings")
    add_dseg(labels, images[0], line_dseg(5, 5))
    records = read_labels(labels, images, bids_dir=raw, require_all=False)
    assert records[0].has_mask and records[0].classes["L"] == "present"


def test_sessions_and_entities_are_matched_by_prefix(datasets):
    raw, labels = datasets
    images = [add_t1w(raw, "01", "a", "_acq-mprage_run-1"), add_t1w(raw, "01", "b")]
    add_dseg(labels, images[0], line_dseg(45, 0))
    add_dseg(labels, images[1], line_dseg(0, 45))
    # a dseg of another run must not be taken for run 1
    other_run = T1wImage(path=images[0].path, subject="01", session="a",
                         entities=(("acq", "mprage"), ("run", "2")))
    add_dseg(labels, other_run, line_dseg(10, 10))
    collected = collect_t1w(raw)
    assert [im.prefix for im in collected] == ["sub-01_ses-a_acq-mprage_run-1", "sub-01_ses-b"]
    records = read_labels(labels, collected)
    assert [r.classes for r in records] == [{"L": "prominent", "R": "absent"},
                                           {"L": "absent", "R": "prominent"}]
    assert records[0].dseg_path.parent == labels.absolute() / "sub-01/ses-a/anat"


def test_uncompressed_dseg_is_found(datasets):
    raw, labels = datasets
    image = add_t1w(raw, "01")
    path = add_dseg(labels, image, line_dseg(25, 0),
                    name="sub-01_space-T1w_desc-pcs_dseg.nii")
    assert find_dseg(labels, image) == path
    assert read_labels(labels, [image])[0].classes["L"] == "present"


@pytest.mark.bad_input("labels:images without a dseg")
def test_missing_labels(datasets, caplog):
    raw, labels = datasets
    images = [add_t1w(raw, "01"), add_t1w(raw, "02"), add_t1w(raw, "03")]
    add_dseg(labels, images[1], line_dseg(25, 25))
    with pytest.raises(InputDataError, match=r"2 selected T1w image\(s\) have no PCS label.*"
                                             r"sub-01, sub-03"):
        read_labels(labels, images)
    with caplog.at_level(logging.WARNING):
        records = read_labels(labels, images, require_all=False)
    assert [r.image.subject for r in records] == ["02"]
    assert "Skipping 2" in caplog.text
    with pytest.raises(InputDataError, match="for any selected T1w image.*sub-01, sub-03"):
        read_labels(labels, [images[0], images[2]], require_all=False)


@pytest.mark.bad_input("labels:missing or undescribed label dataset")
def test_label_dataset_must_exist_and_be_described(datasets, tmp_path):
    raw, labels = datasets
    image = add_t1w(raw, "01")
    with pytest.raises(InputDataError, match="does not exist"):
        read_labels(tmp_path / "nowhere", [image])
    (labels / "dataset_description.json").unlink()
    with pytest.raises(InputDataError, match="no dataset_description.json"):
        read_labels(labels, [image])
    (labels / "dataset_description.json").write_text("{not json")
    with pytest.raises(InputDataError, match="not valid JSON"):
        read_labels(labels, [image])


@pytest.mark.parametrize("change", ["shape", "shift", "voxel size"])
@pytest.mark.bad_input("labels:wrong grid")
def test_label_on_another_grid_is_refused(datasets, change):
    raw, labels = datasets
    image = add_t1w(raw, "01")
    data, affine = line_dseg(25, 25), AFFINE.copy()
    if change == "shape":
        data = data[:, :-1]
    elif change == "shift":
        affine[1, 3] += 0.5
    else:
        affine[2, 2] = 1.2
    path = add_dseg(labels, image, data, affine)
    with pytest.raises(InputDataError, match="T1w grid") as err:
        read_labels(labels, [image])
    assert str(path) in str(err.value)


def test_float_rounding_of_the_affine_is_tolerated(datasets):
    raw, labels = datasets
    image = add_t1w(raw, "01")
    affine = AFFINE.copy()
    affine[0, 3] += 2e-4
    add_dseg(labels, image, line_dseg(25, 0), affine)
    assert read_labels(labels, [image])[0].classes["L"] == "present"


@pytest.mark.parametrize("bad_value", [3, 255, 1.5, -1])
@pytest.mark.bad_input("labels:values outside the label map")
def test_values_outside_the_label_map_are_refused(datasets, bad_value):
    raw, labels = datasets
    image = add_t1w(raw, "01")
    data = line_dseg(25, 25).astype(np.float32)
    data[0, 0, 0] = bad_value
    path = add_dseg(labels, image, data)
    with pytest.raises(InputDataError, match=r"outside the label map \[0, 1, 2\]") as err:
        read_labels(labels, [image])
    assert str(path) in str(err.value)
    assert f"{bad_value:g}" in str(err.value)


@pytest.mark.bad_input("labels:unreadable dseg", "labels:4D dseg")
def test_unreadable_and_4d_labels_are_refused(datasets):
    raw, labels = datasets
    image = add_t1w(raw, "01")
    path = add_dseg(labels, image, line_dseg(25, 25))
    path.write_bytes(b"not a nifti")
    with pytest.raises(InputDataError, match="not a readable NIfTI"):
        read_labels(labels, [image])
    add_dseg(labels, image, np.zeros((*SHAPE, 2), dtype=np.uint8))
    with pytest.raises(InputDataError, match="must be 3D"):
        read_labels(labels, [image])


@pytest.mark.bad_input("labels:unknown class in participants.tsv")
def test_unknown_class_names_are_refused(datasets):
    raw, labels = datasets
    image = add_t1w(raw, "01")
    add_dseg(labels, image, line_dseg(25, 25))
    write_participants(raw, [("01", "present", "partial")])
    with pytest.raises(InputDataError, match="Unknown PCS class 'partial'") as err:
        read_labels(labels, [image])
    message = str(err.value)
    assert "absent, present, prominent" in message
    assert "participants.tsv (line 2, pcs_right)" in message


def test_load_dseg_returns_integers_on_the_reference_grid(datasets):
    raw, labels = datasets
    image = add_t1w(raw, "01")
    path = add_dseg(labels, image, line_dseg(25, 25).astype(np.float32))
    img = load_dseg(path, nib.load(str(image.path)))
    assert img.get_data_dtype() == np.int16
    assert set(np.unique(np.asanyarray(img.dataobj)).tolist()) == {0, 1, 2}


# ------------------------------------------------------- property-based tests
# (no deadlines: CI machines are shared and slow examples are not failures)

CLASS_NAMES = ("absent", "present", "prominent")


@settings(deadline=None)
@given(name=st.sampled_from(CLASS_NAMES), upper=st.lists(st.booleans(), min_size=9, max_size=9),
       left=st.sampled_from(["", " ", "\t"]), right=st.sampled_from(["", " ", "  "]))
def test_class_names_in_any_case_and_padding_are_read(name, upper, left, right):
    written = "".join(c.upper() if u else c for c, u in zip(name, upper, strict=False))
    assert parse_pcs_class(left + written + right, "participants.tsv") == name


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=12))
def test_any_other_class_text_is_missing_or_refused(text):
    normalised = text.strip().lower()
    if normalised in CLASS_NAMES:
        assert parse_pcs_class(text, "t.tsv") == normalised
    elif normalised in ("", "n/a", "na", "nan"):
        assert parse_pcs_class(text, "t.tsv") is None
    else:
        with pytest.raises(InputDataError, match="valid classes are absent, present, prominent"):
            parse_pcs_class(text, "t.tsv")


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=60, deadline=None)
@given(hnp.arrays(np.int16, hnp.array_shapes(min_dims=3, max_dims=3, max_side=6),
                  elements=st.integers(-3, 300)))
def test_label_values_accepted_exactly_when_in_the_label_map(data):
    if set(np.unique(data).tolist()) <= {0, 1, 2}:
        check_label_values(data, "x.nii.gz", LabelSettings())
    else:
        with pytest.raises(InputDataError, match="outside the label map"):
            check_label_values(data, "x.nii.gz", LabelSettings())


@settings(max_examples=40, deadline=None)
@given(st.floats(0, 200, allow_nan=False), st.floats(1, 60), st.floats(0.5, 60))
def test_derived_class_follows_the_thresholds(length, present_min, gap):
    labels = LabelSettings(present_min_mm=present_min, prominent_min_mm=present_min + gap)
    name = labels.class_from_length(length)
    expected = ("prominent" if length > present_min + gap
                else "present" if length >= present_min else "absent")
    assert name == expected


@pytest.mark.bad_input("ratings:unknown decision", "ratings:unknown class",
                       "ratings:not a rating file", "ratings:broken JSON")
def test_bad_rating_files_are_refused_in_one_sentence(datasets, tmp_path):
    raw, _ = datasets
    images = [add_t1w(raw, "01")]
    ratings = tmp_path / "ratings"
    ratings.mkdir()
    path = ratings / "sub-01_ratings.tsv"
    header = "image\themisphere\tdecision\tpcs_class\n"
    for body, message in (("sub-01\tL\tmaybe\tpresent\n", "Unknown decision 'maybe'"),
                          ("sub-01\tL\tcorrect\tlarge\n", "Unknown PCS class 'large'"),
                          ("sub-01\tX\taccept\tpresent\n", "Unknown hemisphere 'X'")):
        path.write_text(header + body)
        with pytest.raises(InputDataError, match=message) as info:
            read_labels(ratings, images, bids_dir=raw)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    path.write_text("image\tnote\nsub-01\thello\n")
    with pytest.raises(InputDataError, match="lacks the column"):
        read_labels(ratings, images, bids_dir=raw)
    path.unlink()
    (ratings / "sub-01_ratings.json").write_text("{not json")
    with pytest.raises(InputDataError, match="is not valid JSON"):
        read_labels(ratings, images, bids_dir=raw)
    # an empty folder is neither a label dataset nor a ratings folder
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputDataError, match="no dataset_description.json and no rating files"):
        read_labels(empty, images, bids_dir=raw)
