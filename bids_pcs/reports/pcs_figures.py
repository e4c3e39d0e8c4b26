"""PCS figures of one image: the mask over the native T1w.

Two views, both on the native grid reoriented to RAS (nibabel's closest
canonical orientation; a permutation and flips only, no resampling):

- sagittal slices through each hemisphere's mask, zoomed on the medial
  frontal region, with the probability map as a translucent layer and the
  mask's outline on top;
- a 3D-ish overview: the mask's maximum-intensity projections along the three
  axes over the mean-intensity projections of the T1w ("glass brain").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from bids_pcs.config import HEMISPHERES
from bids_pcs.reports.figures import (
    DARK_BACKGROUND,
    HEMISPHERE_COLOURS,
    HEMISPHERE_NAMES,
    report_style,
    to_data_uri,
)

N_SAGITTAL = 4
# context kept around the mask in the zoomed sagittal panels, and the
# smallest field of view, so a tiny mask still shows its surroundings
ZOOM_MARGIN_MM = 22.0
MIN_FIELD_MM = 70.0
# where to look when a hemisphere has no mask: near the midline
FALLBACK_OFFSETS_MM = (3.0, 6.0, 9.0, 12.0)


@dataclass(frozen=True)
class NativeVolumes:
    """T1w, PCS label map and probability maps on one RAS-oriented native grid."""

    t1w: np.ndarray | None
    dseg: np.ndarray
    probsegs: dict[str, np.ndarray]
    affine: np.ndarray
    zooms: tuple[float, float, float]

    def mask(self, hemisphere: str, labels: dict[str, int]) -> np.ndarray:
        return self.dseg == labels[hemisphere]


def load_native(dseg: Path, t1w: Path | None, probsegs: dict[str, Path]) -> NativeVolumes:
    """Read the dseg, the T1w (if still reachable) and the probsegs, reoriented to RAS.

    A T1w or probseg whose grid differs from the dseg's is left out: the
    overlay would be wrong, and the report says the T1w is missing instead.
    """
    label_img = nib.as_closest_canonical(nib.load(str(dseg)))
    labels = np.asarray(label_img.dataobj).astype(np.int16)
    shape, affine = labels.shape, label_img.affine

    def same_grid(path: Path | None) -> np.ndarray | None:
        if path is None or not path.is_file():
            return None
        img = nib.as_closest_canonical(nib.load(str(path)))
        if img.shape[:3] != shape or not np.allclose(img.affine, affine, atol=1e-3):
            return None
        return np.asarray(img.dataobj, dtype=np.float32).reshape(shape)

    probs = {h: p for h, p in ((h, same_grid(path)) for h, path in probsegs.items())
             if p is not None}
    zooms = tuple(float(z) for z in label_img.header.get_zooms()[:3])
    return NativeVolumes(t1w=same_grid(t1w), dseg=labels, probsegs=probs, affine=affine,
                         zooms=zooms)  # type: ignore[arg-type]


def sagittal_figure(volumes: NativeVolumes, labels: dict[str, int]) -> str:
    """Sagittal slices through each hemisphere's PCS (one row per hemisphere)."""
    with report_style():
        fig = Figure(figsize=(2.55 * N_SAGITTAL, 2.75 * len(HEMISPHERES)),
                     facecolor=DARK_BACKGROUND)
        axes = fig.subplots(len(HEMISPHERES), N_SAGITTAL, squeeze=False,
                            gridspec_kw={"wspace": 0.04, "hspace": 0.12, "left": 0.035,
                                         "right": 0.995, "top": 0.95, "bottom": 0.01})
        background, low, high = _background(volumes)
        for row, hemisphere in enumerate(HEMISPHERES):
            mask = volumes.mask(hemisphere, labels)
            indices = _sagittal_indices(volumes, mask, hemisphere)
            window = _window(volumes, mask)
            for ax, index in zip(axes[row], indices, strict=False):
                _draw_sagittal(ax, volumes, background, (low, high), mask, hemisphere,
                               index, window)
            for ax in axes[row][len(indices):]:
                ax.set_axis_off()
            empty = "" if mask.any() else " (no PCS voxel)"
            axes[row][0].text(-0.06, 0.5, f"{HEMISPHERE_NAMES[hemisphere]}{empty}",
                              color="#e5e7eb", rotation=90, va="center", ha="right",
                              transform=axes[row][0].transAxes)
        return to_data_uri(fig, tight=False)


def projection_figure(volumes: NativeVolumes, labels: dict[str, int]) -> str:
    """Maximum-intensity projections of both masks over the T1w, three views."""
    with report_style():
        fig = Figure(figsize=(10.2, 3.5), facecolor=DARK_BACKGROUND)
        axes = fig.subplots(1, 3, gridspec_kw={"wspace": 0.05, "left": 0.01, "right": 0.99,
                                               "top": 0.92, "bottom": 0.01})
        background, _, _ = _background(volumes)
        zx, zy, zz = volumes.zooms
        # axis projected away, plane shown (rows up), pixel aspect, title, side labels
        views = ((0, "sagittal", zz / zy, ("P", "A")), (1, "coronal", zz / zx, ("L", "R")),
                 (2, "axial", zy / zx, ("L", "R")))
        for ax, (axis, title, aspect, sides) in zip(axes, views, strict=True):
            projection = background.mean(axis=axis).T
            low, high = np.percentile(projection, (1, 99.7))
            ax.imshow(projection, cmap="gray", vmin=low, vmax=high, origin="lower",
                      aspect=aspect, interpolation="bilinear")
            for hemisphere in HEMISPHERES:
                mip = volumes.mask(hemisphere, labels).any(axis=axis).T
                if mip.any():
                    ax.imshow(_rgba(mip.astype(np.float32), hemisphere, 0.85), origin="lower",
                              aspect=aspect)
            ax.set_title(f"{title} projection", color="#e5e7eb", pad=3)
            ax.text(0.02, 0.03, sides[0], color="#9ca3af", transform=ax.transAxes)
            ax.text(0.98, 0.03, sides[1], color="#9ca3af", ha="right", transform=ax.transAxes)
            ax.set_axis_off()
        return to_data_uri(fig, tight=False)


