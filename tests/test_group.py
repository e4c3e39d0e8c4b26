"""The group level: table, summary, page, from participant outputs alone."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli
from pcs_outputs import (
    IMAGES,
    PARTICIPANTS,
    QC_THRESHOLD,
    class_of,
    cohort,
    require_browser,
    screenshot_dir,
)

from bids_pcs.config import load_settings
from bids_pcs.errors import InputDataError
from bids_pcs.io.validator import validate
from bids_pcs.levels import group
from bids_pcs.reports.browser import check_page
from bids_pcs.reports.group_table import asymmetry_index
from bids_pcs.reports.subject import write_subject_report


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    """The fixture cohort after ``bids_pcs RAW OUT group`` (and one subject report)."""
    raw, out, images = cohort(tmp_path_factory)
    write_subject_report(out, "01", images)
    result = run_cli(raw, out, "group")
    assert result.returncode == 0, result.stderr
    return raw, out


def _settings(output_dir: Path, bids_dir: Path | str = ""):
    return load_settings("default", {"run": {"output_dir": str(output_dir),
                                             "bids_dir": str(bids_dir),
                                             "analysis_level": "group"}})


def _in_statistics(spec) -> bool:
    return spec.lengths_mm is not None and spec.qc_correlation >= QC_THRESHOLD


def test_group_table_has_one_row_per_image(grouped):
    _, out = grouped
    table = pd.read_csv(out / "group_pcs.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert len(table) == len(IMAGES)
    for column in ("image", "participant_id", "session_id", "run", "pcs_class_left",
                   "p_absent_left", "p_present_right", "p_prominent_right",
                   "pcs_length_mm_left", "pcs_volume_mm3_right", "pcs_asymmetry_index",
                   "qc_correlation", "qc_passed", "model_name", "age", "sex", "group"):
        assert column in table.columns, column
    rows = table.set_index("image")
    # sessions and runs are separate rows
    assert list(rows.loc[["sub-02_ses-a", "sub-02_ses-b_run-1", "sub-02_ses-b_run-2"],
                         "session_id"]) == ["ses-a", "ses-b", "ses-b"]
    assert list(rows.loc[["sub-02_ses-b_run-1", "sub-02_ses-b_run-2"], "run"]) == ["1", "2"]
    assert rows.at["sub-01", "session_id"] == "n/a"
    for spec in IMAGES:
        prefix = "_".join([f"sub-{spec.subject}"] + ([f"ses-{spec.session}"]
                                                       if spec.session else [])
                          + [f"{k}-{v}" for k, v in spec.entities])
        row = rows.loc[prefix]
        assert row["qc_passed"] == ("true" if spec.qc_correlation >= QC_THRESHOLD else "false")
        assert float(row["qc_correlation"]) == pytest.approx(spec.qc_correlation)
        group_label = dict((p[0], p[3]) for p in PARTICIPANTS)[f"sub-{spec.subject}"]
        assert row["group"] == group_label
        if spec.lengths_mm is None:
            assert row["pcs_class_left"] == row["pcs_length_mm_right"] == "n/a"
            continue
        for side, length in zip(("left", "right"), spec.lengths_mm, strict=True):
            assert row[f"pcs_class_{side}"] == class_of(length)
            assert float(row[f"pcs_length_mm_{side}"]) == pytest.approx(length)
    assert rows.at["sub-04", "sex"] == "n/a"


def test_group_summary_counts(grouped):
    _, out = grouped
    summary = json.loads((out / "group_pcs.json").read_text())
    assert summary["n_images"] == len(IMAGES)
    assert summary["n_participants"] == len(PARTICIPANTS)
    assert summary["n_sessions"] == len({(s.subject, s.session) for s in IMAGES if s.session})
    assert summary["n_images_with_pcs"] == sum(s.lengths_mm is not None for s in IMAGES)
    assert summary["n_images_qc_failed"] == sum(s.qc_correlation < QC_THRESHOLD
                                                for s in IMAGES)
    used = [s for s in IMAGES if _in_statistics(s)]
    assert summary["n_images_in_statistics"] == len(used)
    for index, side in enumerate(("left", "right")):
        expected = Counter(class_of(s.lengths_mm[index]) for s in used)
        counts = summary["prevalence"][side]["counts"]
        assert counts == {c: expected.get(c, 0) for c in ("absent", "present", "prominent")}
        with_pcs = expected["present"] + expected["prominent"]
        assert summary["prevalence"][side]["fraction_with_pcs"] == pytest.approx(
            with_pcs / len(used), abs=1e-4)
    groups = dict((p[0], p[3]) for p in PARTICIPANTS)
    assert "group" in summary["GroupedBy"]
    for label in ("control", "patient"):
        members = [s for s in used if groups[f"sub-{s.subject}"] == label]
        expected = Counter(class_of(s.lengths_mm[0]) for s in members)
        assert summary["prevalence_by"]["group"][label]["left"]["counts"] == {
            c: expected.get(c, 0) for c in ("absent", "present", "prominent")}
    assert [f["image"] for f in summary["qc_failures"]] == ["sub-02_ses-b_run-2"]
    left = [s.lengths_mm[0] for s in used]
    assert summary["length_mm"]["left"]["all"]["mean"] == pytest.approx(
        sum(left) / len(left), abs=1e-3)
    assert summary["asymmetry"]["n_left_longer"] == sum(s.lengths_mm[0] > s.lengths_mm[1]
                                                        for s in used)
    assert "pcs_class_left" in summary["Columns"]


def test_group_page_has_every_section_and_figure(grouped):
    _, out = grouped
    page = (out / "group_pcs.html").read_text()
    for anchor in ("overview", "prevalence", "by-group", "length", "asymmetry", "qc",
                   "images"):
        assert f'<section id="{anchor}"' in page, anchor
    for alt in ("PCS class prevalence per hemisphere", "PCS prevalence by group",
                "PCS prevalence by sex", "PCS length distributions per hemisphere and class",
                "Left-right asymmetry of the PCS"):
        assert f'alt="{alt}"' in page, alt
    assert len(re.findall(r"<img ", page)) == 5
    # only reports that exist are linked, to sections they hold (issue 18); the fixture
    # wrote sub-01's (the report tests may have added others to the shared cohort)
    links = set(re.findall(r'href="(sub-[^"]+)"', page))
    written = {f"{report.name}#{anchor}" for report in out.glob("sub-*.html")
               for anchor in re.findall(r'<section id="(sub-[^"]+)"', report.read_text())}
    assert "sub-01.html#sub-01" in links and links <= written, (links, written)
    unreported = [spec for spec in IMAGES
                  if not (out / f"sub-{spec.subject}.html").is_file()]
    assert unreported, "the fixture needs images without a report"
    for spec in unreported:
        assert f'href="sub-{spec.subject}.html' not in page
    n = json.loads((out / "group_pcs.json").read_text())["n_participants"]
    assert f"{n} participants · {len(IMAGES)} T1w images" in page


def test_outputs_are_bids_valid(grouped):
    _, out = grouped
    assert (out / "sub-01.html").is_file() and (out / "group_pcs.tsv").is_file()
    report = validate(out)
    assert report.ok, report.summary()


def test_browser_renders_group_page(grouped, tmp_path):
    exe = require_browser()
    _, out = grouped
    shot = screenshot_dir(tmp_path) / "group_pcs.png"
    result = check_page(out / "group_pcs.html", screenshot=shot, height=4400, browser=exe)
    assert result.ok, result.problems
    assert result.attributes["images-total"] == "5"


def test_group_from_preprocessing_outputs_alone(grouped, tmp_path):
    _, out = grouped
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(
        "*_pcs.*", "*_dseg.nii.gz", "*_probseg.nii.gz", "*.html", "group_pcs.*"))
    description = json.loads((copy / "dataset_description.json").read_text())
    description.pop("DatasetLinks")  # the raw data is gone
    (copy / "dataset_description.json").write_text(json.dumps(description))
    group.run(_settings(copy, tmp_path / "gone"))
    table = pd.read_csv(copy / "group_pcs.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert len(table) == len(IMAGES)
    assert set(table["pcs_class_left"]) == {"n/a"}
    assert "group" not in table.columns
    summary = json.loads((copy / "group_pcs.json").read_text())
    assert summary["n_images_with_pcs"] == 0
    assert summary["prevalence"]["left"]["n"] == 0
    page = (copy / "group_pcs.html").read_text()
    assert "No PCS results in this dataset yet" in page
    assert "sub-02_ses-b_run-2" in page  # the QC failure is still listed
    assert "href=\"sub-" not in page  # no subject report exists here


@pytest.mark.bad_input("disk:interrupted sets met by the group level")
def test_an_interrupted_set_is_not_taken_for_a_result(grouped, tmp_path, caplog):
    """Issue 19: an image whose set a full disk or a kill cut short is not done."""
    raw, out = grouped
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.html", "group_pcs.*"))
    anat = copy / "sub-01" / "anat"
    # inference stopped after the left map: the record (written last) and the right map gone
    (anat / "sub-01_desc-pcs_pcs.json").unlink()
    (anat / "sub-01_space-T1w_label-PCSR_probseg.nii.gz").unlink()
    # preprocessing stopped before its QC record: the crops are there, the record is not
    (qc_file,) = (copy / "sub-04" / "anat").glob("*_desc-registration_qc.json")
    qc_file.unlink()
    with caplog.at_level("WARNING", logger="bids_pcs"):
        group.run(_settings(copy, raw))
    table = pd.read_csv(copy / "group_pcs.tsv", sep="\t", dtype=str, keep_default_na=False)
    rows = table.set_index("image")
    assert "sub-04" not in rows.index and len(rows) == len(IMAGES) - 1
    assert rows.at["sub-01", "pcs_class_left"] == rows.at["sub-01", "pcs_class_right"] == "n/a"
    summary = json.loads((copy / "group_pcs.json").read_text())
    assert summary["IncompleteImages"] == {
        "sub-04": f"its preprocessing outputs are incomplete ({qc_file.name}, written last, "
                  "is missing)",
        "sub-01": "its PCS results are incomplete (sub-01_desc-pcs_pcs.json, written last, "
                  "is missing)"}
    assert summary["n_images_with_pcs"] == sum(s.lengths_mm is not None for s in IMAGES) - 2
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "sub-04: its preprocessing outputs are incomplete" in warned
    assert "left out of the group summary" in warned
    assert "sub-01: its PCS results are incomplete" in warned


def test_counts_are_worded_in_the_singular_and_plural():
    from bids_pcs.reports import html as h

    assert [h.count(n, "participant") for n in (0, 1, 2)] == [
        "0 participants", "1 participant", "2 participants"]
    assert h.count(1, "T1w image") == "1 T1w image" and h.plural(0, "session") == "sessions"


def test_no_participant_results_is_one_clear_error(tmp_path):
    empty = tmp_path / "out"
    empty.mkdir()
    with pytest.raises(InputDataError, match="holds no participant results"):
        group.run(_settings(empty))
    result = run_cli(tmp_path / "missing-raw", empty, "group")
    assert result.returncode == 1
    assert "holds no participant results" in result.stderr
    assert "Traceback" not in result.stderr


def test_asymmetry_index():
    assert asymmetry_index(30.0, 10.0) == pytest.approx(0.5)
    assert asymmetry_index(0.0, 20.0) == pytest.approx(-1.0)
    assert asymmetry_index(0.0, 0.0) is None
    assert asymmetry_index(None, 3.0) is None


def test_methods_boilerplate_is_on_the_page_and_in_citation_md(grouped):
    # fMRIPrep's boilerplate, from what the derivatives record (issue 18, item 7)
    _, out = grouped
    page = (out / "group_pcs.html").read_text()
    assert '<section id="methods"' in page
    citation = (out / "logs" / "CITATION.md").read_text()
    assert citation.startswith("# Methods (bids_pcs boilerplate)")
    for cited in ("(Avants et al., 2011)", "(Fonov et al., 2011)", "(Cardoso et al., 2022)",
                  "(Mamalakis et al., 2024)"):
        assert cited in citation, cited
        assert cited in page, cited
    assert "## References" in citation and "NeuroImage 54(3):2033-2044" in citation
    assert "[@" not in citation and "[@" not in page  # every key became a citation
    # the text follows the recorded settings: the fixture's crops are 2 mm
    qc = json.loads(next(out.glob("sub-*/anat/*_desc-registration_qc.json")).read_text())
    voxel = qc["Settings"]["crop"]["voxel_mm"]
    assert f"resampled at {voxel:g} mm" in citation


def test_adjacent_citations_share_one_parenthesis():
    from bids_pcs.reports.boilerplate import render

    texts, references = render(["A [@ants] [@n4] B [@ants]."])
    assert texts == ["A (Avants et al., 2011; Tustison et al., 2010) B (Avants et al., 2011)."]
    assert len(references) == 2 and references[0].startswith("Avants B. B.")
