"""The study page ``OUTPUT_DIR/study/study.html``.

Sections: overview (the design in numbers), a reading of the results written
from the table (:mod:`bids_pcs.study.reading`), the results table with
intervals and counts, the paired differences against scratch and against
full fine-tuning, label efficiency (when the study has several label
fractions), accuracy against time and memory, one heatmap per score, the
split, and failed jobs.  Built from the shared report blocks
(:mod:`bids_pcs.reports.html`); figures are embedded, so the page is one
self-contained file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_pcs import __version__
from bids_pcs.reports import html as h
from bids_pcs.reports.figures import file_data_uri
from bids_pcs.splits import PARTS, StudySplit
from bids_pcs.study.figures import COST_FIGURES, HEATMAP_EXTRA, LABELS
from bids_pcs.study.reading import reading
from bids_pcs.study.scoring import METRICS, PAIRED_METRICS

_TABLE_SCORES = ("dice", "hd95_mm", "presence_sensitivity", "presence_specificity",
                 "presence_balanced_accuracy", "presence_auc", "balanced_accuracy_3class",
                 "macro_f1_3class")
_SHORT = {"dice": "Dice", "hd95_mm": "HD95 mm", "presence_accuracy": "Presence acc.",
          "presence_balanced_accuracy": "Presence bal. acc.", "presence_f1": "F1",
          "presence_auc": "Presence AUC", "presence_sensitivity": "Sens.",
          "presence_specificity": "Spec.", "accuracy_3class": "3-class acc.",
          "balanced_accuracy_3class": "3-class bal. acc.", "macro_f1_3class": "3-class macro-F1"}


def write_study_page(path: Path, table: pd.DataFrame, *, figures: Mapping[str, Path],
                     splits: Sequence[StudySplit], summary: Mapping[str, Any],
                     failed: Sequence[str]) -> Path:
    """Render study.html from the table, the figure files and the run's summary."""
    sections = [
        ("overview", "Overview", "Overview", _overview(table, splits, summary)),
        ("reading", "Reading", "Reading of the results", _reading(table)),
        ("results", "Results", "Results per configuration", _results(table)),
        ("differences", "Differences", "Paired differences", _differences(table)),
        *([("labels", "Labels", "Label efficiency", _labels(figures))]
          if "label_efficiency" in figures else []),
    ]
    if splits and splits[0].ood_test:
        sections.append(("ood", "Out of distribution",
                         "In distribution and out of distribution", _ood(table, splits,
                                                                         summary)))
    sections += [
        ("cost", "Cost", "Accuracy against time and memory", _cost(figures)),
        ("heatmaps", "Heatmaps", "Methods x strategies", _heatmaps(figures)),
        ("split", "Split", "Participants per part", _split(splits)),
    ]
    if failed:
        sections.append(("failed", "Failed", "Failed jobs", _failed(failed)))
    body = h.join(h.section(anchor, title, content) for anchor, _, title, content in sections)
    return h.write_page(
        path, title="Study · bids_pcs", heading="Pre-training x fine-tuning study",
        subtitle=f"{len(table)} configuration(s) · {summary.get('n_participants', 0)} "
                 f"participants · recipe {summary.get('recipe', '')} · bids_pcs {__version__}",
        nav=[(anchor, nav) for anchor, nav, _, _ in sections], body=body)


def _overview(table: pd.DataFrame, splits: Sequence[StudySplit],
              summary: Mapping[str, Any]) -> h.Html:
    first = splits[0]
    folds = len(splits) if splits[0].fold else 0
    cards = h.stat_cards([
        ("rows finished", f"{len(table)} / {summary.get('n_cells', len(table))}"),
        ("participants", summary.get("n_participants", 0)),
        ("train / validation / test", f"{len(first.train)} / {len(first.validation)} / "
                                      f"{len(first.test)}" + (" per fold" if folds else "")),
        ("folds", folds or "single split"),
        ("pre-training images / fine-tuning labels", _data_sizes(table)),
        ("device", summary.get("device", "n/a")),
    ])
    fractions = sorted(set(table["label_fraction"])) if not table.empty else [1.0]
    seeds = int(table["n_seeds"].max()) if not table.empty else 1
    text = (
        "Every configuration pairs an initialisation (scratch, or one of the self-supervised "
        "pre-training methods) with a fine-tuning strategy. The participants are split once "
        "(seed " + str(summary.get("seed", 0)) + ") into training, validation and test parts; "
        "both hemispheres and all sessions of a participant stay in one part. Each "
        "pre-training ran once per split on " + summary.get(
            "pretraining_data", "the training participants' crops only (neither validation "
            "nor test crops)") + ", and seeds all of its strategies, label fractions and "
        "training seeds. Fine-tuning used "
        + ", ".join(f"{f:.0%}" for f in fractions) + " of the training participants' labels "
        "(nested, stratified subsets) with " + str(seeds) + " training seed(s), and kept the "
        "epoch with the best validation score (mean of the validation Dice over sulci and "
        "the presence balanced accuracy). Test scores are computed on the native T1w grid "
        "against the native labels, as a user receives them. Each job ran alone in its own "
        "process, so its time and peak memory are its own.")
    return h.join([cards, h.paragraph(text, "muted")])


