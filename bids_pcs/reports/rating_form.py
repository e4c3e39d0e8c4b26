"""The offline rating form of a participant report, in the spirit of MRIQC's rating widget.

Per image: a registration QC rating (good / questionable / bad) and, per
hemisphere, *accept* the reported class or *correct* it to another one, with a
free note. At the end of the page the reader types their name and saves every
rating of the page as ``sub-<label>_ratings.tsv`` or ``.json``: the browser
builds the file and downloads it; nothing is sent anywhere (the page's
Content-Security-Policy forbids any connection). The columns are those of
:data:`bids_pcs.io.ratings.RATING_COLUMNS`, which the script receives from
here, so the form and the reader of rating files cannot drift apart; a folder
of such files is a label source for ``finetune --labels``.

Usage::

    parts.append(image_form(result, classes))          # in each image section
    body.append(save_section(subject, classes))        # once, at the end of the page
"""

from __future__ import annotations

import json

from bids_pcs.config import HEMISPHERES
from bids_pcs.io.ratings import RATING_COLUMNS, RATINGS_FORMAT_VERSION, REGISTRATION_RATINGS
from bids_pcs.reports import html as h
from bids_pcs.reports.figures import HEMISPHERE_NAMES
from bids_pcs.reports.results import ImageResults

SECTION_ID = "ratings"


def ratings_file_stem(subject: str) -> str:
    """``sub-<label>_ratings``: the name the download gets (``.tsv`` or ``.json``)."""
    return f"sub-{subject}_ratings"


def image_form(result: ImageResults, classes: tuple[str, ...]) -> h.Html:
    """The rating part of one image's section (hemisphere calls only when inference ran)."""
    image = result.image
    prefix = image.prefix
    qc_choices = "".join(
        f'<label><input type="radio" name="qc-{h.esc(prefix)}" value="{value}"> {value}</label>'
        for value in REGISTRATION_RATINGS)
    hemispheres = []
    for hemisphere in HEMISPHERES:
        hemi = result.hemispheres.get(hemisphere)
        reported = hemi.pcs_class if hemi is not None else None
        if reported is None:
            continue
        name = f"{prefix}-{hemisphere}"
        options = "".join(f'<option value="{c}"{" selected" if c == reported else ""}>{c}'
                          f"</option>" for c in classes)
        hemispheres.append(
            f'<fieldset class="call" data-hemisphere="{hemisphere}" '
            f'data-reported="{h.esc(reported)}">'
            f"<legend>{h.esc(HEMISPHERE_NAMES[hemisphere].capitalize())} PCS: "
            f"{h.badge(reported, reported)}</legend>"
            f'<label><input type="radio" name="decision-{h.esc(name)}" value="accept"> '
            f"accept</label>"
            f'<label><input type="radio" name="decision-{h.esc(name)}" value="correct"> '
            f'correct to</label> <select name="class-{h.esc(name)}" '
            f'aria-label="corrected class">{options}</select>'
            f'<input type="text" class="note" name="note-{h.esc(name)}" '
            f'placeholder="note (optional)" aria-label="note"></fieldset>')
    calls = "".join(hemispheres) or (
        '<p class="muted">No PCS call to rate: inference has not run for this image.</p>')
    return h.Html(
        f'<form class="rating" data-image="{h.esc(prefix)}" '
        f'data-participant="sub-{h.esc(image.subject)}" '
        f'data-session="{h.esc(f"ses-{image.session}" if image.session else "")}" '
        f'data-model="{h.esc(result.model.get("name", ""))}" onsubmit="return false">'
        f"<h3>Your rating</h3>"
        f'<fieldset class="qc"><legend>Registration</legend>{qc_choices}</fieldset>'
        f"{calls}</form>")


def save_section(subject: str, classes: tuple[str, ...]) -> h.Html:
    """The section that saves every rating of the page (the name of the rater, two buttons)."""
    stem = ratings_file_stem(subject)
    config = json.dumps({"columns": list(RATING_COLUMNS), "stem": stem,
                         "version": RATINGS_FORMAT_VERSION, "classes": list(classes)})
    content = h.join([
        h.paragraph(
            "Rate each image above (registration, and accept or correct each hemisphere's "
            "class), then save the ratings: the browser writes the file into your downloads "
            "folder; nothing is sent anywhere. A folder of rating files is a label source: "
            "bids_pcs BIDS_DIR OUTPUT_DIR finetune --labels RATINGS_FOLDER (accepted and "
            "corrected classes become labels; images rated bad are left out).", "muted"),
        h.Html('<div class="rating-save"><label>Rater <input type="text" id="rater" '
               'placeholder="your name or initials" aria-label="rater"></label> '
               f'<button type="button" id="save-ratings-tsv">Save ratings ({stem}.tsv)'
               '</button> <button type="button" id="save-ratings-json">Save as JSON'
               '</button> <span id="ratings-status" class="muted"></span></div>'),
        h.Html(f"<style>{_CSS}</style>"),
        h.Html(f'<script>var BIDS_PCS_RATINGS = {config};{_SCRIPT}</script>'),
    ])
    return h.section(SECTION_ID, "Ratings", content)


