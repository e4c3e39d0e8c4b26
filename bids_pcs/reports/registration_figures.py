"""Registration QC figure: the template's outlines drawn over each medial frontal crop.

A crop is a piece of the subject's T1w resampled into template millimetres, so
when registration worked the template's pial and white-matter outlines follow
the subject's own anatomy. The outlines come from the tissue templates that
ship with nilearn (ICBM 2009a nonlinear symmetric, 1 mm), resampled onto the
crop's grid through its affine, which works for the mirrored right crop too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
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


@dataclass(frozen=True)
class RegistrationFigure:
    """The registration QC figure and what its panels show.

    Args:
        uri: the PNG as a data URI.
        sagittal_mm: per hemisphere, the distances from the midline (mm) of the
            sagittal panels: the voxel centres nearest :data:`SAGITTAL_OFFSETS_MM`
            (on a 2 mm grid, 5, 9 and 13 mm rather than 4, 8 and 12).
    """

    uri: str
    sagittal_mm: dict[str, tuple[float, ...]]


def registration_figure(crops: dict[str, Path]) -> RegistrationFigure | None:
    """Crops of both hemispheres with the template outlines and orientation letters.

    Two rows per hemisphere: sagittal slices near 4, 8 and 12 mm from the
    midline; then a coronal and an axial slice through the crop's centre, laid
    on their side (the crop is only 32 mm wide) at twice the scale so they
    read as well as the sagittal ones. Returns ``None`` when no crop exists.
    """
    rows = [(h, path) for h, path in sorted(crops.items()) if path.is_file()]
    if not rows:
        return None
    sagittal_mm: dict[str, tuple[float, ...]] = {}
    with report_style():
        shape = nib.load(str(rows[0][1])).shape
        fig = Figure(figsize=(11.0, 4.7 * len(rows)), facecolor=DARK_BACKGROUND)
        outer = fig.add_gridspec(2 * len(rows), 1, hspace=0.28, left=0.035, right=0.995,
                                 top=0.96, bottom=0.01)
        for row, (hemisphere, path) in enumerate(rows):
            # panel widths follow each slice's extent: one scale per row
            top = outer[2 * row].subgridspec(1, 3, wspace=0.05)
            bottom = outer[2 * row + 1].subgridspec(1, 2, wspace=0.08,
                                                    width_ratios=[shape[2], shape[1]])
            axes = [fig.add_subplot(top[0, i]) for i in range(3)]
            axes += [fig.add_subplot(bottom[0, i]) for i in range(2)]
            sagittal_mm[hemisphere] = _draw_crop(axes, hemisphere, nib.load(str(path)))
        return RegistrationFigure(to_data_uri(fig, tight=False), sagittal_mm)


def _draw_crop(axes, hemisphere: str, image: nib.Nifti1Image) -> tuple[float, ...]:
    """Draw one hemisphere's five panels; return the sagittal panels' distances (mm)."""
    data = np.asarray(image.dataobj, dtype=np.float32)
    outlines = template_on_grid(image.affine, data.shape)
    low, high = np.percentile(data, (1, 99.5))
    zooms = image.header.get_zooms()[:3]
    centre = [n // 2 for n in data.shape]
    # world coordinate of each index along each axis: the right crop is stored mirrored
    world = [image.affine[k, k] * np.arange(data.shape[k]) + image.affine[k, 3]
             for k in range(3)]
    sign = -1.0 if hemisphere == "L" else 1.0
    panels = []
    for offset in SAGITTAL_OFFSETS_MM:
        index = int(np.argmin(np.abs(world[0] - sign * offset)))
        panels.append(("sagittal", index, f"x = {world[0][index]:+.0f} mm"))
    panels.append(("coronal", centre[1], f"coronal, y = {world[1][centre[1]]:+.0f} mm"))
    panels.append(("axial", centre[2], f"axial, z = {world[2][centre[2]]:+.0f} mm"))
    for ax, (view, index, title) in zip(axes, panels, strict=True):
        image_slice, aspect = _slice(data, view, index, zooms)
        ax.imshow(image_slice, cmap="gray", vmin=low, vmax=high, origin="lower",
                  aspect=aspect, interpolation="bilinear")
        for name, colour in OUTLINE_COLOURS.items():
            outline, _ = _slice(outlines[name], view, index, zooms)
            if outline.max() > 0.5 > outline.min():
                ax.contour(outline, levels=[0.5], colors=[colour], linewidths=0.9)
        _orientation_letters(ax, image.affine, _VIEW_AXES[view])
        ax.set_axis_off()
        ax.set_title(title, color="#e5e7eb", fontsize=8.5, pad=3)
    axes[0].text(-0.08, 0.5, f"{HEMISPHERE_NAMES[hemisphere]} crop", color="#e5e7eb",
                 rotation=90, va="center", ha="right", transform=axes[0].transAxes)
    return tuple(abs(float(world[0][index])) for _, index, _ in panels[:3])


# (horizontal, vertical) array axis of each view as drawn (origin lower)
_VIEW_AXES = {"sagittal": (1, 2), "coronal": (2, 0), "axial": (1, 0)}
_POSITIVE, _NEGATIVE = "RAS", "LPI"


def _orientation_letters(ax, affine: np.ndarray, view_axes: tuple[int, int]) -> None:
    """The anatomical direction at each edge of a panel (R/L, A/P, S/I), from the affine."""
    horizontal, vertical = (_ends(affine, k) for k in view_axes)
    style = {"color": "#fde047", "fontsize": 8, "fontweight": "bold",
             "transform": ax.transAxes}
    ax.text(0.01, 0.5, horizontal[0], ha="left", va="center", **style)
    ax.text(0.99, 0.5, horizontal[1], ha="right", va="center", **style)
    ax.text(0.5, 0.01, vertical[0], ha="center", va="bottom", **style)
    ax.text(0.5, 0.99, vertical[1], ha="center", va="top", **style)


def _ends(affine: np.ndarray, axis: int) -> tuple[str, str]:
    """Letters at the (first, last) voxel end of array ``axis``."""
    direction = affine[:3, axis]
    world = int(np.argmax(np.abs(direction)))
    if direction[world] > 0:
        return _NEGATIVE[world], _POSITIVE[world]
    return _POSITIVE[world], _NEGATIVE[world]


def _slice(data: np.ndarray, view: str, index: int,
           zooms: tuple[float, ...]) -> tuple[np.ndarray, float]:
    # arrays are (x, y, z); the sagittal panel shows y across and z up; coronal
    # and axial lie on their side (z or y across, x up) so that the 32 mm-wide
    # crop is a wide panel, not a thin strip
    if view == "sagittal":
        return data[index, :, :].T, zooms[2] / zooms[1]
    if view == "coronal":
        return data[:, index, :], zooms[0] / zooms[2]
    return data[:, :, index], zooms[0] / zooms[1]
