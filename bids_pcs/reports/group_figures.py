"""Cohort figures of the group report, drawn from the group table.

Each function takes the rows that enter the statistics
(:func:`bids_pcs.reports.group_table.statistics_rows`) and returns a PNG data
URI, or ``None`` when there is nothing to draw.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bids_pcs.reports.figures import (
    CLASS_COLOURS,
    HEMISPHERE_COLOURS,
    report_style,
    to_data_uri,
)
from bids_pcs.reports.group_table import SIDES, table_classes

_SIDE_COLOURS = {side: HEMISPHERE_COLOURS[h] for h, side in SIDES.items()}


def prevalence_figure(rows: pd.DataFrame) -> str | None:
    """Class shares per hemisphere as 100 % stacked bars, with counts."""
    classes = table_classes(rows)
    data = {side.capitalize(): _class_counts(rows, side, classes) for side in SIDES.values()}
    if not any(sum(c.values()) for c in data.values()):
        return None
    with report_style():
        fig = Figure(figsize=(7.2, 2.2))
        ax = fig.add_subplot()
        _stacked_bars(ax, data)
        ax.set_title("PCS class by hemisphere", loc="left")
        _class_legend(fig, classes)
        return to_data_uri(fig)


def prevalence_by_figure(rows: pd.DataFrame, column: str) -> str | None:
    """Class shares per value of a participants.tsv column, one panel per hemisphere."""
    values = sorted(rows[column].dropna().unique(), key=str)
    if not values:
        return None
    classes = table_classes(rows)
    with report_style():
        height = 0.9 + 0.42 * len(values)
        fig = Figure(figsize=(10.0, height))
        axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"wspace": 0.08})
        for ax, side in zip(axes, SIDES.values(), strict=True):
            data = {str(v): _class_counts(rows[rows[column] == v], side, classes)
                    for v in values}
            _stacked_bars(ax, data)
            ax.set_title(f"{side} hemisphere", loc="left")
        axes[0].set_ylabel(column)
        _class_legend(fig, classes)
        return to_data_uri(fig)


def length_figure(rows: pd.DataFrame, thresholds: tuple[float, float]) -> str | None:
    """PCS length per hemisphere and class: box plots with every image as a dot."""
    if not any(rows[f"pcs_length_mm_{s}"].notna().any() for s in SIDES.values()):
        return None
    rng = np.random.default_rng(0)  # fixed jitter: the same figure on every run
    classes = table_classes(rows)
    with report_style():
        fig = Figure(figsize=(10.0, 3.4))
        axes = fig.subplots(1, 2, sharey=True, gridspec_kw={"wspace": 0.08})
        for ax, side in zip(axes, SIDES.values(), strict=True):
            for position, pcs_class in enumerate(classes):
                lengths = rows.loc[rows[f"pcs_class_{side}"] == pcs_class,
                                   f"pcs_length_mm_{side}"].dropna().to_numpy()
                if lengths.size:
                    box = ax.boxplot([lengths], positions=[position], widths=0.5,
                                     patch_artist=True, showfliers=False,
                                     medianprops={"color": "#111827"})
                    for patch in box["boxes"]:
                        patch.set(facecolor=CLASS_COLOURS[pcs_class], alpha=0.55,
                                  edgecolor="#4b5563")
                    jitter = rng.uniform(-0.17, 0.17, lengths.size)
                    ax.scatter(position + jitter, lengths, s=14, color=_SIDE_COLOURS[side],
                               edgecolor="white", linewidth=0.4, zorder=3)
                ax.text(position, 1.01, f"n = {lengths.size}", ha="center", va="bottom",
                        transform=ax.get_xaxis_transform(), fontsize=8, color="#4b5563")
            for threshold in thresholds:
                ax.axhline(threshold, color="#9ca3af", linestyle="--", linewidth=0.8, zorder=1)
            ax.set_xticks(range(len(classes)), classes)
            ax.set_xlim(-0.6, len(classes) - 0.4)
            ax.set_title(f"{side} hemisphere", loc="left", pad=14)
        axes[0].set_ylabel("PCS length (mm)")
        axes[0].set_ylim(bottom=0)
        return to_data_uri(fig)


def asymmetry_figure(rows: pd.DataFrame, thresholds: tuple[float, float]) -> str | None:
    """Left against right length, the asymmetry index, and left x right classes."""
    both = rows.dropna(subset=["pcs_length_mm_left", "pcs_length_mm_right"])
    if both.empty:
        return None
    classes = list(table_classes(rows))
    with report_style():
        fig = Figure(figsize=(11.5, 3.5))
        scatter, histogram, matrix = fig.subplots(
            1, 3, gridspec_kw={"wspace": 0.6, "width_ratios": [1, 1.15, 1]})
        left, right = both["pcs_length_mm_left"], both["pcs_length_mm_right"]
        top = max(float(left.max()), float(right.max()), thresholds[1]) * 1.1 + 1
        scatter.plot([0, top], [0, top], color="#9ca3af", linewidth=0.8, linestyle="--")
        for threshold in thresholds:
            scatter.axvline(threshold, color="#e5e7eb", linewidth=0.8, zorder=0)
            scatter.axhline(threshold, color="#e5e7eb", linewidth=0.8, zorder=0)
        scatter.scatter(left, right, s=18, color="#1f3f7a", alpha=0.8, edgecolor="white",
                        linewidth=0.4, zorder=3)
        scatter.set(xlim=(0, top), ylim=(0, top), xlabel="left PCS length (mm)",
                    ylabel="right PCS length (mm)", aspect="equal")
        scatter.set_title("left vs right length", loc="left")

        index = both["pcs_asymmetry_index"].dropna()
        bins = np.linspace(-1, 1, 17)
        histogram.hist(index, bins=bins, color="#5b8fd1", edgecolor="white")
        histogram.axvline(0, color="#4b5563", linewidth=0.8)
        histogram.set(xlim=(-1.05, 1.05), xlabel="asymmetry index (L - R) / (L + R)",
                      ylabel="images")
        histogram.yaxis.get_major_locator().set_params(integer=True)
        mean = f", mean {index.mean():+.2f}" if index.size else ""
        histogram.set_title(f"asymmetry (n = {index.size}{mean})", loc="left")

        counts = pd.crosstab(both["pcs_class_left"], both["pcs_class_right"]).reindex(
            index=classes, columns=classes, fill_value=0).to_numpy()
        matrix.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, counts.max()))
        for (i, j), value in np.ndenumerate(counts):
            matrix.text(j, i, str(value), ha="center", va="center", fontsize=9,
                        color="white" if value > counts.max() * 0.6 else "#111827")
        matrix.set_xticks(range(len(classes)), classes)
        matrix.set_yticks(range(len(classes)), classes)
        matrix.set(xlabel="right hemisphere", ylabel="left hemisphere")
        matrix.spines[:].set_visible(False)
        matrix.set_title("class, left x right", loc="left")
        return to_data_uri(fig)


def _class_counts(rows: pd.DataFrame, side: str, classes: tuple[str, ...]) -> dict[str, int]:
    values = rows[f"pcs_class_{side}"].dropna()
    return {c: int((values == c).sum()) for c in classes}


def _stacked_bars(ax, data: dict[str, dict[str, int]]) -> None:
    """Horizontal 100 % bars, one per key, class shares labelled with counts."""
    labels = list(data)
    positions = np.arange(len(labels))[::-1]
    starts = np.zeros(len(labels))
    totals = np.array([max(1, sum(data[k].values())) for k in labels], dtype=float)
    for pcs_class in data[labels[0]]:
        counts = np.array([data[k][pcs_class] for k in labels], dtype=float)
        shares = counts / totals * 100
        ax.barh(positions, shares, left=starts, color=CLASS_COLOURS[pcs_class], height=0.62,
                edgecolor="white", linewidth=0.8)
        for y, start, share, count in zip(positions, starts, shares, counts, strict=True):
            if share >= 7:
                colour = "white" if pcs_class != "absent" else "#1f2937"
                ax.text(start + share / 2, y, f"{int(count)}", ha="center", va="center",
                        color=colour, fontsize=8.5)
        starts += shares
    ax.set_yticks(positions, [f"{k}  (n = {sum(data[k].values())})" for k in labels])
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of images")
    ax.spines["left"].set_visible(False)
    ax.tick_params(axis="y", length=0)


def _class_legend(fig: Figure, classes: tuple[str, ...]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=CLASS_COLOURS[c], edgecolor="#9ca3af", label=c)
               for c in classes]
    fig.legend(handles=handles, loc="upper right", ncol=len(classes),
               bbox_to_anchor=(0.99, 1.06))
