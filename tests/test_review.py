"""The review queue (review.tsv, "Review first") and binary results at the group level.

The fixture cohort's outputs (:mod:`pcs_outputs`) get result tables written by
the inference writer's own row builder (:func:`bids_pcs.inference.writer.result_row`),
with chosen lengths and class probabilities: one hemisphere with an ambiguous
20.6 mm sulcus and an unsure class, one whose head contradicts its length,
one image with a borderline registration, the rest clear.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from pcs_outputs import cohort, require_browser, screenshot_dir

from bids_pcs.config import LabelSettings, load_settings
from bids_pcs.inference.predict import HemispherePrediction
from bids_pcs.inference.writer import WriteContext, result_row
from bids_pcs.io.atomic import write_json, write_text
from bids_pcs.io.derivatives import pcs_metadata_path, pcs_table_columns, pcs_table_path
from bids_pcs.levels import group
from bids_pcs.morphometry import PcsMorphometry
from bids_pcs.reports.browser import check_page
from bids_pcs.reports.results import load_results
from bids_pcs.reports.review import review_rows
from bids_pcs.reports.subject import write_subject_report

CRISP = np.zeros((4, 8, 8), dtype=np.float32)
CRISP[1:3, 2:6, 3:5] = 0.96
FUZZY = np.where(CRISP > 0, 0.6, 0.0).astype(np.float32)
# image -> hemisphere -> (length mm, class probabilities (absent, present, prominent), P(PCS))
CALLS = {
    "sub-01": {"L": (20.6, (0.40, 0.50, 0.10), FUZZY),      # ambiguous: 18-22 mm, unsure
               "R": (30.0, (0.03, 0.94, 0.03), CRISP)},
    "sub-02_ses-a": {"L": (31.0, (0.02, 0.95, 0.03), CRISP),
                     "R": (0.0, (0.96, 0.02, 0.02), CRISP * 0)},
    "sub-02_ses-b_run-1": {"L": (41.5, (0.03, 0.07, 0.90), CRISP),  # near 40 mm
                           "R": (33.0, (0.90, 0.07, 0.03), CRISP)},  # head contradicts length
    "sub-04": {"L": (12.0, (0.94, 0.04, 0.02), CRISP),
               "R": (0.0, (0.97, 0.02, 0.01), CRISP * 0)},
}
CLEAR = [("sub-01", "R"), ("sub-02_ses-a", "L"), ("sub-02_ses-a", "R")]


def _rewrite(out, images, labels: LabelSettings) -> None:
    """New-style result tables for every image with calls, in ``labels``' class scheme."""
    context = WriteContext(model={"name": "finetune-scratch-full"}, threshold=0.5,
                           flip_tta=False, labels=labels)
    k = len(labels.classes)
    for image in images:
        calls = CALLS.get(image.prefix)
        if calls is None:
            continue
        results = load_results(out, image)
        qc = {"Correlation": {"L": results.qc.correlation, "R": results.qc.correlation},
              "Passed": results.qc.passed}
        rows = []
        for hemisphere, (length, probabilities, voxels) in calls.items():
            p = np.array(probabilities[:k])
            if k == 2:
                p[1] += probabilities[2]
            prediction = HemispherePrediction(voxels, p / p.sum())
            morph = PcsMorphometry(length, 10.0 * length, int(length > 0), int(length > 0))
            rows.append(result_row(hemisphere, prediction, morph, qc, context))
        columns = pcs_table_columns(labels.classes)
        write_text(pcs_table_path(out, image), "\n".join(
            ["\t".join(columns)] + ["\t".join(r[c] for c in columns) for r in rows]) + "\n")
        metadata = json.loads(pcs_metadata_path(out, image).read_text())
        write_json(pcs_metadata_path(out, image), {**metadata, "ClassRule": "length",
                                                   "Classes": list(labels.classes)})


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory):
    raw, fixture_out, images = cohort(tmp_path_factory)
    out = tmp_path_factory.mktemp("review") / "out"
    shutil.copytree(fixture_out, out)
    _rewrite(out, images, LabelSettings())
    # sub-04's registration passed by a hair
    qc_file = next(out.glob("sub-04/anat/*_desc-registration_qc.json"))
    qc = json.loads(qc_file.read_text())
    write_json(qc_file, {**qc, "Correlation": {"L": 0.55, "R": 0.56}, "MinCorrelation": 0.55})
    for subject in ("01", "02", "04"):
        write_subject_report(out, subject)
    group.run(load_settings("default", {"run": {"output_dir": str(out),
                                                "bids_dir": str(raw)}}))
    return raw, out, images


def _queue(out) -> pd.DataFrame:
    return pd.read_csv(out / "review.tsv", sep="\t", dtype=str, keep_default_na=False)


