"""A figure to check the synthetic cohort by eye: sagittal slices with the label.

Per image, one row: for each hemisphere a sagittal slice through its sulcus
(zoomed on the medial frontal lobe) without and with the label outlined, so
one sees both the dark sulcus in the image and that the label sits on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from bids_pcs.io.atomic import atomic_path

_LABEL_COLOURS = {1: "#e6194b", 2: "#3cb44b"}


def overview_figure(items: Sequence[tuple[Path, Path, dict]], out_path: Path) -> Path:
    """Write a PNG of sagittal slices for ``items`` = (t1w path, dseg path, truth)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(items), 4, figsize=(13, 3.3 * len(items)), squeeze=False)
    for row, (t1w_path, dseg_path, truth) in enumerate(items):
        t1w = nib.as_closest_canonical(nib.load(t1w_path))
        dseg = nib.as_closest_canonical(nib.load(dseg_path))
        image = np.asarray(t1w.dataobj, dtype=np.float32)
        label = np.asarray(dseg.dataobj)
        vmax = float(np.percentile(image[image > 0], 99.5)) if image.any() else 1.0
        zooms = t1w.header.get_zooms()[:3]
        inverse = np.linalg.inv(t1w.affine)
        for k, (value, side) in enumerate(((1, "left"), (2, "right"))):
            centre = nib.affines.apply_affine(inverse, truth["MedialPointsMm"][side])
            if (label == value).any():
                centre = np.median(np.argwhere(label == value), axis=0)
            x = int(np.clip(round(centre[0]), 0, image.shape[0] - 1))
            y0, z0 = int(round(centre[1])), int(round(centre[2]))
            half_y, half_z = int(45 / zooms[1]), int(40 / zooms[2])
            ys = slice(max(0, y0 - half_y), y0 + half_y)
            zs = slice(max(0, z0 - half_z), z0 + half_z)
            plane = image[x, ys, zs].T
            mask = np.equal(label[x, ys, zs].T, value)
            aspect = zooms[2] / zooms[1]
            for j, outline in enumerate((False, True)):
                ax = axes[row, 2 * k + j]
                ax.imshow(plane, origin="lower", cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
                if outline and mask.any():
                    ax.contour(mask, levels=[0.5], colors=_LABEL_COLOURS[value], linewidths=0.9)
                ax.set_xticks([])
                ax.set_yticks([])
            pcs_class = truth["PcsClass"][side]
            length = truth["PcsLengthMm"][side]
            axes[row, 2 * k].set_title(
                f"{t1w_path.name.split('_T1w')[0]} {side}: {pcs_class} ({length:.0f} mm)",
                fontsize=8)
            axes[row, 2 * k + 1].set_title(
                f"{truth['AnatomySource']}, {truth['Orientation']}, "
                f"{'x'.join(f'{v:g}' for v in truth['VoxelSizeMm'])} mm"
                f"{', stripped' if truth['SkullStripped'] else ''}", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out_path
