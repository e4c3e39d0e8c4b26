"""Detection of skull-stripped input (bids_pcs.spatial.skullstrip) and its setting.

Real images: Colin27 with skull and its brain extraction (mricron's ch2bet),
each also moved, resampled to anisotropic voxels and stored with other axis
codes; the real 2 x 2 x 3 mm whole-head scan of the shared data.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from preprocess_helpers import COLIN27, COLIN27_BRAIN, perturb, rigid_motion

from bids_pcs.config import RecipeError, load_settings
from bids_pcs.interfaces.images import CheckSkullStripped
from bids_pcs.models.recipe import model_overrides
from bids_pcs.reports.subject import registration_path_sentence
from bids_pcs.spatial.qc import skull_strip_record
from bids_pcs.spatial.skullstrip import (
    MAX_TISSUE_OUTSIDE,
    check_skull_stripped,
    tissue_outside_brain,
)
from bids_pcs.workflows.descriptions import preprocessing_description


def _float(path) -> nib.Nifti1Image:
    img = nib.load(str(path))
    return nib.Nifti1Image(np.asarray(img.dataobj, dtype=np.float32), img.affine)


@pytest.fixture(scope="module")
def colin() -> dict[str, nib.Nifti1Image]:
    if not (COLIN27.is_file() and COLIN27_BRAIN.is_file()):
        pytest.skip("Colin27 absent: install the Debian package mricron-data")
    brain = _float(COLIN27_BRAIN)
    return {"head": _float(COLIN27), "brain": brain,
            "brain_moved": perturb(brain, rigid_motion(seed=2), (1.2, 1.0, 1.8),
                                   ("L", "P", "I"))}


def test_a_brain_extraction_is_told_from_the_head_it_came_from(colin, shared_data):
    kmeans = _float(shared_data / "real-t1/KmeansTest_T1UCharRaw.nii.gz")
    shares = {name: tissue_outside_brain(img) for name, img in
              {**colin, "kmeans": kmeans}.items()}
    # whole heads: more tissue outside the brain than half the brain's volume
    assert min(shares["head"], shares["kmeans"]) > 0.5, shares
    # brains: almost none, moved and resampled or not
    assert max(shares["brain"], shares["brain_moved"]) < MAX_TISSUE_OUTSIDE / 2, shares


def test_the_setting_overrides_the_measure_and_both_are_recorded(colin, tmp_path):
    head = check_skull_stripped(colin["head"], "yes")
    assert (head.skull_stripped, head.decided_by) == (True, "setting")
    assert head.tissue_outside_brain > 0.5  # measured all the same, for the QC record
    brain = check_skull_stripped(colin["brain"], "no")
    assert (brain.skull_stripped, brain.decided_by) == (False, "setting")
    with pytest.raises(ValueError, match="auto, yes, no"):
        check_skull_stripped(colin["brain"], "maybe")
    # auto, through the Nipype interface of the workflow
    path = tmp_path / "brain.nii.gz"
    nib.save(colin["brain"], path)
    outputs = CheckSkullStripped(in_file=str(path)).run(cwd=str(tmp_path)).outputs
    assert outputs.skull_stripped is True and outputs.decided_by == "detected"
    assert outputs.tissue_outside_brain == pytest.approx(brain.tissue_outside_brain)


def test_skull_stripped_is_a_registration_setting_of_the_data_not_of_a_model():
    assert load_settings("default").registration.skull_stripped == "auto"
    with pytest.raises(RecipeError, match="auto, yes or no"):
        load_settings("default", overrides={"registration": {"skull_stripped": "maybe"}})
    card = {"recipe": {"name": "default",
                       "registration": {"fine_mm": 2.0, "skull_stripped": "yes"}}}
    # a model trained on stripped images does not make a new dataset stripped
    assert model_overrides(card)["registration"] == {"fine_mm": 2.0}
    # the methods text says which path the images took
    for mode, words in (("auto", "found to be skull-stripped"), ("yes", "skull-stripped, were"),
                        ("no", "masked with a rough morphological brain mask")):
        settings = load_settings("default", overrides={"registration": {"skull_stripped": mode}})
        assert words in preprocessing_description(settings)
    # the QC record and the report say which path an image took
    record = skull_strip_record(True, "detected", 0.0203)
    assert record == {"SkullStripped": True, "SkullStrippedDecidedBy": "detected",
                      "TissueOutsideBrain": 0.0203, "RegistrationPath": "brain-as-given"}
    assert "skull-stripped (detected; tissue outside the brain 0.02" in \
        registration_path_sentence(record)
    record = skull_strip_record(False, "setting", float("inf"))
    assert record["RegistrationPath"] == "rough-brain-mask"
    assert record["TissueOutsideBrain"] is None  # JSON has no infinity
    assert "with skull (--skull-stripped no)" in registration_path_sentence(record)
    assert registration_path_sentence({"Passed": True}) == ""  # a record from before
