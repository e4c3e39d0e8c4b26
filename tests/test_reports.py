"""Per-participant reports: read back from derivatives, sections, figures, browser check."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from pcs_outputs import IMAGES, class_of, cohort, require_browser, screenshot_dir

from bids_pcs.errors import InputDataError
from bids_pcs.reports import html as h
from bids_pcs.reports.browser import check_page
from bids_pcs.reports.results import collect_results, discover_images, read_pcs_table
from bids_pcs.reports.subject import write_subject_report

IMG_TAG = re.compile(r"<img [^>]*src=\"([^\"]*)\"")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return cohort(tmp_path_factory)


@pytest.fixture(scope="module")
def sub02_report(dataset) -> Path:
    _, out, images = dataset
    return write_subject_report(out, "sub-02", images)


def test_results_are_read_back_from_outputs(dataset):
    raw, out, _ = dataset
    images = discover_images(out)
    assert [im.prefix for im in images] == sorted(
        "_".join([f"sub-{s.subject}"] + ([f"ses-{s.session}"] if s.session else [])
                 + [f"{k}-{v}" for k, v in s.entities]) for s in IMAGES)
    run2 = next(im for im in images if im.prefix == "sub-02_ses-b_run-2")
    assert (run2.subject, run2.session, run2.entities) == ("02", "b", (("run", "2"),))
    # the raw path comes back from the sidecars' Sources and DatasetLinks
    assert run2.path == raw / "sub-02/ses-b/anat/sub-02_ses-b_run-2_T1w.nii.gz"
    assert run2.path.is_file()

    results = {r.image.prefix: r for r in collect_results(out)}
    first = results["sub-01"]
    spec = IMAGES[0]
    assert first.has_pcs and first.qc_passed is True
    assert first.hemispheres["L"].pcs_class == class_of(spec.lengths_mm[0])
    assert first.hemispheres["L"].length_mm == pytest.approx(spec.lengths_mm[0])
    assert first.hemispheres["R"].volume_mm3 > 0
    assert sum(first.hemispheres["L"].probabilities.values()) == pytest.approx(1, abs=1e-3)
    assert first.model["strategy"] == "lora"
    assert results["sub-02_ses-b_run-2"].qc_passed is False
    assert not results["sub-03"].has_pcs and results["sub-03"].qc_passed is True


def test_subject_report_has_a_section_per_image(sub02_report):
    page = sub02_report.read_text()
    assert sub02_report.name == "sub-02.html"
    for prefix in ("sub-02_ses-a", "sub-02_ses-b_run-1", "sub-02_ses-b_run-2"):
        assert f'<section id="{prefix}"' in page
    for text in ("Registration to MNI152NLin2009aSym", "PCS segmentation",
                 "PCS class, length and volume", "Model", "finetune-contrastive-lora",
                 "3f1c9a0be27d4c5e8b6a71f0d2e4c6a8b9d0e1f2a3b4c5d6e7f8091a2b3c4d5e",
                 "contrastive", "lora", "Registration failed QC", "bids_pcs 0.1.0"):
        assert text in page, text
    # registration, sagittal slices and overview for each of the 3 images
    sources = IMG_TAG.findall(page)
    assert len(sources) == 9
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    # opens offline: nothing is fetched from anywhere
    assert not re.search(r"(src|href)=\"(https?:)?//", page.replace(
        'href="https://github.com/bids-pcs/bids_pcs"', ""))
    assert "Content-Security-Policy" in page


def test_preprocessing_only_image_says_not_run(dataset):
    _, out, images = dataset
    page = write_subject_report(out, "03", images).read_text()
    assert "PCS inference not run" in page
    assert "Not run: no model was applied" in page
    assert "Correlation with the template" in page
    assert len(IMG_TAG.findall(page)) == 1  # the registration figure only


def test_report_from_outputs_alone(dataset, tmp_path):
    _, out, _ = dataset
    copy = tmp_path / "out"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("*.html"))
    # the raw data is gone: no DatasetLinks any more
    description = json.loads((copy / "dataset_description.json").read_text())
    description.pop("DatasetLinks")
    (copy / "dataset_description.json").write_text(json.dumps(description))

    page = write_subject_report(copy, "sub-01").read_text()
    assert "The raw T1w image is not reachable" in page
    assert len(IMG_TAG.findall(page)) == 3  # registration, mask slices, overview


def test_clear_errors(dataset, tmp_path):
    _, out, _ = dataset
    with pytest.raises(InputDataError, match="No results for sub-99"):
        write_subject_report(out, "99")
    broken = tmp_path / "sub-01_desc-pcs_pcs.tsv"
    broken.write_text("hemisphere\tpcs_class\nL\tpresent\n")
    with pytest.raises(InputDataError, match=r"sub-01_desc-pcs_pcs\.tsv lacks the column"):
        read_pcs_table(broken)


def test_browser_renders_subject_report(sub02_report, tmp_path):
    exe = require_browser()
    shot = screenshot_dir(tmp_path) / "sub-02.png"
    result = check_page(sub02_report, screenshot=shot, height=3600, browser=exe)
    assert result.ok, result.problems
    assert result.attributes["images-total"] == "9"
    assert shot.stat().st_size > 10_000


def test_browser_check_catches_broken_images_and_script_errors(tmp_path):
    exe = require_browser()
    page = h.write_page(tmp_path / "bad.html", title="t", heading="t", subtitle="", nav=[],
                        body=h.figure("data:image/png;base64,AAAA", "broken"))
    result = check_page(page, browser=exe)
    assert not result.ok
    assert result.attributes["images-broken"] == "1"
    script_error = tmp_path / "error.html"
    script_error.write_text(page.read_text().replace(
        "</body>", "<script>undefinedFunction();</script></body>"))
    result = check_page(script_error, browser=exe)
    assert any("script error" in p for p in result.problems)


def test_registration_caption_names_the_slices_its_panels_show(dataset, sub02_report):
    # issue 18: the caption said 4, 8, 12 mm while the panels of 2 mm crops showed 5, 9, 13
    import nibabel as nib
    import numpy as np

    from bids_pcs.reports.registration_figures import registration_figure

    _, out, _ = dataset
    result = next(r for r in collect_results(out) if r.image.prefix == "sub-02_ses-a")
    figure = registration_figure({hemisphere: result.crop(hemisphere) for hemisphere in "LR"})
    crop = nib.load(result.crop("L"))
    centres = crop.affine[0, 0] * np.arange(crop.shape[0]) + crop.affine[0, 3]
    expected = tuple(float(abs(centres[np.argmin(np.abs(centres + d))])) for d in (4, 8, 12))
    assert figure.sagittal_mm == {"L": expected, "R": expected}
    shown = ", ".join(f"{d:g}" for d in expected)
    assert f"sagittal slices at {shown} mm from the midline" in sub02_report.read_text()


def test_crop_panels_carry_orientation_letters_from_the_affine():
    from bids_pcs.config import load_settings
    from bids_pcs.reports.registration_figures import _ends
    from bids_pcs.spatial.crops import crop_affine

    crop = load_settings("default").crop
    left, right = crop_affine(crop, "L"), crop_affine(crop, "R")
    assert _ends(left, 0) == ("L", "R")
    assert _ends(right, 0) == ("R", "L")  # stored mirrored: x runs from right to left
    assert _ends(left, 1) == _ends(right, 1) == ("P", "A")
    assert _ends(left, 2) == ("I", "S")


def test_subject_report_carries_the_methods_boilerplate(sub02_report):
    page = sub02_report.read_text()
    assert '<section id="methods"' in page and 'href="#methods"' in page
    assert "(Avants et al., 2011)" in page and "(Mamalakis et al., 2024)" in page
    assert '<ol class="references">' in page and "[@" not in page


def test_the_rating_form_downloads_what_was_clicked_and_reads_back_as_labels(dataset,
                                                                            sub02_report,
                                                                            tmp_path):
    from bids_pcs.config import LabelSettings
    from bids_pcs.io.labels import SOURCE_RATING, read_labels
    from bids_pcs.io.ratings import RATING_COLUMNS
    from bids_pcs.reports.browser import DevToolsSession

    exe = require_browser()
    raw, _, images = dataset
    downloads = tmp_path / "ratings"
    with DevToolsSession(download_dir=downloads, browser=exe) as browser:
        browser.open(sub02_report)
        assert browser.evaluate("document.documentElement.dataset.pageCheck") == "ok"
        browser.click('input[name="decision-sub-02_ses-a-L"][value="accept"]')
        # choosing a class ticks "correct to" by itself
        browser.select_option('select[name="class-sub-02_ses-a-R"]', "present")
        browser.type_into('input[name="note-sub-02_ses-a-R"]', "faint fold,\tseen on 3 slices")
        browser.click('input[name="qc-sub-02_ses-a"][value="good"]')
        browser.click('input[name="qc-sub-02_ses-b_run-1"][value="bad"]')
        browser.type_into("#rater", "A. Rater")
        browser.click("#save-ratings-tsv")
        tsv = browser.wait_for_download()
        browser.click("#save-ratings-json")
        as_json = browser.wait_for_download()
        status = browser.evaluate("document.getElementById('ratings-status').textContent")
    assert tsv.name == "sub-02_ratings.tsv" and as_json.name == "sub-02_ratings.json"
    assert "saved 2 rated hemisphere(s)" in status
    lines = tsv.read_text().splitlines()
    assert lines[0].split("\t") == list(RATING_COLUMNS)
    rows = [dict(zip(RATING_COLUMNS, line.split("\t"), strict=True)) for line in lines[1:]]
    rated = {(r["image"], r["hemisphere"]): r for r in rows}
    left, right = rated[("sub-02_ses-a", "L")], rated[("sub-02_ses-a", "R")]
    assert (left["decision"], left["pcs_class"], left["reported_class"]) == (
        "accept", "present", "present")
    assert (right["decision"], right["pcs_class"], right["reported_class"]) == (
        "correct", "present", "absent")
    assert right["note"] == "faint fold, seen on 3 slices"  # the tab became a space
    assert {r["registration_qc"] for k, r in rated.items() if k[0] == "sub-02_ses-a"} == {"good"}
    assert rated[("sub-02_ses-b_run-1", "L")]["registration_qc"] == "bad"
    assert all(r["rater"] == "A. Rater" and r["rated_at"].endswith("Z") for r in rows)
    assert all(r["decision"] == "" for k, r in rated.items() if k[0] != "sub-02_ses-a")
    def undated(items):
        return [{k: v for k, v in item.items() if k != "rated_at"} for item in items]

    assert undated(json.loads(as_json.read_text())["Ratings"]) == undated(rows)

    # the downloads folder is a label source: rated hemispheres get the reader's class,
    # the image rated "bad" is left out, unrated images have no label
    records = read_labels(downloads, [im for im in images if im.subject == "02"],
                          LabelSettings(), bids_dir=raw, require_all=False)
    assert [r.image.prefix for r in records] == ["sub-02_ses-a"]
    assert records[0].classes == {"L": "present", "R": "present"}
    assert records[0].class_sources == {"L": SOURCE_RATING, "R": SOURCE_RATING}
