"""Interfaces for what happens to crops after resampling: normalisation and QC."""

from __future__ import annotations

import json
import os

import nibabel as nib
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from bids_pcs.config import HEMISPHERES, IntensitySettings
from bids_pcs.interfaces._geometry import add_crop_traits, crop_from_inputs


class _NormaliseInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="crops")
    method = traits.Enum("percentile", "zscore", usedefault=True, desc="normalisation")
    lower_percentile = traits.Float(1.0, usedefault=True, desc="maps to 0 (percentile)")
    upper_percentile = traits.Float(99.0, usedefault=True, desc="maps to 1 (percentile)")


class _NormaliseOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True), desc="normalised float32 crops")


class NormaliseCropIntensity(SimpleInterface):
    """Normalise each crop's intensities as the network expects them."""

    input_spec = _NormaliseInputSpec
    output_spec = _NormaliseOutputSpec

    def _run_interface(self, runtime):
        from bids_pcs.spatial.intensity import normalise_intensity

        settings = IntensitySettings(method=self.inputs.method,
                                     lower_percentile=self.inputs.lower_percentile,
                                     upper_percentile=self.inputs.upper_percentile)
        out_files = []
        for in_file in self.inputs.in_files:
            img = nib.load(in_file)
            data = normalise_intensity(np.asarray(img.dataobj), settings)
            out = nib.Nifti1Image(data, img.affine)
            out.header.set_xyzt_units("mm", "sec")
            out.header.set_data_dtype(np.float32)
            name = os.path.basename(in_file).replace(".nii.gz", "")
            out_files.append(os.path.join(runtime.cwd, f"{name}_norm.nii.gz"))
            nib.save(out, out_files[-1])
        self._results["out_files"] = out_files
        return runtime


@add_crop_traits
class _QCInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="crops, left then right")
    min_correlation = traits.Float(mandatory=True, desc="pass/fail threshold")
    initial_rotation_deg = traits.List(traits.Float, desc="start rotation (recorded)")
    skull_stripped = traits.Bool(desc="registered as a brain, without the rough mask (recorded)")
    skull_stripped_by = traits.Enum("detected", "setting", desc="how that was decided")
    tissue_outside_brain = traits.Float(desc="the measure of the detection (recorded)")


class _QCOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="QC record (JSON)")
    passed = traits.Bool(desc="both hemispheres pass")
    min_correlation = traits.Float(desc="the lower of the two correlations")


class RegistrationQC(SimpleInterface):
    """Correlation of each crop with the template's crop, and a pass/fail flag."""

    input_spec = _QCInputSpec
    output_spec = _QCOutputSpec

    def _run_interface(self, runtime):
        from bids_pcs.spatial.qc import registration_qc, skull_strip_record

        crop = crop_from_inputs(self.inputs)
        crops = {h: nib.load(f) for h, f in zip(HEMISPHERES, self.inputs.in_files, strict=True)}
        record = registration_qc(crops, crop, self.inputs.min_correlation)
        if self.inputs.initial_rotation_deg:
            record["InitialRotationDeg"] = list(self.inputs.initial_rotation_deg)
        if isdefined(self.inputs.skull_stripped):
            record.update(skull_strip_record(self.inputs.skull_stripped,
                                             self.inputs.skull_stripped_by,
                                             self.inputs.tissue_outside_brain))
        out_file = os.path.join(runtime.cwd, "registration_qc.json")
        with open(out_file, "w") as stream:
            json.dump(record, stream, indent=2, sort_keys=True)
        self._results["out_file"] = out_file
        self._results["passed"] = record["Passed"]
        self._results["min_correlation"] = record["MinCorrelation"]
        return runtime