_CSS = """
form.rating { border-top: 1px dashed #d1d5db; margin-top: 14px; padding-top: 4px; }
form.rating fieldset { border: 1px solid #e5e7eb; border-radius: 6px; margin: 6px 0;
                       padding: 6px 12px; display: flex; flex-wrap: wrap; gap: 6px 16px;
                       align-items: center; }
form.rating legend { font-weight: 600; font-size: 14px; padding: 0 4px; }
form.rating label { font-size: 14px; white-space: nowrap; }
form.rating input.note { flex: 1 1 260px; min-width: 200px; padding: 3px 6px; }
.rating-save { display: flex; flex-wrap: wrap; gap: 10px; align-items: center; margin: 8px 0; }
.rating-save button { padding: 5px 12px; border-radius: 5px; border: 1px solid #1f3f7a;
                      background: #1f3f7a; color: #ffffff; font-weight: 600; cursor: pointer; }
.rating-save button + button { background: #ffffff; color: #1f3f7a; }
"""

# Builds one row per hemisphere (and per image with only a registration rating) in
# the columns given by Python, and saves it through a Blob download: no network.
_SCRIPT = """
(function () {
  var config = BIDS_PCS_RATINGS;
  function checked(root, prefix) {
    var box = root.querySelector('input[type="radio"][name^="' + prefix + '-"]:checked');
    return box ? box.value : "";
  }
  function rows() {
    var rater = document.getElementById("rater").value.trim();
    var now = new Date().toISOString();
    var out = [];
    document.querySelectorAll("form.rating").forEach(function (form) {
      var base = {image: form.dataset.image, participant_id: form.dataset.participant,
                  session_id: form.dataset.session, registration_qc: checked(form, "qc"),
                  rater: rater, rated_at: now, model: form.dataset.model};
      var calls = form.querySelectorAll("fieldset.call");
      if (!calls.length && base.registration_qc) { out.push(base); }
      calls.forEach(function (call) {
        var decision = checked(call, "decision");
        var chosen = call.querySelector("select").value;
        var row = Object.assign({}, base, {
          hemisphere: call.dataset.hemisphere, decision: decision,
          reported_class: call.dataset.reported,
          pcs_class: decision === "accept" ? call.dataset.reported :
                     decision === "correct" ? chosen : "",
          note: call.querySelector("input.note").value});
        out.push(row);
      });
    });
    return out;
  }
  function clean(value) {
    return String(value === undefined ? "" : value).replace(/\\s+/g, " ").trim();
  }
  function tsv(items) {
    var lines = [config.columns.join("\\t")];
    items.forEach(function (row) {
      lines.push(config.columns.map(function (c) { return clean(row[c]); }).join("\\t"));
    });
    return lines.join("\\n") + "\\n";
  }
  function json(items) {
    var ratings = items.map(function (row) {
      var out = {};
      config.columns.forEach(function (c) { out[c] = clean(row[c]); });
      return out;
    });
    return JSON.stringify({BidsPcsRatings: config.version, Ratings: ratings}, null, 1) + "\\n";
  }
  function save(kind) {
    var items = rows();
    var text = kind === "json" ? json(items) : tsv(items);
    var type = kind === "json" ? "application/json" : "text/tab-separated-values";
    var link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([text], {type: type + ";charset=utf-8"}));
    link.download = config.stem + "." + kind;
    document.body.appendChild(link);
    link.click();
    setTimeout(function () { URL.revokeObjectURL(link.href); link.remove(); }, 1000);
    var rated = items.filter(function (row) { return row.decision; }).length;
    document.getElementById("ratings-status").textContent =
      "saved " + rated + " rated hemisphere(s) to " + link.download;
  }
  document.querySelectorAll("form.rating select").forEach(function (select) {
    select.addEventListener("change", function () {
      var box = select.closest("fieldset").querySelector('input[value="correct"]');
      if (box) { box.checked = true; }
    });
  });
  document.getElementById("save-ratings-tsv").addEventListener("click", function () {
    save("tsv");
  });
  document.getElementById("save-ratings-json").addEventListener("click", function () {
    save("json");
  });
})();
"""
