"""Writing the preprocessing outputs of one T1w image into the derivative dataset."""

from __future__ import annotations

import shutil

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    traits,
)

from bids_pcs.config import HEMISPHERES


class _SinkInputSpec(BaseInterfaceInputSpec):
    in_crops = InputMultiObject(File(exists=True), mandatory=True, desc="crops, L then R")
    forward_transform = File(exists=True, mandatory=True, desc="T1w -> template transform")
    inverse_transform = File(exists=True, mandatory=True, desc="template -> T1w transform")
    qc_file = File(exists=True, mandatory=True, desc="QC record (JSON)")
    out_crops = traits.List(traits.Str, mandatory=True, desc="destinations of the crops")
    out_forward_transform = traits.Str(mandatory=True, desc="destination")
    out_inverse_transform = traits.Str(mandatory=True, desc="destination")
    out_qc = traits.Str(mandatory=True, desc="destination of the QC record")
    source_uri = traits.Str(mandatory=True, desc="BIDS URI of the raw T1w image")
    dataset_root = traits.Str(mandatory=True, desc="OUTPUT_DIR, to form bids:: URIs")
    crop_metadata = traits.Dict(desc="geometry, template and normalisation of the crops")
    transform_metadata = traits.Dict(desc="registration settings")
    preprocessing_settings = traits.Dict(desc="settings the outputs were made with")


class _SinkOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True), desc="every file written")


class PreprocDerivativesSink(SimpleInterface):
    """Copy crops, transforms and QC into OUTPUT_DIR, each file atomically, with sidecars.

    The image's set is written as a unit (:mod:`bids_pcs.io.manifest`): the QC
    record is removed first and written last, listing every other file with
    its size and SHA-256, so a set interrupted mid-way (a full disk, a kill)
    is never taken for a finished one.

    Always runs (never cached), so a rerun over a deleted or partial output
    directory writes the files again from the cached results in the work dir.
    """

    input_spec = _SinkInputSpec
    output_spec = _SinkOutputSpec
    _always_run = True

    def _run_interface(self, runtime):
        import json
        from pathlib import Path

        from bids_pcs.io.atomic import atomic_path, write_json
        from bids_pcs.io.derivatives import write_sidecar
        from bids_pcs.io.manifest import FILES_KEY, describe_files

        inputs = self.inputs
        root = Path(inputs.dataset_root)
        qc = json.loads(Path(inputs.qc_file).read_text())
        written = []
        # until the new record is written, the set is incomplete for every reader
        Path(inputs.out_qc).unlink(missing_ok=True)

        def copy(src: str, dst: str) -> Path:
            with atomic_path(dst) as tmp:
                shutil.copyfile(src, tmp)
            written.append(dst)
            return Path(dst)

        def uri(path: str) -> str:
            return f"bids::{Path(path).relative_to(root).as_posix()}"

        forward = copy(inputs.forward_transform, inputs.out_forward_transform)
        inverse = copy(inputs.inverse_transform, inputs.out_inverse_transform)
        written.append(write_sidecar(forward, [inputs.source_uri], FromSpace="T1w",
                                     ToSpace=qc["Template"], **inputs.transform_metadata))
        written.append(write_sidecar(inverse, [inputs.source_uri], FromSpace=qc["Template"],
                                     ToSpace="T1w", **inputs.transform_metadata))
        for hemisphere, src, dst in zip(HEMISPHERES, inputs.in_crops, inputs.out_crops,
                                        strict=True):
            crop = copy(src, dst)
            written.append(write_sidecar(
                crop, [inputs.source_uri, uri(inputs.out_forward_transform)],
                Hemisphere=hemisphere,
                # required by BIDS for preprocessed T1w; crops come from the input image
                # as it is: skull-stripped only when it was
                SkullStripped=bool(qc.get("SkullStripped", False)),
                **inputs.crop_metadata,
                Mirrored=bool(hemisphere == "R" and inputs.crop_metadata.get("MirrorRight")),
                RegistrationQC={"Correlation": qc["Correlation"][hemisphere],
                                "Threshold": qc["Threshold"], "Passed": qc["Passed"]},
            ))
        record = {"Sources": [inputs.source_uri, *(uri(p) for p in inputs.out_crops)],
                  **qc, "Settings": inputs.preprocessing_settings,
                  FILES_KEY: describe_files(written, Path(inputs.out_qc).parent)}
        write_json(inputs.out_qc, record)
        written.append(inputs.out_qc)
        self._results["out_files"] = [str(path) for path in written]
        return runtime
