"""Figures of the study, drawn from the results table.

- :func:`cost_figure`: accuracy against a cost (fine-tuning time or peak
  memory), one point per configuration, colour = initialisation, marker =
  strategy, bars = 95 % bootstrap intervals; Dice and presence accuracy side
  by side (the layout of the source paper's Figure 2);
- :func:`heatmap_figure`: one score over the methods x strategies grid, each
  cell annotated with its value;
- :func:`label_efficiency_figure`: scores against the number of labelled
  participants (one panel per strategy and score, one line per
  initialisation, bars = 95 % bootstrap intervals), when the study has
  several ``[study] label_fractions``.

Cost figures and heatmaps show the rows with the largest label fraction.

Each returns PNG bytes (Agg, no pyplot); :func:`write_figures` writes them all
under ``OUTPUT_DIR/study/figures/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

from bids_pcs.io.atomic import write_bytes
from bids_pcs.reports.figures import report_style, to_png
from bids_pcs.study.scoring import LOWER_IS_BETTER, METRICS

FIGURES_DIR = "figures"
LABELS = {
    "dice": "Dice (native, sulci)", "hd95_mm": "HD95 (mm)",
    "presence_accuracy": "presence accuracy",
    "presence_balanced_accuracy": "presence balanced accuracy", "presence_f1": "presence F1",
    "presence_auc": "presence ROC AUC", "presence_sensitivity": "presence sensitivity",
    "presence_specificity": "presence specificity", "accuracy_3class": "3-class accuracy",
    "balanced_accuracy_3class": "3-class balanced accuracy",
    "macro_f1_3class": "3-class macro-F1",
    "n_labelled_participants": "labelled participants",
    "finetune_seconds": "fine-tuning time (s)", "total_seconds": "pre-training + fine-tuning (s)",
    "peak_memory_mb": "peak memory (MiB)", "trainable_parameters": "trainable parameters",
}
COST_FIGURES = {"accuracy_vs_time": "finetune_seconds", "accuracy_vs_memory": "peak_memory_mb"}
HEATMAP_EXTRA = ("finetune_seconds", "peak_memory_mb")
# colour per initialisation (scratch grey), marker per strategy
METHOD_COLOURS = {"scratch": "#6b7280", "reconstruction": "#2563eb", "contrastive": "#059669",
                  "adversarial": "#dc2626", "diffusion": "#7c3aed"}
STRATEGY_MARKERS = {"top": "o", "decoder": "s", "full": "D", "lora": "^"}
_OTHER_COLOURS = ("#d97706", "#0891b2", "#be185d", "#4d7c0f")


def cost_figure(table: pd.DataFrame, cost: str,
                scores: Sequence[str] = ("dice", "presence_balanced_accuracy")) -> bytes:
    """Scores (y, with intervals) against ``cost`` (x) for every configuration."""
    with report_style():
        fig = Figure(figsize=(4.2 * len(scores), 3.6))
        axes = fig.subplots(1, len(scores), squeeze=False)[0]
        for ax, score in zip(axes, scores, strict=True):
            for row in table.itertuples(index=False):
                x, y = getattr(row, cost), getattr(row, score)
                if not (np.isfinite(x) and np.isfinite(y)):
                    continue
                low, high = getattr(row, f"{score}_ci_lower"), getattr(row, f"{score}_ci_upper")
                error = ([[max(y - low, 0.0)], [max(high - y, 0.0)]]
                         if np.isfinite(low) and np.isfinite(high) else None)
                ax.errorbar(x, y, yerr=error, fmt=STRATEGY_MARKERS.get(row.strategy, "o"),
                            color=method_colour(row.method), markersize=7, capsize=2.5,
                            elinewidth=0.9, markeredgecolor="white", markeredgewidth=0.6)
            values = table[cost].to_numpy(dtype=float)
            values = values[np.isfinite(values) & (values > 0)]
            if values.size and values.max() / values.min() > 20:
                ax.set_xscale("log")  # top and full tuning can differ by orders of magnitude
            ax.set_xlabel(LABELS.get(cost, cost))
            ax.set_ylabel(LABELS.get(score, score))
            ax.set_title(f"{LABELS.get(score, score)} vs {LABELS.get(cost, cost)}", loc="left")
            ax.grid(alpha=0.25, linewidth=0.6)
        _legend(fig, table)
        return to_png(fig)


def heatmap_figure(table: pd.DataFrame, metric: str, methods: Sequence[str],
                   strategies: Sequence[str]) -> bytes:
    """``metric`` over methods (rows) x strategies (columns); darker = better."""
    grid = np.full((len(methods), len(strategies)), np.nan)
    for row in table.itertuples(index=False):
        if row.method in methods and row.strategy in strategies:
            grid[methods.index(row.method), strategies.index(row.strategy)] = getattr(row, metric)
    better_low = metric in LOWER_IS_BETTER or metric in HEATMAP_EXTRA
    with report_style():
        fig = Figure(figsize=(1.2 + 1.25 * len(strategies), 0.9 + 0.55 * len(methods)))
        ax = fig.add_subplot()
        finite = grid[np.isfinite(grid)]
        image = ax.imshow(np.ma.masked_invalid(grid), cmap="Blues_r" if better_low else "Blues",
                          aspect="auto",
                          vmin=finite.min() if finite.size else 0.0,
                          vmax=finite.max() if finite.size else 1.0)
        middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
        for i in range(len(methods)):
            for j in range(len(strategies)):
                value = grid[i, j]
                dark = np.isfinite(value) and ((value < middle) if better_low else
                                               (value > middle))
                ax.text(j, i, _short(value, metric), ha="center", va="center", fontsize=8.5,
                        color="white" if dark else "#111827")
        ax.set_xticks(range(len(strategies)), strategies)
        ax.set_yticks(range(len(methods)), methods)
        ax.set_xlabel("fine-tuning strategy")
        ax.set_title(LABELS.get(metric, metric) + (" (lower is better)" if better_low else ""),
                     loc="left")
        ax.spines[:].set_visible(False)
        fig.colorbar(image, ax=ax, fraction=0.05, pad=0.03)
        return to_png(fig)


def label_efficiency_figure(table: pd.DataFrame,
                            scores: Sequence[str] = ("dice", "presence_balanced_accuracy"),
                            ) -> bytes:
    """Scores against labelled participants: a panel per strategy (columns) and score (rows)."""
    strategies = list(dict.fromkeys(table["strategy"]))
    with report_style():
        fig = Figure(figsize=(3.3 * len(strategies), 2.9 * len(scores)))
        axes = fig.subplots(len(scores), len(strategies), squeeze=False)
        for i, score in enumerate(scores):
            for j, strategy in enumerate(strategies):
                ax = axes[i][j]
                part = table[table["strategy"] == strategy]
                for method in dict.fromkeys(part["method"]):
                    rows = part[part["method"] == method].sort_values("n_labelled_participants")
                    x = rows["n_labelled_participants"].to_numpy(dtype=float)
                    y = rows[score].to_numpy(dtype=float)
                    low = rows[f"{score}_ci_lower"].to_numpy(dtype=float)
                    high = rows[f"{score}_ci_upper"].to_numpy(dtype=float)
                    error = np.vstack([np.clip(y - low, 0, None), np.clip(high - y, 0, None)])
                    error = np.where(np.isfinite(error), error, 0.0)
                    ax.errorbar(x, y, yerr=error, marker="o", markersize=4, capsize=2.5,
                                linewidth=1.4, elinewidth=0.8, color=method_colour(method),
                                label=method)
                ax.set_xscale("log")
                # the measured counts as plain numbers (log ticks like 2x10^1 overlap)
                counts = sorted(set(part["n_labelled_participants"].dropna().round(1)))
                ax.xaxis.set_major_locator(FixedLocator(counts))
                ax.xaxis.set_major_formatter(FixedFormatter([f"{c:g}" for c in counts]))
                ax.xaxis.set_minor_locator(NullLocator())
                ax.set_xlabel(LABELS["n_labelled_participants"])
                if j == 0:
                    ax.set_ylabel(LABELS.get(score, score))
                ax.set_title(f"{strategy}", loc="left")
                ax.grid(alpha=0.25, linewidth=0.6)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncols=min(len(labels), 6),
                   bbox_to_anchor=(0.5, 0.0))
        return to_png(fig)


def write_figures(table: pd.DataFrame, methods: Sequence[str], strategies: Sequence[str],
                  folder: Path) -> dict[str, Path]:
    """Every figure of the study as ``folder/<name>.png``; returns name -> path."""
    folder = Path(folder)
    out: dict[str, Path] = {}
    if table.empty:
        return out
    full = table[table["label_fraction"] == table["label_fraction"].max()]
    for name, cost in COST_FIGURES.items():
        out[name] = write_bytes(folder / f"{name}.png", cost_figure(full, cost))
    for metric in (*METRICS, *HEATMAP_EXTRA):
        out[f"heatmap_{metric}"] = write_bytes(
            folder / f"heatmap_{metric}.png",
            heatmap_figure(full, metric, list(methods), list(strategies)))
    if table["label_fraction"].nunique() > 1:
        out["label_efficiency"] = write_bytes(folder / "label_efficiency.png",
                                              label_efficiency_figure(table))
    return out


def method_colour(method: str) -> str:
    """The colour of an initialisation method in every study figure."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    return _OTHER_COLOURS[sum(map(ord, method)) % len(_OTHER_COLOURS)]


def _legend(fig: Figure, table: pd.DataFrame) -> None:
    from matplotlib.lines import Line2D

    methods = list(dict.fromkeys(table["method"]))
    strategies = list(dict.fromkeys(table["strategy"]))
    handles = [Line2D([], [], linestyle="", marker="o", color=method_colour(m), label=m)
               for m in methods]
    handles += [Line2D([], [], linestyle="", marker=STRATEGY_MARKERS.get(s, "o"),
                       color="#374151", label=s) for s in strategies]
    # below the axes; the tight bounding box of to_png keeps it in the image
    fig.legend(handles=handles, loc="upper center", ncols=min(len(handles), 9),
               bbox_to_anchor=(0.5, 0.0))


def _short(value: float, metric: str) -> str:
    if not np.isfinite(value):
        return "n/a"
    if metric == "peak_memory_mb" or abs(value) >= 100:
        return f"{value:,.0f}"
    if metric.endswith("seconds") or metric == "hd95_mm":
        return f"{value:.1f}"
    return f"{value:.2f}"
