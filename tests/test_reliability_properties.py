"""Property-based tests (hypothesis) of BIDS names and label handling (issue 10).

They extend tests/test_labels.py (class names, label values on the default
map, thresholds) to any label and name: a participant label is either a BIDS
label or refused, a derivative name parses back (by pybids and by the BIDS
entity order of the schema) to exactly what made it, and labels, grids and
participants.tsv cells are accepted exactly when they should be.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bids_pcs.config import LabelSettings
from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import T1wImage, normalise_label
from bids_pcs.io.derivatives import derivative_name, derivative_path
from bids_pcs.io.labels import _read_table, check_label_values, check_same_grid

ALNUM = string.ascii_letters + string.digits
labels = st.text(alphabet=ALNUM, min_size=1, max_size=12)
# what a user may type: anything, with the characters that matter for paths made likely
typed = st.one_of(st.text(max_size=16),
                  st.text(alphabet=ALNUM + "-_./\\ \n\t:~*$%", max_size=16))
PROPERTY = settings(max_examples=150, deadline=None)


# ------------------------------------------------------------ participant labels
@PROPERTY
@given(label=labels, prefix=st.sampled_from(["sub", "ses"]))
def test_a_bids_label_is_read_with_or_without_its_prefix(label, prefix):
    assert normalise_label(label, prefix) == label
    assert normalise_label(f"{prefix}-{label}", prefix) == label


@pytest.mark.bad_input("property:any typed participant or session label")
@PROPERTY
@given(value=typed, prefix=st.sampled_from(["sub", "ses"]))
def test_any_other_text_is_refused_and_nothing_path_like_gets_through(value, prefix):
    stripped = value[len(prefix) + 1:] if value.startswith(f"{prefix}-") else value
    if re.fullmatch(r"[A-Za-z0-9]+", stripped):
        assert normalise_label(value, prefix) == stripped
        return
    with pytest.raises(InputDataError, match="is not a valid BIDS label"):
        normalise_label(value, prefix)


@pytest.mark.bad_input("dataset:participant label ending in a newline")
def test_a_label_with_a_trailing_newline_is_refused():
    # re.match with "$" accepted "01\n"; found by the property above
    with pytest.raises(InputDataError):
        normalise_label("01\n", "sub")


# ---------------------------------------------------------------- derivative names
@st.composite
def t1w_images(draw) -> T1wImage:
    subject = draw(labels)
    session = draw(st.none() | labels)
    entities = []
    # every entity a T1w name may carry (issue 18: task- alone told images apart);
    # chunk- sorts after the derivatives' space- in the schema
    for key in ("task", "acq", "ce", "rec", "run", "echo", "inv", "mt", "part", "chunk"):
        if draw(st.booleans()):
            if key in ("run", "echo", "inv", "chunk"):
                value = str(draw(st.integers(1, 99)))
            elif key == "mt":
                value = draw(st.sampled_from(["on", "off"]))
            elif key == "part":
                value = draw(st.sampled_from(["mag", "phase", "real", "imag"]))
            else:
                value = draw(labels)
            entities.append((key, value))
    anat = f"sub-{subject}/" + (f"ses-{session}/" if session else "") + "anat"
    return T1wImage(path=Path(f"/raw/{anat}/x_T1w.nii.gz"), subject=subject, session=session,
                    entities=tuple(entities), relpath=f"{anat}/x_T1w.nii.gz")


DERIVED = ("from_", "to", "mode", "space", "res", "label", "desc")
PYBIDS_NAMES = {"sub": "subject", "ses": "session", "task": "task", "acq": "acquisition",
                "ce": "ceagent", "rec": "reconstruction", "run": "run", "echo": "echo",
                "inv": "inv", "mt": "mt", "part": "part", "chunk": "chunk", "space": "space",
                "res": "res", "label": "label", "desc": "desc", "from": "from", "to": "to",
                "mode": "mode"}


def _schema_order() -> list[str]:
    from bidsschematools import schema

    loaded = schema.load_schema()
    return [loaded.objects.entities[name]["name"] for name in loaded.rules.entities]


SCHEMA_ORDER = _schema_order()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(image=t1w_images(),
       derived=st.dictionaries(st.sampled_from(DERIVED), labels, max_size=4),
       suffix=st.just("xfm") | st.text(alphabet=string.ascii_letters, min_size=1, max_size=8),
       extension=st.sampled_from([".nii.gz", ".nii", ".json", ".tsv", ".h5", "json"]))
def test_a_derivative_name_parses_back_to_its_entities_in_bids_order(image, derived, suffix,
                                                                    extension):
    name = derivative_name(image, suffix=suffix, extension=extension, **derived)
    expected = {"sub": image.subject, **({"ses": image.session} if image.session else {}),
                **dict(image.entities), **{k.rstrip("_"): v for k, v in derived.items()}}
    # by the BIDS grammar: key-value pairs, then the suffix and the extension
    match = re.fullmatch(r"(?P<pairs>(?:[a-z]+-[A-Za-z0-9]+_)+)(?P<suffix>[A-Za-z]+)"
                         r"(?P<ext>(?:\.[a-z0-9]+)+)", name)
    assert match is not None, name
    pairs = [pair.split("-", 1) for pair in match["pairs"].rstrip("_").split("_")]
    assert dict(pairs) == expected and len(pairs) == len(expected)
    assert match["suffix"] == suffix and match["ext"] == "." + extension.lstrip(".")
    # in the order the BIDS schema fixes (from/to/mode are BEP014 and not in it yet)
    ranks = [SCHEMA_ORDER.index(key) for key, _ in pairs if key in SCHEMA_ORDER]
    assert ranks == sorted(ranks)
    # and pybids reads the same entities from the path the app writes to
    from bids.layout import parse_file_entities

    path = derivative_path(Path("/out"), image, suffix=suffix, extension=extension, **derived)
    parsed = parse_file_entities(str(path), config=["bids", "derivatives"])
    for key, value in expected.items():
        if key in ("from", "to", "mode") and suffix != "xfm":
            continue  # pybids knows these entities on transforms (_xfm) only
        assert str(parsed[PYBIDS_NAMES[key]]) == value, (key, parsed)
    assert path.parent == Path("/out") / image.anat_dir
    # and the reports find the image's stem in its crop's name again
    from bids_pcs.io.derivatives import crop_path
    from bids_pcs.reports.results import _prefix_of

    assert _prefix_of(crop_path(Path("/out"), image, "L").name) == image.prefix


@pytest.mark.bad_input("property:any entity value in a derivative name")
@PROPERTY
@given(image=t1w_images(), key=st.sampled_from(DERIVED), value=typed)
def test_an_entity_value_that_is_not_a_label_cannot_make_a_name(image, key, value):
    assume(not re.fullmatch(r"[A-Za-z0-9]+", value))
    with pytest.raises(ValueError, match="is not a BIDS label"):
        derivative_name(image, suffix="T1w", extension=".nii.gz", **{key: value})


# ------------------------------------------------------------------- label maps
@pytest.mark.bad_input("property:any dseg value under any label map")
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(left=st.integers(1, 50), right=st.integers(1, 50), data=st.data())
def test_any_label_map_accepts_exactly_its_own_values(left, right, data):
    assume(left != right)
    label_map = LabelSettings(dseg_left=left, dseg_right=right)
    dseg = data.draw(hnp.arrays(np.int16, (4, 5, 3), elements=st.sampled_from(
        [0, left, right, data.draw(st.integers(-5, 60))])))
    if set(np.unique(dseg).tolist()) <= {0, left, right}:
        check_label_values(dseg, "x.nii.gz", label_map)
    else:
        with pytest.raises(InputDataError, match=f"outside the label map \\[0, {min(left, right)}"):
            check_label_values(dseg, "x.nii.gz", label_map)


@pytest.mark.bad_input("property:any float dseg value (NaN, Inf, fractions)")
@settings(max_examples=60, deadline=None)
@given(value=st.floats(allow_nan=True, allow_infinity=True, width=32))
def test_a_float_dseg_is_accepted_only_with_exact_label_values(value):
    dseg = np.zeros((3, 3, 3), np.float32)
    dseg[1, 1, 1] = value
    if value in (0.0, 1.0, 2.0):
        check_label_values(dseg, "x.nii.gz", LabelSettings())
    else:
        with pytest.raises(InputDataError, match="outside the label map"):
            check_label_values(dseg, "x.nii.gz", LabelSettings())


@pytest.mark.bad_input("property:any label grid shift")
@PROPERTY
@given(shift=st.floats(-0.01, 0.01), where=st.tuples(st.integers(0, 2), st.integers(0, 3)))
def test_a_label_grid_is_accepted_exactly_within_a_micrometre(shift, where):
    import nibabel as nib

    reference = nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4))
    affine = np.eye(4)
    affine[where] += shift
    if abs(shift) <= 1e-3:
        check_same_grid(affine, (4, 4, 4), reference, "x.nii.gz")
    else:
        with pytest.raises(InputDataError, match="T1w grid"):
            check_same_grid(affine, (4, 4, 4), reference, "x.nii.gz")


# --------------------------------------------------------------- participants.tsv
cells = st.one_of(st.sampled_from(["absent", "present", "prominent"]),
                  st.sampled_from(["", "n/a", "N/A", "nan", " Present ", "PROMINENT"]),
                  st.text(alphabet=string.ascii_letters + " ", max_size=10))


@pytest.mark.bad_input("property:any participants.tsv class cell")
@settings(max_examples=80, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.dictionaries(labels, st.tuples(cells, cells), min_size=1, max_size=5))
def test_participants_tsv_classes_round_trip_or_name_the_bad_cell(tmp_path, rows):
    path = tmp_path / "participants.tsv"
    lines = ["participant_id\tage\tpcs_left\tpcs_right"]
    lines += [f"sub-{s}\t30\t{left}\t{right}" for s, (left, right) in rows.items()]
    path.write_text("\n".join(lines) + "\n")
    known = {"absent", "present", "prominent"}
    missing = {"", "n/a", "na", "nan"}
    bad = [(row, column, cell) for row, (s, pair) in enumerate(rows.items(), start=2)
           for column, cell in zip(("pcs_left", "pcs_right"), pair, strict=True)
           if cell.strip().lower() not in known | missing]
    if bad:
        row, column, cell = bad[0]
        with pytest.raises(InputDataError, match=re.escape(f"(line {row}, {column})")):
            _read_table(path, LabelSettings(), "participants.tsv", required=False)
        return
    table = _read_table(path, LabelSettings(), "participants.tsv", required=False)
    for subject, (left, right) in rows.items():
        expected = {h: c.strip().lower() for h, c in (("L", left), ("R", right))
                    if c.strip().lower() in known}
        found = table.rows.get((subject, None))
        assert (found.classes if found else {}) == expected