def _background(volumes: NativeVolumes) -> tuple[np.ndarray, float, float]:
    if volumes.t1w is None:
        # no T1w left: a flat background keeps the mask readable
        return np.zeros(volumes.dseg.shape, dtype=np.float32), 0.0, 1.0
    data = volumes.t1w
    inside = data[data > np.percentile(data, 40)]
    low, high = np.percentile(inside if inside.size else data, (0.5, 99.5))
    return data, float(low) * 0.5, float(high)


def _sagittal_indices(volumes: NativeVolumes, mask: np.ndarray, hemisphere: str) -> list[int]:
    """x indices of the panels: spread over the mask, else near the midline."""
    xs = np.flatnonzero(mask.any(axis=(1, 2)))
    if xs.size:
        if xs.size <= N_SAGITTAL:
            # a thin mask: its slices and their neighbours, to show where it ends
            start = int(np.clip(round((xs.min() + xs.max()) / 2 - (N_SAGITTAL - 1) / 2), 0,
                                max(0, mask.shape[0] - N_SAGITTAL)))
            return list(range(start, min(start + N_SAGITTAL, mask.shape[0])))
        # evenly spaced inside the mask, skipping its thin lateral and medial ends
        picks = np.linspace(xs.min(), xs.max(), N_SAGITTAL + 2)[1:-1]
        return sorted({int(round(v)) for v in picks})
    probability = volumes.probsegs.get(hemisphere)
    if probability is not None and probability.max() > 0.05:
        profile = probability.sum(axis=(1, 2))
        centre = float(np.average(np.arange(profile.size), weights=profile))
        return sorted({int(np.clip(round(centre + d), 0, mask.shape[0] - 1))
                       for d in (-3, -1, 1, 3)})
    # midline estimated as the intensity-weighted centre of the head in x
    reference = volumes.t1w if volumes.t1w is not None else volumes.dseg.astype(np.float32)
    profile = reference.sum(axis=(1, 2))
    centre = (float(np.average(np.arange(profile.size), weights=profile))
              if profile.sum() > 0 else profile.size / 2)
    sign = -1.0 if hemisphere == "L" else 1.0
    return [int(np.clip(round(centre + sign * d / volumes.zooms[0]), 0, mask.shape[0] - 1))
            for d in FALLBACK_OFFSETS_MM]


def _window(volumes: NativeVolumes, mask: np.ndarray) -> tuple[slice, slice]:
    """(y, z) field of view around ``mask`` (any hemisphere when it is empty)."""
    target = mask if mask.any() else volumes.dseg > 0
    shape = volumes.dseg.shape
    if not target.any():
        return slice(0, shape[1]), slice(0, shape[2])
    out = []
    for axis, zoom in ((1, volumes.zooms[1]), (2, volumes.zooms[2])):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(target.any(axis=other))
        centre = (hits.min() + hits.max()) / 2
        half = max((hits.max() - hits.min()) / 2 + ZOOM_MARGIN_MM / zoom,
                   MIN_FIELD_MM / 2 / zoom)
        lo = int(max(0, np.floor(centre - half)))
        hi = int(min(shape[axis], np.ceil(centre + half) + 1))
        out.append(slice(lo, hi))
    return out[0], out[1]


def _draw_sagittal(ax, volumes: NativeVolumes, background: np.ndarray,
                   limits: tuple[float, float], mask: np.ndarray, hemisphere: str,
                   index: int, window: tuple[slice, slice]) -> None:
    ys, zs = window
    aspect = volumes.zooms[2] / volumes.zooms[1]
    ax.imshow(background[index, ys, zs].T, cmap="gray", vmin=limits[0], vmax=limits[1],
              origin="lower", aspect=aspect, interpolation="bilinear")
    probability = volumes.probsegs.get(hemisphere)
    if probability is not None:
        ax.imshow(_rgba(probability[index, ys, zs].T, hemisphere, 0.55), origin="lower",
                  aspect=aspect, interpolation="bilinear")
    outline = mask[index, ys, zs].T
    if outline.any() and not outline.all():
        ax.contour(outline.astype(np.float32), levels=[0.5], colors=["#ffffff"],
                   linewidths=0.8)
    x_mm = (volumes.affine @ np.array([index, 0, 0, 1.0]))[0]
    ax.set_title(f"x = {x_mm:+.0f} mm", color="#e5e7eb", fontsize=8.5, pad=3)
    ax.text(0.02, 0.03, "P", color="#9ca3af", transform=ax.transAxes)
    ax.text(0.98, 0.03, "A", color="#9ca3af", ha="right", transform=ax.transAxes)
    ax.set_axis_off()


def _rgba(weight: np.ndarray, hemisphere: str, opacity: float) -> np.ndarray:
    """A colour layer of the hemisphere's colour whose alpha follows ``weight``."""
    rgba = np.zeros(weight.shape + (4,), dtype=np.float32)
    rgba[..., :3] = to_rgb(HEMISPHERE_COLOURS[hemisphere])
    rgba[..., 3] = np.clip(weight, 0.0, 1.0) * opacity
    return rgba