def _data_sizes(table: pd.DataFrame) -> str:
    """``"120 images / 48 labels"``: what self-supervision saw next to what supervision saw."""
    if table.empty:
        return "n/a"
    pretrained = table.loc[table["method"] != "scratch", "pretrain_images"].dropna()
    images = h.fmt(pretrained.max(), 0) if not pretrained.empty else "none"
    return f"{images} images / {h.fmt(table['finetune_labels'].max(), 0)} hemisphere labels"


def _reading(table: pd.DataFrame) -> h.Html:
    items = "".join(f"<li>{h.esc(sentence)}</li>" for sentence in reading(table))
    return h.Html(f"<ul>{items}</ul>")


def _results(table: pd.DataFrame) -> h.Html:
    if table.empty:
        return h.notice("No configuration finished yet.", "warn")
    header = ["Configuration", "Labelled", *(_SHORT[m] for m in _TABLE_SCORES),
              "Fine-tuning (s)", "s / epoch", "Pre-training (s)", "Peak memory (MiB)",
              "Trainable", "Frozen"]
    rows = []
    for row in table.to_dict("records"):
        rows.append([
            h.Html(f"<strong>{h.esc(row['configuration'])}</strong>"),
            h.fmt(row["n_labelled_participants"], 0),
            *(_with_interval(row, m) for m in _TABLE_SCORES),
            h.fmt(row["finetune_seconds"], 1), h.fmt(row["seconds_per_epoch"], 2),
            h.fmt(row["pretrain_seconds"], 1), h.fmt(row["peak_memory_mb"], 0),
            f"{int(row['trainable_parameters']):,}", f"{int(row['frozen_parameters']):,}",
        ])
    numeric = tuple(range(1, len(header)))
    content = h.table(header, rows, numeric=numeric, css="wide")
    note = h.paragraph(
        "Test scores on the native T1w grid with 95 % bootstrap intervals over participants "
        "and, after n =, the number of hemispheres each rests on (small print): Dice over the "
        "hemispheres whose true mask has a sulcus, HD95 (mm, with the image's voxel spacing) "
        "over those where the prediction is not empty, presence and class scores over all. "
        "With several training seeds a score is the mean over the seeds (study.tsv has their "
        "standard deviation). Fine-tuning time is the wall time of the training loop with "
        "its per-epoch validation; the pre-training time is shared by the strategies of a "
        "method. study.tsv holds every number of this table and more.", "muted")
    return h.join([h.Html(f'<div class="scroll">{content}</div>'), note])


def _differences(table: pd.DataFrame) -> h.Html:
    if table.empty:
        return h.notice("No configuration finished yet.", "warn")
    parts = []
    for reference, title in (("scratch", "against scratch with the same strategy"),
                             ("full", "against full fine-tuning of the same initialisation")):
        columns = [m for m in PAIRED_METRICS if f"{m}_vs_{reference}" in table]
        rows = []
        for row in table.to_dict("records"):
            cells = [_difference(row, f"{m}_vs_{reference}", m) for m in columns]
            if all(c == "n/a" for c in cells):
                continue
            rows.append([h.Html(f"<strong>{h.esc(row['configuration'])}</strong>"), *cells])
        if rows:
            parts.append(h.Html(f"<h3>{h.esc(title.capitalize())}</h3>"))
            header = ["Configuration", *(_SHORT[m] for m in columns)]
            parts.append(h.Html('<div class="scroll">' + h.table(
                header, rows, numeric=tuple(range(1, len(header))), css="wide") + "</div>"))
    if not parts:
        return h.notice("No reference configuration (scratch or full) finished, so no paired "
                        "difference exists.")
    parts.append(h.paragraph(
        "Each cell is this configuration minus its reference, with the paired 95 % bootstrap "
        "interval: both are scored on the same resampled test participants (and seeds), so "
        "the interval is that of the difference itself. Bold: the interval excludes 0 (for "
        "HD95 lower is better). Overlapping marginal intervals in the results table do not "
        "mean that two configurations are alike, nor do separate ones prove them different.",
        "muted"))
    return h.join(parts)


def _labels(figures: Mapping[str, Path]) -> h.Html:
    return _figure(figures["label_efficiency"], "label efficiency",
                   "Native test Dice and presence balanced accuracy against the number of "
                   "training participants whose labels fine-tuned (nested, stratified subsets; "
                   "log scale), per strategy (columns); bars: 95 % bootstrap intervals over "
                   "test participants. Pre-training used no labels and is the same for every "
                   "point of a line.")


_OOD_SCORES = ("dice", "presence_balanced_accuracy", "balanced_accuracy_3class")


