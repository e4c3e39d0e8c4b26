"""The group report ``OUTPUT_DIR/group_pcs.html``.

Sections: overview numbers, "review first" (the flagged calls of
``review.tsv``, linked to the subject reports), class prevalence per
hemisphere, prevalence by each categorical participants.tsv column, length
distributions, left-right asymmetry, the list of registration QC failures
(linked to the subject reports) and the table of every image. Class columns
follow the results' scheme (three classes, or absent / present).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bids_pcs import __version__
from bids_pcs.config import PCS_CLASSES
from bids_pcs.reports import html as h
from bids_pcs.reports.boilerplate import methods_html
from bids_pcs.reports.group_figures import (
    asymmetry_figure,
    length_figure,
    prevalence_by_figure,
    prevalence_figure,
)
from bids_pcs.reports.group_table import SIDES, statistics_rows, table_classes
from bids_pcs.reports.review import REVIEW_TSV, ReviewRow

_NO_PCS = ("No PCS results in this dataset yet: the participant level ran without --model, "
           "so only registration QC is summarised.")


def write_group_report(path: Path, table: pd.DataFrame, summary: dict[str, Any], *,
                       by_columns: Sequence[str], thresholds: tuple[float, float],
                       participants_source: str | None,
                       methods: Sequence[str] = (), review: Sequence[ReviewRow] = (),
                       review_shown: int = 25) -> Path:
    """Render the group page for ``table`` and its ``summary``; write it atomically.

    ``methods``: the boilerplate's paragraphs (:mod:`bids_pcs.reports.boilerplate`);
    ``review``: the ranked review queue (:mod:`bids_pcs.reports.review`), of which
    the first ``review_shown`` flagged rows are shown.
    """
    rows = statistics_rows(table)
    has_pcs = summary["n_images_with_pcs"] > 0
    links = _ReportLinks(Path(path).parent)
    sections = [
        ("overview", "Overview", _overview(summary, participants_source)),
        ("review", "Review first", _review(review, review_shown, links)),
        ("prevalence", "Prevalence", _prevalence(rows, summary, has_pcs)),
        ("by-group", "By group", _by_group(rows, summary, by_columns, has_pcs,
                                           participants_source)),
        ("length", "Length", _length(rows, summary, thresholds, has_pcs)),
        ("asymmetry", "Asymmetry", _asymmetry(rows, summary, thresholds, has_pcs)),
        ("qc", "QC failures", _qc_failures(table, links)),
        ("images", "All images", _all_images(table, links)),
        ("methods", "Methods", methods_html(methods)),
    ]
    titles = {"by-group": "Prevalence by participant group", "length": "PCS length",
              "asymmetry": "Left-right asymmetry", "qc": "Registration QC failures",
              "prevalence": "PCS prevalence per hemisphere"}
    body = h.join(h.section(anchor, titles.get(anchor, title), content)
                  for anchor, title, content in sections)
    n = summary["n_images"]
    return h.write_page(
        path, title="Group report · bids_pcs", heading="Paracingulate sulcus: group report",
        subtitle=f"{h.count(summary['n_participants'], 'participant')} · "
                 f"{h.count(n, 'T1w image')} · bids_pcs {__version__}",
        nav=[(anchor, title) for anchor, title, _ in sections], body=body)


def _overview(summary: dict[str, Any], participants_source: str | None) -> h.Html:
    cards = h.stat_cards([
        (h.plural(summary["n_participants"], "participant"), summary["n_participants"]),
        (h.plural(summary["n_sessions"], "session"), summary["n_sessions"]),
        (h.plural(summary["n_images"], "T1w image"), summary["n_images"]),
        ("with PCS results", summary["n_images_with_pcs"]),
        ("failed registration QC", summary["n_images_qc_failed"]),
        ("in the statistics", summary["n_images_in_statistics"])])
    source = (f"Participant columns joined from {participants_source}."
              if participants_source else
              "The raw dataset is not reachable (no BIDS_DIR and no DatasetLinks), or it has "
              "no participants.tsv: no participant columns are joined.")
    return h.join([cards, h.paragraph(
        "One row per T1w image: sessions and runs count separately. Statistics and figures "
        "leave out images without PCS results and images that failed registration QC; "
        "group_pcs.tsv lists every image. " + source, "muted")])


def _prevalence(rows: pd.DataFrame, summary: dict[str, Any], has_pcs: bool) -> h.Html:
    if not has_pcs:
        return h.notice(_NO_PCS)
    parts: list[str] = []
    classes = table_classes(rows)
    uri = prevalence_figure(rows)
    if uri:
        parts.append(h.figure(uri, "PCS class prevalence per hemisphere",
                              "Share of images per predicted class; numbers are counts."))
    table_rows = []
    for side in SIDES.values():
        entry = summary["prevalence"][side]
        counts = entry["counts"]
        table_rows.append([side.capitalize(), entry["n"],
                           *(_count_pct(counts[c], entry["n"]) for c in classes),
                           _pct(entry["fraction_with_pcs"])])
    parts.append(h.table(["Hemisphere", "Images", *classes, "With a PCS"], table_rows,
                         numeric=tuple(range(1, len(classes) + 3))))
    return h.join(parts)


def _by_group(rows: pd.DataFrame, summary: dict[str, Any], by_columns: Sequence[str],
              has_pcs: bool, participants_source: str | None) -> h.Html:
    if not has_pcs:
        return h.notice(_NO_PCS)
    if not by_columns:
        why = ("participants.tsv has no categorical column (2 to 12 text values)"
               if participants_source else "no participants.tsv was found")
        return h.notice(f"No grouping: {why}.")
    parts: list[str] = []
    for column in by_columns:
        parts.append(h.heading(f"By {column}"))
        uri = prevalence_by_figure(rows, column)
        if uri:
            parts.append(h.figure(uri, f"PCS prevalence by {column}",
                                  f"Share of images per predicted class for each value of "
                                  f"the participants.tsv column '{column}'."))
        table_rows = []
        for value, entry in summary["prevalence_by"][column].items():
            table_rows.append([value, *(f"{_pct(entry[s]['fraction_with_pcs'])} "
                                        f"(n = {entry[s]['n']})" for s in SIDES.values())])
        parts.append(h.table([column, "Left with a PCS", "Right with a PCS"], table_rows,
                             numeric=(1, 2)))
    return h.join(parts)


def _length(rows: pd.DataFrame, summary: dict[str, Any], thresholds: tuple[float, float],
            has_pcs: bool) -> h.Html:
    if not has_pcs:
        return h.notice(_NO_PCS)
    parts: list[str] = []
    uri = length_figure(rows, thresholds)
    if uri:
        parts.append(h.figure(
            uri, "PCS length distributions per hemisphere and class",
            f"PCS length along the sulcus by predicted class (box: quartiles; dots: images). "
            f"Dashed lines: the class thresholds at {thresholds[0]:g} and {thresholds[1]:g} mm."))
    table_rows = []
    for side in SIDES.values():
        for group in ("all", *table_classes(rows)):
            stats = summary["length_mm"][side][group]
            table_rows.append([side.capitalize(), group, stats["n"], h.fmt(stats["mean"]),
                               h.fmt(stats["sd"]), h.fmt(stats["median"]),
                               _range(stats["min"], stats["max"])])
    parts.append(h.table(["Hemisphere", "Class", "n", "Mean (mm)", "SD", "Median", "Range"],
                         table_rows, numeric=(2, 3, 4, 5, 6)))
    return h.join(parts)


def _asymmetry(rows: pd.DataFrame, summary: dict[str, Any], thresholds: tuple[float, float],
               has_pcs: bool) -> h.Html:
    if not has_pcs:
        return h.notice(_NO_PCS)
    stats = summary["asymmetry"]
    parts: list[str] = []
    uri = asymmetry_figure(rows, thresholds)
    if uri:
        parts.append(h.figure(
            uri, "Left-right asymmetry of the PCS",
            "Left: left against right PCS length per image (dashed: equal length). Middle: "
            "asymmetry index (L - R) / (L + R), positive when the left PCS is longer. Right: "
            "images per combination of left and right class."))
    difference = stats["length_difference_mm"]
    parts.append(h.key_values([
        ("Images with both lengths", stats["n"]),
        ("Left longer / right longer / equal",
         f"{stats['n_left_longer']} / {stats['n_right_longer']} / {stats['n_equal']}"),
        ("Mean length difference (L - R)",
         f"{h.fmt(difference['mean'])} mm (SD {h.fmt(difference['sd'])})"),
        ("Mean asymmetry index", h.fmt(stats["asymmetry_index"]["mean"], 3)),
    ]))
    return h.join(parts)


def _review(review: Sequence[ReviewRow], shown: int, links: _ReportLinks) -> h.Html:
    flagged = [row for row in review if row.flagged]
    if not flagged:
        return h.notice(f"Nothing stands out: no call is uncertain, near a class threshold or "
                        f"in disagreement with its length, and no registration is borderline "
                        f"({len(review)} row(s) ranked in {REVIEW_TSV}).", "ok")
    rows = []
    for rank, row in enumerate(flagged[:shown], start=1):
        values = row.values
        rows.append([rank, links.cell(row.participant_id, row.image),
                     row.hemisphere or "image", _class_cell(values.get("pcs_class"))
                     if values.get("pcs_class") else "n/a",
                     h.fmt(values.get("pcs_length_mm")), h.fmt(row.priority, 2),
                     "; ".join(row.reasons)])
    content = h.table(["#", "Image", "Hemisphere", "Class", "Length (mm)", "Priority", "Why"],
                      rows, numeric=(0, 4, 5), css="wide")
    more = (f" The first {shown} are shown; {REVIEW_TSV} lists all {len(flagged)}."
            if len(flagged) > shown else "")
    return h.join([
        h.paragraph(f"{len(flagged)} call(s) worth a second look, most worth it first: "
                    "uncertain classes, lengths near a class threshold, classes that "
                    "disagree with their measured length, borderline or failed registrations. "
                    "Open a report to rate the call (accept or correct); the saved rating "
                    f"files fine-tune the next model (finetune --labels).{more}", "muted"),
        h.Html(f'<div class="scroll">{content}</div>'),
    ])


def _qc_failures(table: pd.DataFrame, links: _ReportLinks) -> h.Html:
    failed = table[table["qc_passed"].map(lambda v: v is False)]
    if failed.empty:
        unknown = int(table["qc_passed"].isna().sum())
        text = "Every image passed registration QC."
        if unknown:
            text += (f" {h.count(unknown, 'image')} "
                     f"{'has' if unknown == 1 else 'have'} no QC verdict.")
        return h.notice(text, "ok")
    rows = [[links.cell(row.participant_id, row.image), row.session_id or "n/a",
             h.fmt(row.qc_correlation, 3), h.fmt(row.qc_threshold, 2)]
            for row in failed.itertuples()]
    return h.join([
        h.notice(f"{h.count(len(failed), 'image')} failed registration QC: check "
                 f"{'its subject report' if len(failed) == 1 else 'their subject reports'} "
                 "and rerun or exclude "
                 f"{'it. It is' if len(failed) == 1 else 'them. They are'} left out of the "
                 "statistics.", "bad"),
        h.table(["Image", "Session", "Correlation", "Threshold"], rows, numeric=(2, 3))])


def _all_images(table: pd.DataFrame, links: _ReportLinks) -> h.Html:
    rows = []
    for row in table.itertuples():
        qc = {True: h.badge("passed", "ok"), False: h.badge("failed", "bad")}.get(
            row.qc_passed, h.badge("n/a", "muted"))
        rows.append([links.cell(row.participant_id, row.image),
                     *(_class_cell(getattr(row, f"pcs_class_{s}")) for s in SIDES.values()),
                     *(h.fmt(getattr(row, f"pcs_length_mm_{s}")) for s in SIDES.values()),
                     h.fmt(row.pcs_asymmetry_index, 2), qc])
    content = h.table(["Image", "Left class", "Right class", "Left length (mm)",
                       "Right length (mm)", "Asymmetry", "Registration QC"], rows,
                      numeric=(3, 4, 5), css="wide")
    return h.Html(f'<div class="scroll">{content}</div>')


class _ReportLinks:
    """Links to the subject reports that exist and hold the image's section, plain text else.

    Images without a report (the demo's training participants: preprocessed, never
    inferred) would otherwise link to a page that was never written.
    """

    def __init__(self, output_dir: Path) -> None:
        self._output_dir = output_dir
        self._pages: dict[str, str] = {}

    def cell(self, participant_id: str, image: str) -> h.Html:
        if participant_id not in self._pages:
            page = self._output_dir / f"{participant_id}.html"
            try:
                self._pages[participant_id] = page.read_text(encoding="utf-8")
            except OSError:
                self._pages[participant_id] = ""
        if f'id="{h.esc(image)}"' in self._pages[participant_id]:
            return h.link(f"{participant_id}.html#{image}", image)
        return h.esc(image)


def _class_cell(value: object) -> h.Html:
    if isinstance(value, str) and value in PCS_CLASSES:
        return h.badge(value, value)
    return h.badge("not run", "muted")


def _count_pct(count: int, n: int) -> str:
    return f"{count} ({count / n:.0%})" if n else "0"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _range(low: float | None, high: float | None) -> str:
    return "n/a" if low is None or high is None else f"{h.fmt(low)} – {h.fmt(high)}"
