"""Figure plumbing shared by every report: one style, one palette, PNG data URIs.

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly (the
Agg renderer, no pyplot), so reports can be written from worker processes and
threads without a display and without pyplot's global state. Each figure is
returned as a ``data:image/png;base64,...`` URI and embedded in the HTML page:
a report is one self-contained file that opens offline.

Usage::

    with report_style():
        fig = Figure(figsize=(4, 3))
        fig.add_subplot().plot([1, 2])
        uri = to_data_uri(fig)
"""

from __future__ import annotations

import base64
import contextlib
import io
from collections.abc import Iterator

import matplotlib
from matplotlib.figure import Figure

from bids_pcs.io.derivatives import DSEG_HEMISPHERES

# the dseg colours of desc-pcs_dseg.tsv, so figures and viewers agree
HEMISPHERE_COLOURS = {h: colour for h, (_, _, colour) in DSEG_HEMISPHERES.items()}
HEMISPHERE_NAMES = {"L": "left", "R": "right"}
# ordered light to dark so a stacked bar reads as "more sulcus"
CLASS_COLOURS = {"absent": "#c9ced6", "present": "#5b8fd1", "prominent": "#1f3f7a"}
# template outlines on the registration figure (pial and white-matter surfaces)
OUTLINE_COLOURS = {"brain": "#ff5a5f", "white": "#35c2ff"}
DARK_BACKGROUND = "#0b0d10"

_STYLE = {
    # DejaVu Sans ships with matplotlib: identical figures on every machine
    "font.family": "DejaVu Sans",
    "font.size": 9,
    "axes.titlesize": 9.5,
    "axes.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#6b7280",
    "axes.labelcolor": "#1f2937",
    "xtick.color": "#374151",
    "ytick.color": "#374151",
    "legend.frameon": False,
    "legend.fontsize": 8.5,
    "savefig.pad_inches": 0.06,
    "image.interpolation": "nearest",
}


@contextlib.contextmanager
def report_style() -> Iterator[None]:
    """Matplotlib settings of every report figure (in force while drawing)."""
    with matplotlib.rc_context(_STYLE):
        yield


def to_data_uri(fig: Figure, *, dpi: int = 110, tight: bool = True) -> str:
    """Render ``fig`` to PNG and return it as a base64 data URI."""
    png = to_png(fig, dpi=dpi, tight=tight)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def to_png(fig: Figure, *, dpi: int = 110, tight: bool = True) -> bytes:
    """Render ``fig`` to PNG bytes (keeping its face colour, e.g. a dark background).

    ``tight`` trims the margins to the drawn artists, at the cost of drawing
    the figure twice; image grids set their margins themselves and skip it.
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor=fig.get_facecolor(),
                bbox_inches="tight" if tight else None)
    return buffer.getvalue()


def file_data_uri(data: bytes, suffix: str) -> str:
    """A data URI for an existing figure file (``.png``, ``.svg``, ``.jpg``)."""
    mime = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg",
            ".jpeg": "image/jpeg"}.get(suffix.lower())
    if mime is None:
        raise ValueError(f"unsupported figure type {suffix!r}")
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")
