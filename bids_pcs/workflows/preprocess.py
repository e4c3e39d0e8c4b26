"""Preprocessing of one T1w image: registration to the template and medial frontal crops."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_pcs.config import Settings
from bids_pcs.interfaces._geometry import crop_inputs
from bids_pcs.interfaces.ants import (
    N4BiasFieldCorrection,
    RegisterToTemplate,
    ResampleCrops,
)
from bids_pcs.interfaces.crops import NormaliseCropIntensity, RegistrationQC
from bids_pcs.interfaces.images import CheckSkullStripped, LoadT1w
from bids_pcs.workflows.descriptions import preprocessing_description


def init_pcs_preproc_wf(*, settings: Settings, image_gb: float | None = None,
                        name: str = "pcs_preproc_wf") -> pe.Workflow:
    """Register a T1w image to MNI152NLin2009aSym and crop each hemisphere's medial frontal box.

    Workflow graph::

        inputnode -> load_t1w -> n4 -> register -> resample_crops -> normalise -> qc -> outputnode
                         `-> check_skull_stripped -^ (brain as given, or rough brain mask)

    Parameters
    ----------
    settings
        Run settings; reads ``template``, ``crop``, ``registration`` and ``intensity``.
    image_gb
        Estimated peak memory of this image's heavy nodes (N4, registration,
        resampling; see :func:`bids_pcs.resources.image_memory_gb`), which
        MultiProc counts against its ``memory_gb``; default: fixed estimates
        for a 1 mm head.
    name
        Workflow name (unique per image inside a meta-workflow).

    Inputs
    ------
    t1w
        Path of the raw T1w NIfTI image.

    Outputs
    -------
    crops
        Normalised float32 crops, ``[left, right]`` (the right one mirrored
        when ``crop.mirror_right``), on ``settings.crop`` grids in template mm.
    forward_transform
        ANTs composite transform (``.h5``) taking T1w images to template space.
    inverse_transform
        Its inverse, taking template-space maps to the T1w grid.
    qc_file
        JSON record of the registration QC.
    qc_passed
        Whether both crops correlate with the template's above the threshold.
    """
    reg = settings.registration
    workflow = pe.Workflow(name=name)
    workflow.__desc__ = preprocessing_description(settings)

    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=["crops", "forward_transform", "inverse_transform",
                                      "qc_file", "qc_passed"]),
        name="outputnode",
    )
    load = pe.Node(LoadT1w(), name="load_t1w", mem_gb=0.5)
    # on the image as loaded: N4 lifts a stripped image's zero background off its minimum
    check = pe.Node(CheckSkullStripped(mode=reg.skull_stripped), name="check_skull_stripped",
                    mem_gb=0.5)
    register = pe.Node(
        RegisterToTemplate(coarse_mm=reg.coarse_mm, fine_mm=reg.fine_mm,
                           refine_on_region=reg.refine_on_region, deformable=reg.deformable,
                           random_seed=reg.random_seed, **crop_inputs(settings.crop)),
        name="register", mem_gb=image_gb or (2.0 if reg.deformable else 1.0),
    )
    resample = pe.Node(ResampleCrops(**crop_inputs(settings.crop)), name="resample_crops",
                       mem_gb=image_gb or 0.7)
    normalise = pe.Node(
        NormaliseCropIntensity(method=settings.intensity.method,
                               lower_percentile=settings.intensity.lower_percentile,
                               upper_percentile=settings.intensity.upper_percentile),
        name="normalise_crops", mem_gb=0.2,
    )
    qc = pe.Node(RegistrationQC(min_correlation=reg.qc_min_correlation,
                                **crop_inputs(settings.crop)),
                 name="registration_qc", mem_gb=0.3)

    workflow.connect([
        (inputnode, load, [("t1w", "in_file")]),
        (load, check, [("out_file", "in_file")]),
        (check, register, [("skull_stripped", "skull_stripped")]),
        (check, qc, [("skull_stripped", "skull_stripped"), ("decided_by", "skull_stripped_by"),
                     ("tissue_outside_brain", "tissue_outside_brain")]),
        (register, resample, [("forward_transform", "transforms")]),
        (register, qc, [("initial_rotation_deg", "initial_rotation_deg")]),
        (resample, normalise, [("out_files", "in_files")]),
        (normalise, qc, [("out_files", "in_files")]),
        (normalise, outputnode, [("out_files", "crops")]),
        (register, outputnode, [("forward_transform", "forward_transform"),
                                ("inverse_transform", "inverse_transform")]),
        (qc, outputnode, [("out_file", "qc_file"), ("passed", "qc_passed")]),
    ])
    if reg.n4:
        n4 = pe.Node(N4BiasFieldCorrection(), name="n4", mem_gb=image_gb or 1.0)
        workflow.connect([
            (load, n4, [("out_file", "in_file")]),
            (n4, register, [("out_file", "in_file")]),
            (n4, resample, [("out_file", "in_file")]),
        ])
    else:
        workflow.connect([
            (load, register, [("out_file", "in_file")]),
            (load, resample, [("out_file", "in_file")]),
        ])
    return workflow
