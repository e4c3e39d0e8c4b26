"""The per-participant report ``OUTPUT_DIR/sub-<label>.html``.

One section per T1w image: registration QC (template outlines over the crops
and the QC verdict), the PCS mask over the native T1w (sagittal slices per
hemisphere and projections), the reported class with the classification
head's and the length's classes beside it (a disagreement flagged), the class
probabilities, uncertainty, length and volume per hemisphere, the model's
provenance, and an offline rating form (:mod:`bids_pcs.reports.rating_form`)
whose ratings the "Ratings" section saves as a file. Everything is read from
the derivative files on disk, so the report can be rebuilt from OUTPUT_DIR
alone; an image without a model (a preprocessing-only run) gets its
registration QC and a "not run" note.

Usage::

    write_subject_report(Path("/out"), "01", images)   # -> /out/sub-01.html
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from bids_pcs import __version__
from bids_pcs.config import BINARY_CLASSES, HEMISPHERES, PCS_CLASSES, TEMPLATE_NAME, LabelSettings
from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import T1wImage, normalise_label
from bids_pcs.io.derivatives import (
    pcs_metadata_path,
    pcs_table_path,
    registration_qc_path,
)
from bids_pcs.reports import html as h
from bids_pcs.reports.boilerplate import methods_from_results, methods_html
from bids_pcs.reports.figures import (
    HEMISPHERE_COLOURS,
    HEMISPHERE_NAMES,
    OUTLINE_COLOURS,
)
from bids_pcs.reports.pcs_figures import load_native, projection_figure, sagittal_figure
from bids_pcs.reports.rating_form import SECTION_ID as RATINGS_SECTION
from bids_pcs.reports.rating_form import image_form, save_section
from bids_pcs.reports.registration_figures import registration_figure
from bids_pcs.reports.results import (
    ImageResults,
    discover_images,
    find_raw_dataset,
    load_results,
)

LOGGER = logging.getLogger("bids_pcs.reports")
_ENTITY_NAMES = {"acq": "Acquisition", "ce": "Contrast agent", "rec": "Reconstruction",
                 "run": "Run"}


def subject_report_path(output_dir: Path, subject: str) -> Path:
    """``OUTPUT_DIR/sub-<label>.html``."""
    return Path(output_dir) / f"sub-{normalise_label(subject, 'sub')}.html"


def write_subject_report(output_dir: Path, subject: str,
                         images: Sequence[T1wImage] | None = None, *,
                         labels: LabelSettings | None = None) -> Path:
    """Write the report of one participant from its derivatives; return its path.

    Args:
        output_dir: the derivative dataset (OUTPUT_DIR).
        subject: participant label, with or without ``sub-``.
        images: the participant's T1w images (their raw paths give the native
            T1w under the masks); by default every image with results in
            ``output_dir``, the T1w found through ``DatasetLinks`` if reachable.
        labels: label map of the dseg (default: the recipe's defaults).

    Raises:
        InputDataError: when neither ``images`` nor ``output_dir`` name any image
            of this participant.
    """
    output_dir = Path(output_dir)
    subject = normalise_label(subject, "sub")
    labels = labels or LabelSettings()
    chosen = [im for im in images if im.subject == subject] if images is not None \
        else discover_images(output_dir, subject)
    if not chosen:
        raise InputDataError(f"No results for sub-{subject} in {output_dir}; run the "
                             "participant level for this participant first.")
    raw_dir = find_raw_dataset(output_dir)
    results = [load_results(output_dir, image) for image in chosen]
    dseg_labels = {"L": labels.dseg_left, "R": labels.dseg_right}

    classes = _classes(results, labels)
    body = [_overview(results)]
    body += [_image_section(result, raw_dir, dseg_labels, labels, classes)
             for result in results]
    body.append(save_section(subject, classes))
    body.append(h.section("methods", "Methods",
                          methods_html(methods_from_results(results, output_dir))))
    body.append(_about(results))
    nav = [("overview", "Overview")] + [(r.image.prefix, _short_name(r.image))
                                        for r in results] + [
        (RATINGS_SECTION, "Ratings"), ("methods", "Methods"), ("about", "About")]
    n = len(results)
    path = subject_report_path(output_dir, subject)
    h.write_page(path, title=f"sub-{subject} · bids_pcs", heading=f"Participant sub-{subject}",
                 subtitle=f"Paracingulate sulcus report · {h.count(n, 'T1w image')}",
                 nav=nav, body=h.join(body))
    LOGGER.info("Report written to %s", path)
    return path


def _overview(results: list[ImageResults]) -> h.Html:
    rows = []
    for result in results:
        row: list[object] = [h.link(f"#{result.image.prefix}", result.image.prefix),
                             _qc_badge(result)]
        for hemisphere in HEMISPHERES:
            hemi = result.hemispheres.get(hemisphere)
            row.append(_class_badge(hemi.pcs_class if hemi else None, result.has_pcs))
        for hemisphere in HEMISPHERES:
            hemi = result.hemispheres.get(hemisphere)
            row.append(h.fmt(hemi.length_mm if hemi else None))
        rows.append(row)
    content = h.table(["Image", "Registration QC", "Left PCS", "Right PCS", "Left length (mm)",
                       "Right length (mm)"], rows, numeric=(4, 5))
    return h.section("overview", "Overview", content)


def _classes(results: list[ImageResults], labels: LabelSettings) -> tuple[str, ...]:
    """The class scheme the page's tables and forms use: the results' own, else the settings'."""
    schemes = {hemi.classes for r in results for hemi in r.hemispheres.values()}
    return next(iter(schemes)) if len(schemes) == 1 else tuple(labels.classes)


def _image_section(result: ImageResults, raw_dir: Path | None, dseg_labels: dict[str, int],
                   labels: LabelSettings, classes: tuple[str, ...]) -> h.Html:
    image = result.image
    facts = [("Participant", f"sub-{image.subject}"),
             ("Session", f"ses-{image.session}" if image.session else "n/a")]
    facts += [(_ENTITY_NAMES.get(key, key), value) for key, value in image.entities]
    facts.append(("Source", h.mono(image.bids_uri if image.relpath else image.prefix)))
    parts = [h.key_values(facts),
             _registration_part(result),
             _segmentation_part(result, raw_dir, dseg_labels),
             _classification_part(result, labels),
             _model_part(result),
             _files_part(result),
             image_form(result, classes)]
    return h.section(image.prefix, image.prefix, h.join(parts))


def registration_path_sentence(record: dict) -> str:
    """How the image was registered, from its QC record ("" for records that do not say)."""
    if "SkullStripped" not in record:
        return ""
    stripped = bool(record["SkullStripped"])
    how = ("detected" if record.get("SkullStrippedDecidedBy") == "detected"
           else f"--skull-stripped {'yes' if stripped else 'no'}")
    share = record.get("TissueOutsideBrain")
    if share is not None:
        how += f"; tissue outside the brain {share:.2f} of its volume"
    if stripped:
        return f"Input skull-stripped ({how}): registered as it is, brain to brain."
    return f"Input with skull ({how}): registered through a rough brain mask."


def _registration_part(result: ImageResults) -> h.Html:
    parts = [h.heading(f"Registration to {TEMPLATE_NAME}")]
    qc = result.qc
    if qc is None:
        parts.append(h.notice("Registration QC not available: no "
                              f"{registration_qc_path(result.output_dir, result.image).name}."))
    else:
        verdict = {True: ("passed", "ok"), False: ("failed", "bad"), None: ("unknown", "muted")}
        text, kind = verdict[qc.passed]
        threshold = f" (threshold {h.fmt(qc.threshold, 2)})" if qc.threshold is not None else ""
        parts.append(h.Html(
            f"<p>Correlation with the template inside the crop boxes: "
            f"<strong>{h.esc(h.fmt(qc.correlation, 3))}</strong>{h.esc(threshold)} "
            f"{h.badge(text, kind)}</p>"))
        path = registration_path_sentence(result.qc_record)
        if path:
            parts.append(h.Html(f"<p>{h.esc(path)}</p>"))
        if qc.passed is False:
            parts.append(h.notice("Registration failed QC: check the outlines below before "
                                  "trusting this image's PCS results.", "bad"))
    crops = {hemisphere: result.crop(hemisphere) for hemisphere in HEMISPHERES}
    figure = registration_figure(crops)
    if figure:
        positions = {", ".join(f"{d:g}" for d in distances)
                     for distances in figure.sagittal_mm.values()}
        where = (f"{positions.pop()} mm" if len(positions) == 1 else
                 "; ".join(f"{HEMISPHERE_NAMES[k]} {', '.join(f'{d:g}' for d in v)} mm"
                           for k, v in figure.sagittal_mm.items()))
        parts.append(h.figure(
            figure.uri, f"Registration QC of {result.image.prefix}",
            f"Medial frontal crops in {TEMPLATE_NAME} space, as the network sees them "
            f"(the right crop mirrored). Outlines of the template: "
            f"{_colour_name(OUTLINE_COLOURS['brain'])} = brain (grey + white matter), "
            f"{_colour_name(OUTLINE_COLOURS['white'])} = white matter. Per hemisphere, "
            f"sagittal slices at {where} from the midline, then a coronal and an axial "
            "slice through the centre of the crop, laid on their side at twice the scale; "
            "letters mark the directions (R/L, A/P, S/I). After a good registration the "
            "outlines follow the sulci and the grey/white boundary."))
    else:
        parts.append(h.notice("No crop found: preprocessing has not run for this image."))
    return h.join(parts)


def _segmentation_part(result: ImageResults, raw_dir: Path | None,
                       dseg_labels: dict[str, int]) -> h.Html:
    parts = [h.heading("PCS segmentation")]
    if not result.dseg.is_file():
        parts.append(h.notice("PCS inference not run for this image (the participant level "
                              "ran without --model)."))
        return h.join(parts)
    t1w = _native_t1w(result, raw_dir)
    volumes = load_native(result.dseg, t1w, {hm: result.probseg(hm) for hm in HEMISPHERES})
    if volumes.t1w is None:
        parts.append(h.notice("The raw T1w image is not reachable (or its grid differs from "
                              "the mask's): masks are shown without anatomy.", "warn"))
    legend = ", ".join(f"{HEMISPHERE_NAMES[hm]} PCS in {_colour_name(HEMISPHERE_COLOURS[hm])}"
                       for hm in HEMISPHERES)
    parts.append(h.figure(
        sagittal_figure(volumes, dseg_labels), f"PCS mask of {result.image.prefix}",
        f"Sagittal slices of the native T1w through each hemisphere's PCS (anterior to the "
        f"right). Colour: probability of PCS ({legend}); white line: the PCS mask. Rows without "
        "a mask show slices near the midline."))
    parts.append(h.figure(
        projection_figure(volumes, dseg_labels), f"PCS overview of {result.image.prefix}",
        "Overview: maximum-intensity projections of the PCS masks over the mean-intensity "
        "projections of the T1w (neurological convention: left on the left)."))
    return h.join(parts)


def _classification_part(result: ImageResults, labels: LabelSettings) -> h.Html:
    parts = [h.heading("PCS class, length and volume")]
    if not result.has_pcs:
        parts.append(h.notice("Not run: classes and measures come with PCS inference "
                              f"({pcs_table_path(result.output_dir, result.image).name})."))
        return h.join(parts)
    classes = next((hemi.classes for hemi in result.hemispheres.values()), PCS_CLASSES)
    rows, sureness = [], []
    disagreements = []
    for hemisphere in HEMISPHERES:
        hemi = result.hemispheres.get(hemisphere)
        name = HEMISPHERE_NAMES[hemisphere].capitalize()
        if hemi is None:
            rows.append([name, *(["n/a"] * (len(classes) + 4))])
            continue
        label = h.join([h.swatch(HEMISPHERE_COLOURS[hemisphere]), name])
        flag = h.badge("disagree", "bad") if hemi.classes_agree is False else ""
        if hemi.classes_agree is False:
            disagreements.append(
                f"{name}: {hemi.length_class} by its length ({h.fmt(hemi.length_mm)} mm) but "
                f"{hemi.network_class} by the classification head")
        rows.append([label, h.join([_class_badge(hemi.pcs_class, True), " ", flag]),
                     f"{hemi.network_class or 'n/a'} / {hemi.length_class or 'n/a'}",
                     *(h.probability_bar(hemi.probabilities.get(c)) for c in classes),
                     h.fmt(hemi.length_mm), h.fmt(hemi.volume_mm3, 0)])
        sureness.append([label, h.fmt(hemi.class_entropy, 2), h.fmt(hemi.mask_uncertainty, 2),
                         h.fmt(hemi.flip_agreement, 2)])
    n = len(classes)
    parts.append(h.table(["Hemisphere", "Class", "Head / length", *(f"P({c})" for c in classes),
                          "Length (mm)", "Volume (mm³)"], rows, numeric=(3 + n, 4 + n)))
    if sureness:
        parts.append(h.table(["Hemisphere", "Class entropy", "Mask uncertainty",
                              "Flip agreement"], sureness, numeric=(1, 2, 3)))
    if disagreements:
        parts.append(h.notice("Class and length disagree: " + "; ".join(disagreements)
                              + ". Check the slices above and rate the call below.", "warn"))
    parts.append(h.paragraph(_class_rule_text(result, labels), "muted"))
    return h.join(parts)


def _class_rule_text(result: ImageResults, labels: LabelSettings) -> str:
    metadata = result.pcs_metadata
    thresholds = metadata.get("Thresholds") or {}
    present = thresholds.get("present_min_mm", labels.present_min_mm)
    prominent = thresholds.get("prominent_min_mm", labels.prominent_min_mm)
    binary = tuple(metadata.get("Classes") or labels.classes) == BINARY_CLASSES
    protocol = (f"By length, a PCS is absent below {present:g} mm and present from "
                f"{present:g} mm (binary presence call)." if binary else
                f"By length, a PCS is absent below {present:g} mm, present from {present:g} "
                f"to {prominent:g} mm and prominent above {prominent:g} mm (Yücel et al. 2001).")
    rule = metadata.get("ClassRule")
    if rule == "length":
        chosen = ("The class shown is the class of the measured length; the classification "
                  "head's class and probabilities are shown beside it.")
    elif rule == "network":
        chosen = ("The class shown is the classification head's"
                  + (" (this model learnt no segmentation: it was trained on class labels "
                     "only, so no length is measured)." if metadata.get("SegmentationTrained")
                     is False else "."))
    else:
        chosen = "The class shown is the network's prediction."
    return ("Length is measured along the sulcus (the mask's skeleton). " + protocol + " "
            + chosen + " Head / length: the classification head's class and the class of "
            "the measured length. Class entropy: 0 certain, 1 uniform; mask uncertainty: share of "
            "unsure candidate PCS voxels; flip agreement (with flip test-time augmentation "
            "only): Dice of the masks of the crop and of its mirror image.")



def _model_part(result: ImageResults) -> h.Html:
    parts = [h.heading("Model")]
    if not result.has_pcs:
        parts.append(h.notice("Not run: no model was applied to this image."))
        return h.join(parts)
    model = result.model
    if not model:
        parts.append(h.notice("The model is not recorded: "
                              f"{pcs_metadata_path(result.output_dir, result.image).name} "
                              "is missing or has no Model entry.", "warn"))
        return h.join(parts)
    pairs: list[tuple[str, object]] = [
        ("Name", model.get("name", "n/a")),
        ("Stage", model.get("stage", "n/a")),
        ("Pre-training method", model.get("method", "n/a")),
        ("Fine-tuning strategy", model.get("strategy", "n/a")),
        ("Weights SHA-256", h.mono(str(model.get("sha256", "n/a")))),
        ("Trained with", f"bids_pcs {model['version']}" if model.get("version") else "n/a"),
        ("Flip test-time augmentation", _yes_no(result.pcs_metadata.get("FlipTTA"))),
        ("Inference software", f"bids_pcs {result.pcs_metadata.get('SoftwareVersion', 'n/a')}"),
    ]
    parts.append(h.key_values(pairs))
    return h.join(parts)


def _files_part(result: ImageResults) -> h.Html:
    candidates = [result.crop("L"), result.crop("R"), result.dseg, result.probseg("L"),
                  result.probseg("R"), pcs_table_path(result.output_dir, result.image),
                  pcs_metadata_path(result.output_dir, result.image),
                  registration_qc_path(result.output_dir, result.image)]
    present = [p for p in candidates if p.is_file()]
    if not present:
        return h.Html("")
    items = "".join(
        f"<li>{h.link(p.relative_to(result.output_dir).as_posix(), p.name)}</li>"
        for p in present)
    return h.join([h.heading("Files"), h.Html(f"<ul class=\"files\">{items}</ul>")])


def _about(results: list[ImageResults]) -> h.Html:
    versions = sorted({str(r.pcs_metadata["SoftwareVersion"]) for r in results
                       if r.pcs_metadata.get("SoftwareVersion")})
    pairs = [("Report generated by", f"bids_pcs {__version__}"),
             ("Inference by", ", ".join(f"bids_pcs {v}" for v in versions) or "n/a"),
             ("Template", f"{TEMPLATE_NAME} (ICBM 2009a nonlinear symmetric)"),
             ("Method", "Mamalakis et al., arXiv:2405.19204 (2024)")]
    return h.section("about", "About", h.key_values(pairs))


def _native_t1w(result: ImageResults, raw_dir: Path | None) -> Path | None:
    image = result.image
    if image.path.is_file():
        return image.path
    if raw_dir is not None and image.relpath and (raw_dir / image.relpath).is_file():
        return raw_dir / image.relpath
    return None


def _qc_badge(result: ImageResults) -> h.Html:
    if result.qc is None or result.qc.passed is None:
        return h.badge("n/a", "muted")
    return h.badge("passed", "ok") if result.qc.passed else h.badge("failed", "bad")


def _class_badge(pcs_class: str | None, ran: bool) -> h.Html:
    if not ran:
        return h.badge("not run", "muted")
    if pcs_class is None:
        return h.badge("n/a", "muted")
    return h.badge(pcs_class, pcs_class)


def _short_name(image: T1wImage) -> str:
    # the nav bar shows what distinguishes the images of one participant
    parts = [f"ses-{image.session}"] if image.session else []
    parts += [f"{k}-{v}" for k, v in image.entities]
    return " ".join(parts) or "T1w"


def _yes_no(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "n/a"


def _colour_name(colour: str) -> str:
    names = {HEMISPHERE_COLOURS["L"]: "red", HEMISPHERE_COLOURS["R"]: "green",
             OUTLINE_COLOURS["brain"]: "red", OUTLINE_COLOURS["white"]: "blue"}
    return names.get(colour, colour)
