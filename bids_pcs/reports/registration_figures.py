"""Registration QC figure: the template's outlines drawn over each medial frontal crop.

A crop is a piece of the subject's T1w resampled into template millimetres, so
when registration worked the template's pial and white-matter outlines follow
the subject's own anatomy. The outlines come from the tissue templates that
ship with nilearn (ICBM 2009a nonlinear symmetric, 1 mm), resampled onto the
crop's grid through its affine, which works for the mirrored right crop too.
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from nibabel.affines import apply_affine
from scipy import ndimage

from bids_pcs.reports.figures import (
    DARK_BACKGROUND,
    HEMISPHERE_NAMES,
    OUTLINE_COLOURS,
    report_style,
    to_data_uri,
)

# medial-to-lateral distances (mm) of the sagittal panels: the PCS lies on
# the medial wall, within about 15 mm of the midline
SAGITTAL_OFFSETS_MM = (4.0, 8.0, 12.0)


# nilearn's copies of the ICBM 2009a symmetric tissue maps (1 mm, uint8 0-255)
_TISSUE_FILES = {"grey": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                 "white": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"}


@functools.lru_cache(maxsize=1)
def _tissue_templates() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(grey + white, white, affine) of the template, probabilities in [0, 1]."""
    maps = {}
    affine = None
    for name, filename in _TISSUE_FILES.items():
        img = _load_tissue(name, filename)
        data = np.asarray(img.dataobj, dtype=np.float32)
        maps[name] = data / 255.0 if data.max() > 1.5 else data
        affine = img.affine
    return maps["grey"] + maps["white"], maps["white"], affine  # type: ignore[return-value]


def _load_tissue(name: str, filename: str) -> nib.Nifti1Image:
    # read the file from nilearn's wheel directly: importing nilearn.datasets
    # takes seconds (it imports every fetcher), the file itself a tenth of that
    path = resources.files("nilearn") / "datasets" / "data" / filename
    if path.is_file():
        return nib.load(str(path))
    from nilearn import datasets

    loader = {"grey": datasets.load_mni152_gm_template,
              "white": datasets.load_mni152_wm_template}[name]
    return loader(resolution=1)


def template_on_grid(affine: np.ndarray, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Template tissue maps (``brain`` = grey + white, ``white``) on a voxel grid.

    Every crop of a run shares one grid per hemisphere, so results are cached.

    Args:
        affine: voxel-to-template-millimetre affine of the grid (e.g. a crop's).
        shape: the grid's shape.

    Returns:
        Read-only probability maps in [0, 1] with shape ``shape``, linearly
        interpolated.
    """
    key = np.round(np.asarray(affine, dtype=float), 6)
    return _template_on_grid(key.tobytes(), tuple(int(n) for n in shape))


@functools.lru_cache(maxsize=8)
def _template_on_grid(affine_bytes: bytes, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    affine = np.frombuffer(affine_bytes, dtype=float).reshape(4, 4)
    brain, white, template_affine = _tissue_templates()
    voxel_to_template = np.linalg.inv(template_affine) @ affine
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1)
    coords = apply_affine(voxel_to_template, grid.T).T
    out = {}
    for name, volume in (("brain", brain), ("white", white)):
        resampled = ndimage.map_coordinates(volume, coords, order=1, mode="constant",
                                            cval=0.0).reshape(shape)
        resampled.flags.writeable = False
        out[name] = resampled
    return out


def registration_figure(crops: dict[str, Path]) -> str | None:
    """Crops of both hemispheres with the template outlines, as a PNG data URI.

    One row per hemisphere: sagittal slices at 4, 8 and 12 mm from the
    midline, then a coronal and an axial slice through the crop's centre.
    Returns ``None`` when no crop exists.
    """
    rows = [(h, path) for h, path in sorted(crops.items()) if path.is_file()]
    if not rows:
        return None
    with report_style():
        # panel widths follow the crop's extent, so every panel has the same height
        shape = nib.load(str(rows[0][1])).shape
        widths = [shape[1]] * len(SAGITTAL_OFFSETS_MM) + [shape[0], shape[0] * shape[2] / shape[1]]
        fig = Figure(figsize=(11.0, 2.55 * len(rows)), facecolor=DARK_BACKGROUND)
        axes = fig.subplots(len(rows), len(widths), squeeze=False,
                            gridspec_kw={"wspace": 0.05, "hspace": 0.2, "width_ratios": widths,
                                         "left": 0.035, "right": 0.995, "top": 0.93,
                                         "bottom": 0.01})
        for row, (hemisphere, path) in enumerate(rows):
            _draw_crop_row(axes[row], hemisphere, nib.load(str(path)))
        return to_data_uri(fig, tight=False)


def _draw_crop_row(axes, hemisphere: str, image: nib.Nifti1Image) -> None:
    data = np.asarray(image.dataobj, dtype=np.float32)
    outlines = template_on_grid(image.affine, data.shape)
    low, high = np.percentile(data, (1, 99.5))
    zooms = image.header.get_zooms()[:3]
    # world x of each sagittal index: the right crop is stored mirrored
    x_mm = image.affine[0, 0] * np.arange(data.shape[0]) + image.affine[0, 3]
    sign = -1.0 if hemisphere == "L" else 1.0
    panels = []
    for offset in SAGITTAL_OFFSETS_MM:
        index = int(np.argmin(np.abs(x_mm - sign * offset)))
        panels.append(("sagittal", index, f"x = {x_mm[index]:+.0f} mm"))
    panels.append(("coronal", data.shape[1] // 2, "coronal"))
    panels.append(("axial", data.shape[2] // 2, "axial"))
    for ax, (view, index, title) in zip(axes, panels, strict=True):
        image_slice, aspect = _slice(data, view, index, zooms)
        ax.imshow(image_slice, cmap="gray", vmin=low, vmax=high, origin="lower",
                  aspect=aspect, interpolation="bilinear")
        for name, colour in OUTLINE_COLOURS.items():
            outline, _ = _slice(outlines[name], view, index, zooms)
            if outline.max() > 0.5 > outline.min():
                ax.contour(outline, levels=[0.5], colors=[colour], linewidths=0.9)
        ax.set_axis_off()
        ax.set_title(title, color="#e5e7eb", fontsize=8.5, pad=3)
    axes[0].text(-0.08, 0.5, f"{HEMISPHERE_NAMES[hemisphere]} crop", color="#e5e7eb",
                 rotation=90, va="center", ha="right", transform=axes[0].transAxes)


def _slice(data: np.ndarray, view: str, index: int,
           zooms: tuple[float, ...]) -> tuple[np.ndarray, float]:
    # arrays are (x, y, z); each panel shows its plane with rows going up
    if view == "sagittal":
        return data[index, :, :].T, zooms[2] / zooms[1]
    if view == "coronal":
        return data[:, index, :].T, zooms[2] / zooms[0]
    return data[:, :, index].T, zooms[1] / zooms[0]
