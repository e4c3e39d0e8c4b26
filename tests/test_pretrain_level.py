"""`bids_pcs BIDS_DIR OUTPUT_DIR pretrain --method M` end to end, on crops written to disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from training_helpers import TINY_SHAPE, smooth_crops, tiny_cnn

from bids_pcs import preprocess
from bids_pcs.config import load_settings
from bids_pcs.errors import InputDataError
from bids_pcs.io.derivatives import crop_path
from bids_pcs.levels import pretrain
from bids_pcs.models.model_io import load_pretrained, read_model_card


@dataclass
class _Preprocessed:
    crops: dict[str, Path]
    qc_passed: bool


def _bids(root: Path, subjects: list[str]) -> Path:
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    for subject in subjects:
        anat = root / f"sub-{subject}" / "anat"
        anat.mkdir(parents=True)
        nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)),
                 anat / f"sub-{subject}_T1w.nii.gz")
    return root


@pytest.fixture
def preprocessing(monkeypatch):
    """bids_pcs.preprocess.preprocess_images (registration is tested elsewhere): crops for
    sub-01, failed registration QC for sub-02."""
    calls = []

    def preprocess_images(settings, images, output_dir=None, work_dir=None):
        calls.append([image.prefix for image in images])
        results = []
        for n, image in enumerate(images):
            crops = {h: crop_path(Path(output_dir or settings.run.output_dir), image, h)
                     for h in "LR"}
            passed = image.subject != "02"
            if passed:
                volumes = smooth_crops(2, TINY_SHAPE, seed=n)
                for volume, hemisphere in zip(volumes, "LR", strict=True):
                    crops[hemisphere].parent.mkdir(parents=True, exist_ok=True)
                    nib.save(nib.Nifti1Image(volume[0].numpy(), np.eye(4)), crops[hemisphere])
            results.append(_Preprocessed(crops=crops, qc_passed=passed))
        return results

    monkeypatch.setattr(preprocess, "preprocess_images", preprocess_images)
    return calls


def _settings(tmp_path, bids_dir, **run):
    return load_settings("default", overrides={
        "run": {"bids_dir": str(bids_dir), "output_dir": str(tmp_path / "out"), "device": "cpu",
                "work_dir": str(tmp_path / "work"), "seed": 1, **run},
        "crop": {"size_mm": list(TINY_SHAPE)},
        "model": {"architecture": "cnn", "feature_size": 4},
        "pretrain": {"method": "diffusion", "epochs": 2, "batch_size": 2,
                     "options": {"diffusion": {"embedding_dim": 16}}},
    })


def test_pretrain_level_writes_a_model_directory_that_seeds_finetuning(tmp_path, preprocessing):
    torch.set_num_threads(2)
    bids_dir = _bids(tmp_path / "bids", ["01", "02"])
    output_dir = tmp_path / "out"
    settings = _settings(tmp_path, bids_dir)
    pretrain.run(settings)

    model_dir = output_dir / "models" / "pretrain-diffusion"
    assert {p.name for p in model_dir.iterdir()} == {
        "model.safetensors", "model.json", "training_log.tsv", "loss_curve.png"}
    assert preprocessing == [["sub-01", "sub-02"]]
    card = read_model_card(model_dir)
    assert (card["stage"], card["method"], card["strategy"]) == ("pretrain", "diffusion", None)
    assert card["training_data"]["n_crops"] == 2
    assert card["training_data"]["participants"] == ["01"]
    assert card["objective"]["options"]["num_train_timesteps"] == 1000
    assert card["training"]["epochs"] == 2
    assert "final_loss" in card["metrics"]
    log = (model_dir / "training_log.tsv").read_text().splitlines()
    assert log[0].split("\t")[:2] == ["epoch", "loss"] and len(log) == 3
    assert (model_dir / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    # the work directory keeps the checkpoint for --resume
    assert (tmp_path / "work" / "pretrain" / "pretrain-diffusion" / "checkpoint.json").is_file()

    report = load_pretrained(tiny_cnn(seed=3), model_dir)
    # every encoder tensor, and diffusion's clean-image condition with them
    assert report.matched_in("encoder") == 1 + len(
        [k for k in tiny_cnn().state_dict() if k.startswith("encoder.")])
    assert "encoder.clean_condition" in report.matched

    # a rerun with --resume finds the finished checkpoint and only rewrites the model
    pretrain.run(settings.replace(run={"resume": True}))
    assert read_model_card(model_dir)["training"]["epochs"] == 2



def test_pretrain_data_datasets_pretrain_too_with_their_own_derivatives(tmp_path, preprocessing):
    torch.set_num_threads(2)
    bids_dir = _bids(tmp_path / "labelled", ["01", "02"])
    # an unlabelled cohort whose labels repeat BIDS_DIR's: its own derivative dataset
    cohort = _bids(tmp_path / "cohort", ["01", "03", "04"])
    settings = _settings(tmp_path, bids_dir, pretrain_data=[str(cohort)],
                         participant_label=["01", "02"])
    pretrain.run(settings)

    output_dir = tmp_path / "out"
    assert preprocessing == [["sub-01", "sub-02"], ["sub-01", "sub-03", "sub-04"]]
    extra = output_dir / "derivatives" / "cohort"
    assert (extra / "dataset_description.json").is_file()
    assert (extra / "sub-01" / "anat").is_dir() and (output_dir / "sub-01" / "anat").is_dir()
    data = read_model_card(output_dir / "models" / "pretrain-diffusion")["training_data"]
    # sub-02 of BIDS_DIR fails QC in the fixture: 1 + 3 images, 2 crops each
    assert (data["n_crops"], data["n_images"]) == (8, 4)
    assert data["datasets"]["labelled"]["n_images"] == 1
    assert data["datasets"]["cohort"] == {"path": str(cohort), "n_crops": 6, "n_images": 3,
                                          "n_participants": 3}
    assert data["participants"] == ["01"]  # BIDS_DIR's


@pytest.mark.bad_input("pretrain-data:BIDS_DIR itself or two datasets of one name")
def test_pretrain_data_refuses_bids_dir_itself_and_two_datasets_of_one_name(tmp_path):
    bids_dir = _bids(tmp_path / "bids", ["01"])
    with pytest.raises(InputDataError, match="BIDS_DIR itself"):
        pretrain.run(_settings(tmp_path, bids_dir, pretrain_data=[str(bids_dir)]))
    first = _bids(tmp_path / "a" / "cohort", ["01"])
    second = _bids(tmp_path / "b" / "cohort", ["01"])
    with pytest.raises(InputDataError, match="share the folder name 'cohort'"):
        pretrain.run(_settings(tmp_path, bids_dir, pretrain_data=[str(first), str(second)]))
