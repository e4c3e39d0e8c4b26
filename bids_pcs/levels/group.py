"""The group analysis level: a cohort summary from the participant outputs alone.

Reads every image's results from OUTPUT_DIR (the raw data may be gone) and
writes, atomically:

- ``group_pcs.tsv``: one row per T1w image (participant, session, entities,
  classes and probabilities, length and volume per hemisphere, QC verdict),
  joined with the raw participants.tsv when the raw dataset is reachable
  (BIDS_DIR, else ``DatasetLinks.raw`` of OUTPUT_DIR/dataset_description.json);
- ``group_pcs.json``: the summary numbers and a description of every column;
- ``review.tsv`` (+ ``review.json``): every call ranked by how much a second
  look is worth (:mod:`bids_pcs.reports.review`);
- ``group_pcs.html``: the figures and the "review first" list (see
  :mod:`bids_pcs.reports.group_page`).

The columns adapt to the class scheme of the results (three classes, or the
binary absent / present).
"""

from __future__ import annotations

import logging
from pathlib import Path

from bids_pcs import APP_NAME, __version__
from bids_pcs.config import BINARY_CLASSES, Settings
from bids_pcs.errors import InputDataError
from bids_pcs.io.atomic import write_json, write_text
from bids_pcs.reports.boilerplate import methods_from_results, write_citation
from bids_pcs.reports.group_page import write_group_report
from bids_pcs.reports.group_table import (
    COLUMN_DESCRIPTIONS,
    categorical_columns,
    group_table,
    participant_columns,
    read_participants,
    summarise,
    table_classes,
    to_tsv,
)
from bids_pcs.reports.results import collect_results, find_raw_dataset
from bids_pcs.reports.review import (
    REVIEW_COLUMNS,
    REVIEW_JSON,
    REVIEW_TSV,
    review_rows,
    review_tsv,
)

LOGGER = logging.getLogger("bids_pcs.group")

GROUP_TSV = "group_pcs.tsv"
GROUP_JSON = "group_pcs.json"
GROUP_HTML = "group_pcs.html"


def run(settings: Settings) -> None:
    """Summarise the participant outputs in ``settings.run.output_dir``.

    Raises:
        InputDataError: when OUTPUT_DIR holds no participant results.
    """
    output_dir = Path(settings.run.output_dir)
    found = collect_results(output_dir)
    if not found:
        raise InputDataError(
            f"OUTPUT_DIR {output_dir} holds no participant results (no sub-*/anat/*_pcs.tsv, "
            "*_qc.json or crops); run the participant level into it first.")
    # a set interrupted mid-way (a full disk, a killed run) is not a result
    incomplete = {r.image.prefix: r.incomplete for r in found if not r.complete}
    for prefix, problem in incomplete.items():
        LOGGER.warning("%s: %s; left out of the group summary (rerun the participant level "
                       "for it to complete it).", prefix, problem)
    for result in found:
        if result.complete and result.pcs_incomplete:
            LOGGER.warning("%s: %s; listed without PCS results (rerun the participant level "
                           "with --model to complete them).", result.image.prefix,
                           result.pcs_incomplete)
            incomplete[result.image.prefix] = result.pcs_incomplete
    results = [r for r in found if r.complete]
    if not results:
        listed = "; ".join(f"{prefix}: {problem}" for prefix, problem in incomplete.items())
        raise InputDataError(
            f"OUTPUT_DIR {output_dir} holds no complete participant results ({listed}); "
            "rerun the participant level to complete them.")
    raw_dir = find_raw_dataset(output_dir, settings.run.bids_dir or None)
    participants = read_participants(raw_dir)
    table = group_table(results, participants)
    extra_columns = participant_columns(table)
    by_columns = categorical_columns(table, extra_columns)
    summary = summarise(table, by_columns)
    thresholds = _thresholds(results, settings)
    participants_source = str(raw_dir / "participants.tsv") if participants is not None else None
    review = review_rows(results, settings.review, thresholds=thresholds,
                         binary=table_classes(table) == BINARY_CLASSES)

    write_text(output_dir / GROUP_TSV, to_tsv(table))
    write_json(output_dir / GROUP_JSON, {
        "GeneratedBy": {"Name": APP_NAME, "Version": __version__},
        "ParticipantsSource": participants_source,
        "Thresholds": {"present_min_mm": thresholds[0], "prominent_min_mm": thresholds[1]},
        "GroupedBy": by_columns,
        **summary,
        "IncompleteImages": incomplete,
        "Columns": {c: COLUMN_DESCRIPTIONS.get(c, "from participants.tsv of the raw dataset")
                    for c in table.columns},
    })
    write_text(output_dir / REVIEW_TSV, review_tsv(review))
    write_json(output_dir / REVIEW_JSON, {
        "Description": "Calls ranked by how much a second look is worth; see the reasons "
                       "and weights in the bids_pcs documentation (review queue).",
        "Settings": settings.to_dict()["review"],
        "Thresholds": {"present_min_mm": thresholds[0], "prominent_min_mm": thresholds[1]},
        "NFlagged": sum(1 for row in review if row.flagged),
        "Columns": REVIEW_COLUMNS,
    })
    methods = methods_from_results(results, output_dir)
    write_group_report(output_dir / GROUP_HTML, table, summary, by_columns=by_columns,
                       thresholds=thresholds, participants_source=participants_source,
                       methods=methods, review=review, review_shown=settings.review.shown)
    write_citation(output_dir, methods)
    LOGGER.info("Group summary of %d image(s) from %d participant(s): %s, %s, %s; %d call(s) "
                "flagged for review in %s", summary["n_images"], summary["n_participants"],
                GROUP_TSV, GROUP_JSON, GROUP_HTML, sum(1 for row in review if row.flagged),
                REVIEW_TSV)
    if summary["n_images_qc_failed"]:
        LOGGER.warning("%d image(s) failed registration QC; listed in %s",
                       summary["n_images_qc_failed"], GROUP_HTML)


def _thresholds(results, settings: Settings) -> tuple[float, float]:
    # the thresholds inference used, recorded in each pcs.json; else the recipe's
    for result in results:
        recorded = result.pcs_metadata.get("Thresholds") or {}
        try:
            return (float(recorded["present_min_mm"]), float(recorded["prominent_min_mm"]))
        except (KeyError, TypeError, ValueError):
            continue
    return (settings.labels.present_min_mm, settings.labels.prominent_min_mm)
