"""The validation-curve figure written beside every fine-tuned model.

Usage::

    plot_validation_curve(result.history, model_dir / "validation_curve.png", best_epoch=4)
"""

from __future__ import annotations

import os
from pathlib import Path

from bids_pcs.training.plots import save_figure

_SHOWN = ("val_dice", "val_presence_balanced_accuracy", "val_balanced_accuracy_3class",
          "val_score")


def plot_validation_curve(history: list[dict[str, float]], path: str | os.PathLike[str],
                          best_epoch: int | None = None, title: str = "") -> Path:
    """Plot the validation scores per epoch (best epoch marked); write a PNG atomically.

    Args:
        history: the engine's per-epoch rows.
        path: the PNG to write.
        best_epoch: 0-based index of the kept epoch, drawn as a dashed line.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    for key in _SHOWN:
        if any(key in row for row in history):
            axis.plot(epochs, [row.get(key, float("nan")) for row in history], marker="o",
                      markersize=3, label=key.removeprefix("val_"),
                      linewidth=2 if key == "val_score" else 1)
    if best_epoch is not None:
        axis.axvline(best_epoch + 1, color="grey", linestyle="--", linewidth=1, label="kept")
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation score")
    axis.set_ylim(-0.02, 1.02)
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return save_figure(figure, path)
