"""Loading a T1w image into the form every later step expects, and what kind it is."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_pcs.io.nifti import load_t1w


class _LoadT1wInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="T1w NIfTI image")


class _LoadT1wOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="the T1w image, float32, reoriented to closest RAS")


class LoadT1w(SimpleInterface):
    """Check a T1w image and reorient it to the closest RAS axes (no resampling).

    Reorientation only permutes and flips array axes, so every voxel keeps its
    value and its position in scanner space: transforms estimated on the
    result apply unchanged to the original file.
    """

    input_spec = _LoadT1wInputSpec
    output_spec = _LoadT1wOutputSpec

    def _run_interface(self, runtime):
        img = nib.as_closest_canonical(load_t1w(self.inputs.in_file))
        out = nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)
        out.header.set_xyzt_units("mm", "sec")
        # uncompressed: gzip of a 1 mm head costs seconds, and this file is read right away
        out_file = os.path.join(runtime.cwd, "t1w_ras.nii")
        nib.save(out, out_file)
        self._results["out_file"] = out_file
        return runtime


class _CheckSkullStrippedInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="T1w image (as loaded, before N4)")
    mode = traits.Enum("auto", "yes", "no", usedefault=True,
                       desc="auto: measure the image; yes/no: the dataset says")


class _CheckSkullStrippedOutputSpec(TraitedSpec):
    skull_stripped = traits.Bool(desc="register the image as a brain (no rough mask)")
    decided_by = traits.Enum("detected", "setting", desc="how skull_stripped was chosen")
    tissue_outside_brain = traits.Float(desc="tissue outside the brain over brain volume")


class CheckSkullStripped(SimpleInterface):
    """Whether a T1w image is skull-stripped (see :mod:`bids_pcs.spatial.skullstrip`)."""

    input_spec = _CheckSkullStrippedInputSpec
    output_spec = _CheckSkullStrippedOutputSpec

    def _run_interface(self, runtime):
        from bids_pcs.spatial.skullstrip import check_skull_stripped

        check = check_skull_stripped(nib.load(self.inputs.in_file), self.inputs.mode)
        self._results["skull_stripped"] = check.skull_stripped
        self._results["decided_by"] = check.decided_by
        self._results["tissue_outside_brain"] = check.tissue_outside_brain
        return runtime