def test_an_ambiguous_sulcus_ranks_above_every_clear_call(reviewed):
    _, out, _ = reviewed
    queue = _queue(out)
    assert list(queue["rank"]) == [str(i) for i in range(1, len(queue) + 1)]
    where = {(r.image, r.hemisphere): int(r.rank) for r in queue.itertuples()}
    ambiguous = where[("sub-01", "L")]
    assert all(ambiguous < where[clear] for clear in CLEAR)
    row = queue[(queue.image == "sub-01") & (queue.hemisphere == "L")].iloc[0]
    assert row.flagged == "true" and "0.6 mm from the 20 mm class threshold" in row.reasons
    assert "uncertain class" in row.reasons and "unsure mask" in row.reasons
    assert row.report == "sub-01.html#sub-01"
    for image, hemisphere in CLEAR:
        clear = queue[(queue.image == image) & (queue.hemisphere == hemisphere)].iloc[0]
        assert clear.flagged == "false" and clear.reasons == "n/a"
    # the failed registration comes first, as one row for the image
    assert (queue.at[0, "image"], queue.at[0, "hemisphere"]) == ("sub-02_ses-b_run-2", "n/a")
    assert queue.at[0, "reasons"].startswith("registration QC failed")


def test_a_class_that_contradicts_its_length_is_flagged_everywhere(reviewed):
    _, out, images = reviewed
    queue = _queue(out)
    row = queue[(queue.image == "sub-02_ses-b_run-1") & (queue.hemisphere == "R")].iloc[0]
    assert row.pcs_class == "present" and row.pcs_class_network == "absent"
    assert "class and length disagree (length: present, classification head: absent)" in \
        row.reasons
    table = pd.read_csv(out / "group_pcs.tsv", sep="\t", dtype=str, keep_default_na=False)
    flagged = table.set_index("image").loc["sub-02_ses-b_run-1"]
    assert flagged["class_agreement_right"] == "false" and flagged["pcs_class_right"] == "present"
    assert flagged["pcs_class_network_right"] == "absent"
    report = (out / "sub-02.html").read_text()
    assert "Class and length disagree: Right: present by its length" in report
    page = (out / "group_pcs.html").read_text()
    assert '<section id="review"' in page and "class and length disagree" in page


def test_a_borderline_registration_is_a_reason_for_both_hemispheres(reviewed):
    _, out, _ = reviewed
    queue = _queue(out)
    sub04 = queue[queue.image == "sub-04"]
    assert len(sub04) == 2 and (sub04.flagged == "true").all()
    assert sub04.reasons.str.contains(r"registration QC borderline \(correlation 0.55").all()
    # ranked after the ambiguous call (a weaker reason), before every clear one
    where = {(r.image, r.hemisphere): int(r.rank) for r in queue.itertuples()}
    assert all(where[("sub-04", h)] < min(where[c] for c in CLEAR) for h in "LR")


def test_review_first_links_to_reports_and_the_page_renders(reviewed, tmp_path):
    _, out, _ = reviewed
    page = (out / "group_pcs.html").read_text()
    section = page[page.index('<section id="review"'):page.index('<section id="prevalence"')]
    assert section.index('href="sub-02.html#sub-02_ses-b_run-2"') < section.index(
        'href="sub-01.html#sub-01"')
    # the methods paragraph says which class is reported
    assert "the class reported is the class of the measured length" in page
    meta = json.loads((out / "review.json").read_text())
    assert meta["NFlagged"] == int((_queue(out).flagged == "true").sum())
    exe = require_browser()
    shot = screenshot_dir(tmp_path) / "group_review.png"
    result = check_page(out / "group_pcs.html", screenshot=shot, browser=exe)
    assert result.ok, result.problems


def test_binary_results_give_binary_columns_and_prevalence(tmp_path_factory):
    raw, fixture_out, images = cohort(tmp_path_factory)
    out = tmp_path_factory.mktemp("binary") / "out"
    shutil.copytree(fixture_out, out)
    binary = LabelSettings(classes=("absent", "present"))
    _rewrite(out, images, binary)
    results = [load_results(out, im) for im in images if im.prefix in CALLS]
    assert all(h.classes == ("absent", "present") for r in results
               for h in r.hemispheres.values())
    # the one image without new calls keeps its 3-class table: drop it
    for stale in out.glob("sub-02/ses-b/anat/sub-02_ses-b_run-2_desc-pcs_pcs.*"):
        stale.unlink()
    group.run(load_settings("default", {"run": {"output_dir": str(out), "bids_dir": str(raw)},
                                        "labels": {"classes": ["absent", "present"]}}))
    table = pd.read_csv(out / "group_pcs.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert "p_present_left" in table.columns and not any("prominent" in c for c in table)
    summary = json.loads((out / "group_pcs.json").read_text())
    assert set(summary["prevalence"]["left"]["counts"]) == {"absent", "present"}
    # 41.5 mm is "present" in binary (no prominent), 12 mm absent
    rows = table.set_index("image")
    assert rows.at["sub-02_ses-b_run-1", "pcs_class_left"] == "present"
    assert rows.at["sub-04", "pcs_class_left"] == "absent"
    queue = review_rows(results, load_settings("default").review, thresholds=(20.0, 40.0),
                        binary=True)
    # in binary only the 20 mm threshold counts: 41.5 mm is not near a threshold any more
    assert not any("40 mm" in reason for row in queue for reason in row.reasons)
    three = review_rows(results, load_settings("default").review, thresholds=(20.0, 40.0))
    assert any("40 mm" in reason for row in three for reason in row.reasons)
    page = (out / "group_pcs.html").read_text()
    assert "prominent" not in page.split('<section id="prevalence"')[1].split("</section>")[0]
