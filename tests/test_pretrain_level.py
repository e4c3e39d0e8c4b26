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

    def preprocess_images(settings, images):
        calls.append([image.prefix for image in images])
        results = []
        for n, image in enumerate(images):
            crops = {h: crop_path(Path(settings.run.output_dir), image, h) for h in "LR"}
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


def test_pretrain_level_writes_a_model_directory_that_seeds_finetuning(tmp_path, preprocessing):
    torch.set_num_threads(2)
    bids_dir = _bids(tmp_path / "bids", ["01", "02"])
    output_dir = tmp_path / "out"
    settings = load_settings("default", overrides={
        "run": {"bids_dir": str(bids_dir), "output_dir": str(output_dir), "device": "cpu",
                "work_dir": str(tmp_path / "work"), "seed": 1},
        "crop": {"size_mm": list(TINY_SHAPE)},
        "model": {"architecture": "cnn", "feature_size": 4},
        "pretrain": {"method": "diffusion", "epochs": 2, "batch_size": 2,
                     "options": {"diffusion": {"embedding_dim": 16}}},
    })
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

