"""Is a T1w image already skull-stripped?  Decides which registration path it takes.

The template is brain-extracted, so registration is always brain to brain: a
whole-head image is masked with :func:`~bids_pcs.spatial.brainmask.rough_brain_mask`
first, while a skull-stripped image already is a brain and is registered as
it is (the rough mask would only trim its edge).  ``registration.skull_stripped``
(``--skull-stripped``) says which path to take: ``yes``, ``no``, or ``auto``,
which measures the image.

The rule (``auto``): on a 2 mm copy, the voxels more than ``RIM_MM`` outside
the rough brain mask that are brighter than ``TISSUE_LEVEL`` of the way from
the image's minimum to the brain's median intensity are tissue outside the
brain (scalp, skull marrow, muscle, eyes, neck).  Their volume as a share of
the brain's is ``tissue_outside_brain``; an image with less than
``MAX_TISSUE_OUTSIDE`` (0.1) is skull-stripped.  Measured (as stored, then
moved, resampled to 1.2 x 1.0 x 1.8 mm and reoriented): whole heads, Colin27
1.30 (1.63), the real 2 x 2 x 3 mm scan of the test data 2.16 (1.65), four
synthetic heads of ``bids_pcs-synth`` 0.79-1.23; brains, Colin27's own brain
extractions (mricron's ``ch2bet``, ``ch2better``) 0.02 (0.01) and 0.001 (0.001).

fMRIPrep's heuristic (all six faces of the volume are zero) is not used: a
whole-head image padded with zeros (resampled, defaced, cropped by a
converter) has zero faces too.

Failure modes, and what they cost:

- A brain extraction that left much non-brain (eyes, neck, dura thicker than
  ``RIM_MM`` over a large area) reads as whole head; it then takes the
  whole-head path, whose rough mask removes that tissue as it does a skull's.
- A whole-head image with almost nothing outside the brain (a field of view
  cut to the brain) reads as skull-stripped, and is registered without the
  rough mask: what little is outside the brain enters the metric.
- Bright background (ghosting, a noise floor above ``TISSUE_LEVEL`` of the
  brain's median) counts as tissue: a stripped image stored with such a
  background reads as whole head.
- A rough brain mask that misses much of a stripped brain leaves that brain
  "outside", and the image reads as whole head.  This happens on the
  high-contrast synthetic brains of ``bids_pcs-synth --no-skull``, where the
  first Otsu class takes in the grey matter: 0.001, 0.17, 0.49 and 0.80 for
  four of them, one detected.  Such an image takes the whole-head path, the
  path every image took before the detection existed.

Give ``--skull-stripped yes`` or ``no`` when a dataset is known; the QC record
holds the measured share either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_pcs.spatial.antsio import downsample, to_ants
from bids_pcs.spatial.brainmask import rough_brain_mask

SKULL_STRIPPED_MODES: tuple[str, ...] = ("auto", "yes", "no")
# the measure works on a coarse copy: cheap, and insensitive to the voxel size
DETECT_MM = 2.0
# tissue within this distance of the rough brain mask may be the brain's own edge
RIM_MM = 4.0
# "tissue": brighter than this share of the way from the minimum to the brain's median
TISSUE_LEVEL = 0.1
# a skull-stripped image has (nearly) no tissue outside its brain
MAX_TISSUE_OUTSIDE = 0.1


@dataclass(frozen=True)
class SkullStripCheck:
    """How an image's registration path was chosen.

    Args:
        skull_stripped: whether the image is registered as a brain (no rough mask).
        decided_by: ``"detected"`` (``auto``) or ``"setting"`` (``yes``/``no`` given).
        tissue_outside_brain: the measured share (see the module), whichever decided.
    """

    skull_stripped: bool
    decided_by: str
    tissue_outside_brain: float


def tissue_outside_brain(image: nib.Nifti1Image) -> float:
    """Volume of tissue more than ``RIM_MM`` outside the rough brain mask, over the brain's."""
    data = downsample(to_ants(image), DETECT_MM).numpy()
    brain = rough_brain_mask(data, DETECT_MM)
    if not brain.any():
        return float("inf")  # nothing brain-like: certainly not a clean brain extraction
    rim = max(1, int(round(RIM_MM / DETECT_MM)))
    outside = ~ndimage.binary_dilation(brain, iterations=rim)
    low = float(data.min())
    level = low + TISSUE_LEVEL * (float(np.median(data[brain])) - low)
    return float((outside & (data > level)).sum() / brain.sum())


def check_skull_stripped(image: nib.Nifti1Image, mode: str = "auto") -> SkullStripCheck:
    """The registration path of ``image`` under ``mode`` (``auto``, ``yes`` or ``no``)."""
    if mode not in SKULL_STRIPPED_MODES:
        raise ValueError(f"skull_stripped must be one of {', '.join(SKULL_STRIPPED_MODES)}, "
                         f"not {mode!r}")
    share = tissue_outside_brain(image)
    if mode == "auto":
        return SkullStripCheck(share < MAX_TISSUE_OUTSIDE, "detected", round(share, 4))
    return SkullStripCheck(mode == "yes", "setting", round(share, 4))
