"""The loss-curve figure written beside every trained model.

Usage::

    plot_loss_curve(result.history, model_dir / "loss_curve.png", title="reconstruction")
"""

from __future__ import annotations

import os
from pathlib import Path

from bids_pcs.io.atomic import atomic_path

# columns of the epoch log that are not losses
_NOT_LOSSES = {"epoch", "seconds", "crops_per_second", "peak_memory_mb", "learning_rate"}


def plot_loss_curve(history: list[dict[str, float]], path: str | os.PathLike[str],
                    title: str = "") -> Path:
    """Plot every loss column of ``history`` against the epoch; write a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    epochs = [row["epoch"] for row in history]
    keys: list[str] = []
    for row in history:
        keys += [k for k in row if k not in _NOT_LOSSES and k not in keys
                 and not k.startswith("val")]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=100)
    for key in keys:
        axis.plot(epochs, [row.get(key, float("nan")) for row in history], marker="o",
                  markersize=3, label=key, linewidth=2 if key == "loss" else 1)
    axis.set_xlabel("epoch")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if keys:
        axis.legend(fontsize=8)
    return save_figure(figure, path)


def save_figure(figure, path: str | os.PathLike[str]) -> Path:
    """Lay out ``figure``, write it as PNG atomically and free it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    plt.close(figure)
    return Path(path)
