"""Nipype interfaces over antspyx's Python API (antspyx ships no command-line tools).

Each interface imports antspyx inside ``_run_interface``, so building a
workflow stays cheap.  ITK runs one thread per process (see
:data:`bids_pcs.spatial.antsio.ITK_THREADS`: multi-threaded mutual information
does not repeat), so every node declares one process and Nipype runs images
side by side.
"""

from __future__ import annotations

import os

import nibabel as nib
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_pcs.config import HEMISPHERES, RegistrationSettings
from bids_pcs.interfaces._geometry import add_crop_traits, crop_from_inputs


class _N4InputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="T1w image")


class _N4OutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="bias-corrected T1w image, native grid")
    bias_field = File(exists=True, desc="estimated multiplicative bias field")


class N4BiasFieldCorrection(SimpleInterface):
    """N4 intensity inhomogeneity correction (fitted on a coarse copy of the image)."""

    input_spec = _N4InputSpec
    output_spec = _N4OutputSpec

    def _run_interface(self, runtime):
        from bids_pcs.spatial.intensity import n4_correct

        corrected, field = n4_correct(nib.load(self.inputs.in_file))
        self._results["out_file"] = os.path.join(runtime.cwd, "t1w_n4.nii")
        self._results["bias_field"] = os.path.join(runtime.cwd, "bias_field.nii")
        nib.save(corrected, self._results["out_file"])
        nib.save(field, self._results["bias_field"])
        return runtime


@add_crop_traits
class _RegisterInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="bias-corrected T1w image")
    coarse_mm = traits.Float(4.0, usedefault=True, desc="first affine level (mm)")
    fine_mm = traits.Float(2.0, usedefault=True, desc="last affine level (mm)")
    refine_on_region = traits.Bool(True, usedefault=True,
                                   desc="refine the affine on the crop boxes only")
    deformable = traits.Bool(False, usedefault=True, desc="add a SyN stage")
    random_seed = traits.Int(0, usedefault=True, desc="seed of the metric's point sampling")
    skull_stripped = traits.Bool(False, usedefault=True,
                                 desc="the image is a brain: register it without the rough mask")


class _RegisterOutputSpec(TraitedSpec):
    forward_transform = File(exists=True, desc="T1w -> template composite transform (.h5)")
    inverse_transform = File(exists=True, desc="template -> T1w composite transform (.h5)")
    initial_rotation_deg = traits.List(traits.Float, desc="winning start rotation")
    initial_metric = traits.Float(desc="mutual information cost of the start")


class RegisterToTemplate(SimpleInterface):
    """Register a T1w image to MNI152NLin2009aSym (see :mod:`bids_pcs.spatial.registration`)."""

    input_spec = _RegisterInputSpec
    output_spec = _RegisterOutputSpec

    def _run_interface(self, runtime):
        from bids_pcs.spatial.registration import register_to_template

        settings = RegistrationSettings(
            coarse_mm=self.inputs.coarse_mm, fine_mm=self.inputs.fine_mm,
            refine_on_region=self.inputs.refine_on_region,
            deformable=self.inputs.deformable, random_seed=self.inputs.random_seed,
        )
        result = register_to_template(nib.load(self.inputs.in_file), settings,
                                      crop_from_inputs(self.inputs), runtime.cwd,
                                      skull_stripped=self.inputs.skull_stripped)
        self._results["forward_transform"] = str(result.forward_transform)
        self._results["inverse_transform"] = str(result.inverse_transform)
        self._results["initial_rotation_deg"] = list(result.initial_rotation_deg)
        self._results["initial_metric"] = result.initial_metric
        return runtime


@add_crop_traits
class _ResampleCropsInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="native-space T1w image")
    transforms = InputMultiObject(File(exists=True), mandatory=True,
                                  desc="T1w -> template transforms, as ANTs applies them")


class _ResampleCropsOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True), desc="crops, left then right")


class ResampleCrops(SimpleInterface):
    """Resample the medial frontal box of each hemisphere straight from the native image.

    One linear interpolation through the composed transform; the right crop
    comes out mirrored when ``mirror_right`` (see :mod:`bids_pcs.spatial.crops`).
    """

    input_spec = _ResampleCropsInputSpec
    output_spec = _ResampleCropsOutputSpec

    def _run_interface(self, runtime):
        from bids_pcs.spatial.crops import resample_to_crop

        image = nib.load(self.inputs.in_file)
        crop = crop_from_inputs(self.inputs)
        out_files = []
        for hemisphere in HEMISPHERES:
            out = resample_to_crop(image, self.inputs.transforms, crop, hemisphere)
            out_file = os.path.join(runtime.cwd, f"crop_hemi-{hemisphere}.nii.gz")
            nib.save(out, out_file)
            out_files.append(out_file)
        self._results["out_files"] = out_files
        return runtime
