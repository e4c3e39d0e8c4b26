"""The registration target: the MNI152 2009a nonlinear symmetric template.

nilearn ships the ICBM 2009a nonlinear *symmetric* T1 template (skull-stripped,
1 mm, 197 x 233 x 189 voxels) inside its wheel, so no download is ever needed.
The template and the masks derived from it are loaded once per process.

Usage::

    template = load_template()
    template.t1.shape  # (197, 233, 189)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bids_pcs.config import TEMPLATE_NAME, TemplateSettings
from bids_pcs.errors import InputDataError

# the file nilearn loads must be the 2009a symmetric one; anything else would
# silently change the template space every derivative claims to be in
_EXPECTED_FILE = "mni_icbm152_t1_tal_nlin_sym_09a"
_RECIPE_DEFAULT = TemplateSettings()
# nilearn's own threshold for its brain mask (template rescaled to [0, 1])
_BRAIN_THRESHOLD = 0.2


@dataclass(frozen=True)
class Template:
    """The template T1 image and its brain mask, both on the 1 mm template grid (RAS).

    Args:
        t1: T1 intensities rescaled to [0, 1], float32.
        brain_mask: brain voxels (uint8), nilearn's threshold of the T1.
        source: path of the file nilearn read.
    """

    t1: nib.Nifti1Image
    brain_mask: nib.Nifti1Image
    source: Path

    @property
    def name(self) -> str:
        return TEMPLATE_NAME  # the only one TemplateSettings accepts


@functools.lru_cache(maxsize=2)
def load_template(settings: TemplateSettings = _RECIPE_DEFAULT) -> Template:
    """The template that ``settings`` (the recipe's ``[template]``) names, cached per process.

    :class:`~bids_pcs.config.TemplateSettings` refuses any template but the one
    shipped (``MNI152NLin2009aSym`` at 1 mm) when a recipe is read.
    """
    from nilearn.datasets import load_mni152_template
    from nilearn.datasets.struct import MNI152_FILE_PATH

    source = Path(MNI152_FILE_PATH)
    if _EXPECTED_FILE not in source.name:
        raise InputDataError(
            f"nilearn's MNI152 template is {source.name}, not the 2009a symmetric template; "
            "install a nilearn version that ships mni_icbm152_t1_tal_nlin_sym_09a."
        )
    t1 = nib.as_closest_canonical(load_mni152_template(resolution=int(settings.resolution_mm)))
    data = np.asarray(t1.dataobj, dtype=np.float32)
    t1 = _image(data, t1.affine)
    mask = (data > _BRAIN_THRESHOLD).astype(np.uint8)
    return Template(t1=t1, brain_mask=_image(mask, t1.affine), source=source)


@functools.lru_cache(maxsize=4)
def registration_mask(dilation_mm: float = 6.0) -> nib.Nifti1Image:
    """The template brain mask dilated by ``dilation_mm``, holes filled.

    The registration metric is computed inside this mask only: the template is
    skull-stripped, so the scalp, skull and neck of whole-head scans must not
    pull the fit, while a rim of dark CSF and bone around the brain helps it
    find the brain's edge in both whole-head and skull-stripped scans.
    """
    template = load_template()
    mask = np.asarray(template.brain_mask.dataobj) > 0
    iterations = max(1, int(round(dilation_mm / template_voxel_mm())))
    mask = ndimage.binary_dilation(mask, ndimage.generate_binary_structure(3, 1),
                                   iterations=iterations)
    mask = ndimage.binary_fill_holes(mask)
    return _image(mask.astype(np.uint8), template.t1.affine)


def template_voxel_mm() -> float:
    """Voxel size of the template grid (1 mm)."""
    return float(load_template().t1.header.get_zooms()[0])


def _image(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_xyzt_units("mm", "sec")
    return img