def _ood(table: pd.DataFrame, splits: Sequence[StudySplit],
         summary: Mapping[str, Any]) -> h.Html:
    first = splits[0]
    header = ["Configuration"]
    for metric in _OOD_SCORES:
        header += [f"{_SHORT[metric]} in", f"{_SHORT[metric]} out"]
    rows = []
    for row in table.to_dict("records"):
        cells: list[Any] = [h.Html(f"<strong>{h.esc(row['configuration'])}</strong>")]
        for metric in _OOD_SCORES:
            cells += [_with_interval(row, metric), _with_interval(row, f"ood_{metric}")]
        rows.append(cells)
    content = h.table(header, rows, numeric=tuple(range(1, len(header))), css="wide")
    note = h.paragraph(
        f"Out of distribution: the {len(first.ood_test)} participants with "
        f"{summary.get('test_on', '')} in participants.tsv, never trained, validated or "
        f"pre-trained on; in distribution: the {len(first.test)} held-out test participants "
        "of the others" + (" per fold" if first.fold else "") + ". Same models, same "
        "scores, 95 % bootstrap intervals over participants; study.tsv has every score as "
        "ood_<score>.", "muted")
    return h.join([h.Html(f'<div class="scroll">{content}</div>'), note])


def _cost(figures: Mapping[str, Path]) -> h.Html:
    parts = []
    captions = {
        "accuracy_vs_time": "Native test Dice and presence balanced accuracy (all labels) "
                            "against the fine-tuning time of each configuration (colour: "
                            "initialisation; marker: strategy; bars: 95 % bootstrap "
                            "intervals).",
        "accuracy_vs_memory": "The same scores against the peak memory of the fine-tuning "
                              "process.",
    }
    for name in COST_FIGURES:
        if name in figures:
            parts.append(_figure(figures[name], name.replace("_", " "), captions[name]))
    return h.join(parts) if parts else h.notice("No figure: no configuration finished.")


def _heatmaps(figures: Mapping[str, Path]) -> h.Html:
    parts = [_figure(figures[f"heatmap_{m}"], f"heatmap of {LABELS.get(m, m)}",
                     f"{LABELS.get(m, m)} per initialisation (rows) and strategy (columns).")
             for m in (*METRICS, *HEATMAP_EXTRA) if f"heatmap_{m}" in figures]
    if not parts:
        return h.notice("No figure: no configuration finished.")
    return h.Html(f'<div class="columns">{"".join(parts)}</div>')


def _split(splits: Sequence[StudySplit]) -> h.Html:
    rows = []
    for split in splits:
        for part in PARTS:
            members = getattr(split, part)
            rows.append([split.fold or "-", part, len(members),
                         ", ".join(members) if members else "none"])
    table = h.table(["Fold", "Part", "Participants", "Labels"], rows, numeric=(2,))
    return h.join([table, h.paragraph("The same split is in split.tsv (one row per "
                                      "participant and fold).", "muted")])


def _failed(failed: Sequence[str]) -> h.Html:
    return h.join([
        h.notice(f"{len(failed)} job(s) did not finish; their rows are missing. Their logs are "
                 "in OUTPUT_DIR/logs/study-<job>_<run id>.log; rerun the study to retry them "
                 "(finished jobs are kept).", "bad"),
        h.Html("<ul>" + "".join(f"<li>{h.esc(name)}</li>" for name in failed) + "</ul>"),
    ])


def _figure(path: Path, alt: str, caption: str) -> h.Html:
    return h.figure(file_data_uri(Path(path).read_bytes(), ".png"), alt, caption)


def _with_interval(row: Mapping[str, Any], metric: str) -> h.Html:
    value = row[metric]
    count = row.get(f"{metric}_n")
    count_text = (f'<br><small class="muted">n = {count:.0f}</small>'
                  if count is not None and np.isfinite(count) else "")
    if value is None or not np.isfinite(value):
        return h.Html(f"n/a{count_text}")
    digits = 1 if metric == "hd95_mm" else 3
    low, high = row[f"{metric}_ci_lower"], row[f"{metric}_ci_upper"]
    interval = (f'<br><small class="muted">{low:.{digits}f}–{high:.{digits}f}</small>'
                if np.isfinite(low) and np.isfinite(high) else "")
    return h.Html(f"{value:.{digits}f}{interval}{count_text}")


def _difference(row: Mapping[str, Any], column: str, metric: str) -> h.Html | str:
    value = row.get(column)
    if value is None or not np.isfinite(value):
        return "n/a"
    digits = 1 if metric == "hd95_mm" else 3
    low, high = row[f"{column}_ci_lower"], row[f"{column}_ci_upper"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return h.Html(f"{value:+.{digits}f}")
    text = f"{value:+.{digits}f}"
    if low > 0 or high < 0:
        text = f"<strong>{text}</strong>"
    return h.Html(f'{text}<br><small class="muted">{low:+.{digits}f} to '
                  f'{high:+.{digits}f}</small>')
