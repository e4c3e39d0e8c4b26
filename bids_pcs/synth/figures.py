"""Figures to check the synthetic cohort by eye: the PCS label, and its distractors.

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


# one colour per sulcus kind (bids_pcs.synth.sulci.KINDS), the PCS label red
SULCUS_COLOURS = {"pcs": "#e6194b", "short_pcs": "#f58231", "cingulate": "#4363d8",
                  "intralimbic": "#42d4f4", "superior_rostral": "#911eb4",
                  "dimple": "#ffe119"}


def distractor_figure(items: Sequence[tuple[Path, nib.Nifti1Image, dict]], out_path: Path
                      ) -> Path | None:
    """A PNG of the PCS label among the unlabelled sulci around it, per image.

    Per image, one row: for each hemisphere a sagittal slice 3.5 mm from the
    midline and a coronal slice through the PCS (or the paracingulate band),
    every carved sulcus outlined in its colour (the PCS label in red).

    Args:
        items: (t1w path, sulci map on the image grid, truth) per image; the
            map holds ``SULCUS_CODES`` (see :mod:`bids_pcs.synth.synthesis`).
        out_path: where the PNG goes.
    """
    if not items:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from bids_pcs.synth.sulci import KIND_NAMES
    from bids_pcs.synth.synthesis import SULCUS_CODES

    fig, axes = plt.subplots(len(items), 4, figsize=(14, 3.6 * len(items) + 0.6),
                             squeeze=False)
    for row, (t1w_path, sulci_img, truth) in enumerate(items):
        t1w = nib.as_closest_canonical(nib.load(t1w_path))
        image = np.asarray(t1w.dataobj, dtype=np.float32)
        sulci = np.asarray(nib.as_closest_canonical(sulci_img).dataobj)
        vmax = float(np.percentile(image[image > 0], 99.5)) if image.any() else 1.0
        zooms = t1w.header.get_zooms()[:3]
        inverse = np.linalg.inv(t1w.affine)
        points = {side: nib.affines.apply_affine(inverse, truth["MedialPointsMm"][side])
                  for side in ("left", "right")}
        midline = 0.5 * (points["left"][0] + points["right"][0])
        pcs = np.argwhere(sulci == SULCUS_CODES["pcs"])
        for k, side in enumerate(("left", "right")):
            point = points[side]
            # 3.5 mm from the midline (the medial points are at 5 mm): the shallow
            # dimples reach this far too
            x = int(np.clip(round(midline + 0.7 * (point[0] - midline)), 0,
                            image.shape[0] - 1))
            mine = pcs[(pcs[:, 0] < midline) == (side == "left")]
            yc = int(np.median(mine[:, 1])) if len(mine) else int(round(point[1]))
            y0, z0 = int(round(point[1])), int(round(point[2]))
            half_y, half_z = int(48 / zooms[1]), int(42 / zooms[2])
            ys = slice(max(0, y0 - half_y + int(8 / zooms[1])), y0 + half_y + int(8 / zooms[1]))
            zs = slice(max(0, z0 - half_z - int(8 / zooms[2])), z0 + half_z - int(8 / zooms[2]))
            xs = slice(max(0, x - int(28 / zooms[0])), x + int(28 / zooms[0]))
            sagittal = (image[x, ys, zs].T, sulci[x, ys, zs].T, zooms[2] / zooms[1])
            coronal = (image[xs, yc, zs].T, sulci[xs, yc, zs].T, zooms[2] / zooms[0])
            for j, (plane, codes, aspect) in enumerate((sagittal, coronal)):
                ax = axes[row, 2 * k + j]
                ax.imshow(plane, origin="lower", cmap="gray", vmin=0, vmax=vmax, aspect=aspect)
                for kind, code in SULCUS_CODES.items():
                    mask = codes == code
                    if mask.any():
                        ax.contour(mask, levels=[0.5], colors=SULCUS_COLOURS[kind],
                                   linewidths=1.1 if kind == "pcs" else 0.8)
                ax.set_xticks([])
                ax.set_yticks([])
            pcs_class = truth["PcsClass"][side]
            segments = truth.get("PcsSegmentsMm", {}).get(side, [])
            pieces = " + ".join(f"{s:.0f}" for s in segments) if len(segments) > 1 else ""
            axes[row, 2 * k].set_title(
                f"{t1w_path.name.split('_T1w')[0]} {side}: {pcs_class} "
                f"({truth['PcsLengthMm'][side]:.0f} mm{' = ' + pieces if pieces else ''}), "
                "sagittal", fontsize=8)
            axes[row, 2 * k + 1].set_title(
                f"coronal; site {truth.get('Site', '?')}, {truth['AnatomySource']}", fontsize=8)
    handles = [Line2D([0], [0], color=c, lw=2, label=KIND_NAMES[k])
               for k, c in SULCUS_COLOURS.items()]
    fig.legend(handles=handles, loc="upper center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (3.6 * len(items) + 0.6)))
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out_path
