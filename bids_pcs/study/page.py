"""The study page ``OUTPUT_DIR/study/study.html``.

Sections: overview (the design in numbers), a reading of the results written
from the table (:mod:`bids_pcs.study.reading`), the results table with
intervals, accuracy against time and memory, one heatmap per score, the
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
from bids_pcs.study.scoring import METRICS

_TABLE_SCORES = ("dice", "hd95_mm", "presence_accuracy", "presence_balanced_accuracy",
                 "presence_f1", "presence_auc", "presence_sensitivity", "presence_specificity",
                 "accuracy_3class")
_SHORT = {"dice": "Dice", "hd95_mm": "HD95 mm", "presence_accuracy": "Presence acc.",
          "presence_balanced_accuracy": "Bal. acc.", "presence_f1": "F1",
          "presence_auc": "AUC", "presence_sensitivity": "Sens.",
          "presence_specificity": "Spec.", "accuracy_3class": "3-class acc."}


def write_study_page(path: Path, table: pd.DataFrame, *, figures: Mapping[str, Path],
                     splits: Sequence[StudySplit], summary: Mapping[str, Any],
                     failed: Sequence[str]) -> Path:
    """Render study.html from the table, the figure files and the run's summary."""
    sections = [
        ("overview", "Overview", "Overview", _overview(table, splits, summary)),
        ("reading", "Reading", "Reading of the results", _reading(table)),
        ("results", "Results", "Results per configuration", _results(table)),
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
        ("configurations finished", f"{len(table)} / {summary.get('n_cells', len(table))}"),
        ("participants", summary.get("n_participants", 0)),
        ("train / validation / test", f"{len(first.train)} / {len(first.validation)} / "
                                      f"{len(first.test)}" + (" per fold" if folds else "")),
        ("folds", folds or "single split"),
        ("pre-training images / fine-tuning labels", _data_sizes(table)),
        ("device", summary.get("device", "n/a")),
    ])
    text = (
        "Every configuration pairs an initialisation (scratch, or one of the self-supervised "
        "pre-training methods) with a fine-tuning strategy. The participants are split once "
        "(seed " + str(summary.get("seed", 0)) + ") into training, validation and test parts; "
        "both hemispheres and all sessions of a participant stay in one part. Each "
        "pre-training ran once per split on " + summary.get(
            "pretraining_data", "the training participants' crops only (neither validation "
            "nor test crops)") + ", and seeds all of its strategies. Fine-tuning keeps the "
        "epoch with the best validation score; scores are on the test participants only. "
        "Each pre-training and each configuration ran alone in its own process, so its time "
        "and peak memory are its own.")
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
    header = ["Configuration", *(_SHORT[m] for m in _TABLE_SCORES), "Fine-tuning (s)",
              "s / epoch", "Pre-training (s)", "Peak memory (MiB)", "Trainable", "Frozen"]
    rows = []
    for row in table.to_dict("records"):
        rows.append([
            h.Html(f"<strong>{h.esc(row['configuration'])}</strong>"),
            *(_with_interval(row, m) for m in _TABLE_SCORES),
            h.fmt(row["finetune_seconds"], 1), h.fmt(row["seconds_per_epoch"], 2),
            h.fmt(row["pretrain_seconds"], 1), h.fmt(row["peak_memory_mb"], 0),
            f"{int(row['trainable_parameters']):,}", f"{int(row['frozen_parameters']):,}",
        ])
    numeric = tuple(range(1, len(header)))
    content = h.table(header, rows, numeric=numeric, css="wide")
    note = h.paragraph(
        "Scores on the test participants with 95 % bootstrap intervals over participants "
        "(small print). HD95 is averaged over the hemispheres where both masks are non-empty. "
        "Fine-tuning time is the wall time of the training loop with its per-epoch "
        "validation; the pre-training time is shared by the strategies of a method. study.tsv "
        "holds every number of this table and more (interval bounds, parameter counts, "
        "memory before training).", "muted")
    return h.join([h.Html(f'<div class="scroll">{content}</div>'), note])


def _cost(figures: Mapping[str, Path]) -> h.Html:
    parts = []
    captions = {
        "accuracy_vs_time": "Test Dice and presence accuracy against the fine-tuning time of "
                            "each configuration (colour: initialisation; marker: strategy; "
                            "bars: 95 % bootstrap intervals).",
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
    if value is None or not np.isfinite(value):
        return h.Html("n/a")
    digits = 1 if metric == "hd95_mm" else 3
    low, high = row[f"{metric}_ci_lower"], row[f"{metric}_ci_upper"]
    interval = (f'<br><small class="muted">{low:.{digits}f}–{high:.{digits}f}</small>'
                if np.isfinite(low) and np.isfinite(high) else "")
    return h.Html(f"{value:.{digits}f}{interval}")
