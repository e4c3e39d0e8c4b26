"""``participant --model``: PCS derivatives on the native grid, refusals, flip TTA, QC failures.

Builds on the session's small demo run (:mod:`inference_helpers`): its cohort is
preprocessed with the ``demo`` recipe and its fine-tuned model exists, so the
CLI runs here only infer.
"""

from __future__ import annotations

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import run_cli
from inference_helpers import RECIPE, copy_outputs, demo_run

from bids_pcs.config import LabelSettings, load_settings
from bids_pcs.io.bids_input import collect_t1w
from bids_pcs.io.derivatives import (
    PCS_TABLE_COLUMNS,
    dseg_path,
    pcs_metadata_path,
    pcs_set_members,
    pcs_table_path,
    probseg_path,
    sidecar_path,
)
from bids_pcs.io.validator import validate
from bids_pcs.models.model_io import load_model, model_card, save_model
from bids_pcs.models.network import build_network
from bids_pcs.reports.subject import subject_report_path


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    run = demo_run(tmp_path_factory)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _settings(demo, output_dir=None, **sections):
    settings = load_settings(RECIPE, overrides={"run": {
        "bids_dir": str(demo.raw_dir), "output_dir": str(output_dir or demo.output_dir),
        "device": "cpu", "omp_nthreads": 2, "model": str(demo.model_dir)}})
    return settings.replace(**sections) if sections else settings


def _participant(demo, *extra, output_dir=None, label=None):
    label = label or demo.trained[0]
    return run_cli(demo.raw_dir, output_dir or demo.output_dir, "participant",
                   "--participant-label", label, "--recipe", RECIPE, "--skip-bids-validation",
                   "--device", "cpu", "--omp-nthreads", "2", "--nprocs", "1", *extra)


@pytest.mark.slow
def test_participant_with_a_model_writes_valid_derivatives(demo, tmp_path):
    output_dir = copy_outputs(demo, tmp_path / "out")
    label = demo.trained[0]
    assert not list(output_dir.glob(f"sub-{label}/anat/*_dseg.nii.gz"))
    done = _participant(demo, "--model", demo.model_dir, output_dir=output_dir, label=label)
    assert done.returncode == 0, done.stderr[-3000:]
    (image,) = collect_t1w(demo.raw_dir, [label])
    t1w = nib.load(image.path)

    dseg_file = dseg_path(output_dir, image)
    dseg = nib.load(dseg_file)
    assert dseg.shape == t1w.shape[:3]
    assert np.allclose(dseg.affine, t1w.affine, atol=1e-5)
    values = set(np.unique(np.asarray(dseg.dataobj)).tolist())
    assert values <= {0, 1, 2}
    assert dseg.get_data_dtype() == np.uint8
    for hemisphere in "LR":
        probseg = nib.load(probseg_path(output_dir, image, hemisphere))
        assert probseg.shape == t1w.shape[:3]
        assert np.allclose(probseg.affine, t1w.affine, atol=1e-5)
        p = np.asarray(probseg.dataobj)
        assert p.min() >= 0.0 and p.max() <= 1.0
        side = json.loads(sidecar_path(probseg_path(output_dir, image, hemisphere)).read_text())
        assert side["Sources"][0] == image.bids_uri and side["Hemisphere"] == hemisphere
    sidecar = json.loads(sidecar_path(dseg_file).read_text())
    assert sidecar["Sources"][0] == image.bids_uri
    assert sidecar["Model"]["name"] == demo.model_dir.name
    assert sidecar["Model"]["sha256"] == json.loads(
        (demo.model_dir / "model.json").read_text())["weights"]["sha256"]
    assert sidecar["SoftwareVersion"] and sidecar["SpatialReference"] == image.bids_uri

    table = pd.read_csv(pcs_table_path(output_dir, image), sep="\t", dtype=str,
                        keep_default_na=False)
    assert tuple(table.columns) == PCS_TABLE_COLUMNS
    assert list(table["hemisphere"]) == ["L", "R"]
    assert set(table["pcs_class"]) <= {"absent", "present", "prominent"}
    probs = table[["p_absent", "p_present", "p_prominent"]].astype(float).to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)
    for row, cls in zip(probs, table["pcs_class_network"], strict=True):
        assert ("absent", "present", "prominent")[int(np.argmax(row))] == cls
    # a model trained with masks: the reported class is the measured length's (class_rule
    # auto), the head's class beside it, a disagreement said in class_agreement
    labels = LabelSettings()
    for row in table.itertuples():
        assert row.pcs_class == row.pcs_class_length == labels.class_from_length(
            float(row.pcs_length_mm))
        assert row.class_agreement == ("true" if row.pcs_class_network == row.pcs_class
                                       else "false")
        assert 0.0 <= float(row.class_entropy) <= 1.0
        assert 0.0 <= float(row.mask_uncertainty) <= 1.0
        assert row.flip_agreement == "n/a"  # no flip TTA, no flip agreement
    assert list(table["qc_passed"]) == ["true", "true"]
    volumes = table["pcs_volume_mm3"].astype(float).to_numpy()
    voxel = float(abs(np.linalg.det(t1w.affine[:3, :3])))
    counts = [int((np.asarray(dseg.dataobj) == v).sum()) for v in (1, 2)]
    assert np.allclose(volumes, np.array(counts) * voxel, rtol=1e-3, atol=0.1)
    metadata = json.loads(pcs_metadata_path(output_dir, image).read_text())
    assert {"Sources", "Model", "Thresholds", "FlipTTA", "SoftwareVersion"} <= set(metadata)
    assert set(metadata["Model"]) == {"name", "stage", "method", "strategy", "sha256",
                                      "version"}
    assert metadata["Model"]["stage"] == "finetune" and metadata["FlipTTA"] is False
    assert metadata["ClassRule"] == "length" and metadata["ClassRuleSetting"] == "auto"
    assert metadata["SegmentationTrained"] is True
    assert metadata["Classes"] == ["absent", "present", "prominent"]
    assert set(metadata["Columns"]) == set(PCS_TABLE_COLUMNS)
    assert subject_report_path(output_dir, label).is_file()

    report = validate(output_dir)
    assert report.ok, report.summary()

    # an interrupted write (issue 19): the record, removed first, and the right map not yet
    # rewritten; the next run says so and completes the set as it was
    record = pcs_metadata_path(output_dir, image)
    members = [*pcs_set_members(output_dir, image), record]
    first = {p.name: p.read_bytes() for p in members}
    record.unlink()
    probseg_path(output_dir, image, "R").unlink()
    again = _participant(demo, "--model", demo.model_dir, output_dir=output_dir, label=label)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (f"{image.prefix}: its PCS results are incomplete ({record.name}, written last, "
            "is missing); writing them again.") in again.stderr
    rewritten = {p.name: p.read_bytes() for p in members}
    maps = [n for n in first if n.endswith((".nii.gz", ".tsv"))]
    assert len(maps) == 4 and [n for n in maps if first[n] != rewritten[n]] == []
    assert json.loads(rewritten[record.name])["Files"] == json.loads(first[record.name])["Files"]


@pytest.mark.slow
def test_a_demo_model_serves_participant_without_a_recipe_and_is_loaded_once(
        demo, tmp_path, monkeypatch):
    """--model .../model.json alone: crops, template, preprocessing come from the model."""
    import tomllib

    from click.testing import CliRunner

    from bids_pcs.cli import cli
    from bids_pcs.models import tensor_file

    output_dir = copy_outputs(demo, tmp_path / "out")
    label = demo.trained[1]
    (image,) = collect_t1w(demo.raw_dir, [label])
    hashed = []
    real = tensor_file.sha256_file
    monkeypatch.setattr(tensor_file, "sha256_file", lambda p: hashed.append(p) or real(p))
    done = CliRunner().invoke(cli, [
        str(demo.raw_dir), str(output_dir), "participant", "--participant-label", label,
        "--model", str(demo.model_dir / "model.json"), "--skip-bids-validation",
        "--device", "cpu", "--omp-nthreads", "2", "--nprocs", "1", "-w", str(tmp_path / "w")])
    assert done.exit_code == 0, done.output[-3000:]
    assert dseg_path(output_dir, image).is_file()
    assert [path.name for path in hashed] == ["model.safetensors"]  # hashed and read once
    (dump,) = (output_dir / "logs").glob("participant_*_config.toml")
    used = tomllib.loads(dump.read_text())
    assert used["run"]["recipe"] == RECIPE and used["run"]["model"] == str(demo.model_dir)
    demo_recipe = load_settings(RECIPE).to_dict()
    for section in ("template", "crop", "registration", "intensity"):
        assert used[section] == demo_recipe[section], section


@pytest.mark.slow
def test_a_model_of_another_crop_geometry_is_refused_before_any_work(demo, tmp_path):
    # the same crop shape, but a box moved by 2 mm: the network would run, wrongly
    other = load_settings(RECIPE).replace(crop={"left_min_mm": [-28.0, -16.0, -6.0]})
    network = build_network(other.model, other.crop.shape_vox, other.labels.classes)
    model_dir = save_model(tmp_path / "finetune-other", network,
                           model_card(other, network, stage="finetune", method="scratch",
                                      strategy="full"))
    output_dir = copy_outputs(demo, tmp_path / "out")
    label = demo.trained[0]
    (image,) = collect_t1w(demo.raw_dir, [label])
    done = _participant(demo, "--model", model_dir, output_dir=output_dir, label=label)
    assert done.returncode == 2  # --recipe demo contradicts the model: a usage error
    message = done.stderr.strip().splitlines()[-1]
    assert message.startswith("bids_pcs: error:") and "[crop] left_min_mm" in message
    assert "[-28, -16, -6] but --recipe demo gives [-30, -16, -6]" in message
    assert "recipe it was trained with" in message and "Traceback" not in done.stderr
    assert not dseg_path(output_dir, image).exists()


@pytest.mark.slow
def test_tampered_weights_and_pretrained_models_are_refused(demo, tmp_path):
    tampered = tmp_path / "finetune-tampered"
    shutil.copytree(demo.model_dir, tampered)
    data = bytearray((tampered / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tampered / "model.safetensors").write_bytes(bytes(data))
    done = _participant(demo, "--model", tampered, output_dir=tmp_path / "out1")
    assert done.returncode == 1
    assert "SHA-256" in done.stderr and "Traceback" not in done.stderr

    pretrained = demo.output_dir / "models" / "pretrain-reconstruction"
    done = _participant(demo, "--model", pretrained, output_dir=tmp_path / "out2")
    assert done.returncode == 1
    assert "not a fine-tuned one" in done.stderr


@pytest.mark.slow
def test_flip_tta_and_a_failed_qc_image(demo, tmp_path):
    from bids_pcs.inference import infer_images, load_inference_model
    from bids_pcs.preprocess import load_preprocessed

    output_dir = copy_outputs(demo, tmp_path / "out")
    settings = _settings(demo, output_dir, inference={"flip_tta": True})
    images = collect_t1w(demo.raw_dir, demo.trained[:2])
    items = [load_preprocessed(settings, image, output_dir) for image in images]
    assert all(item is not None and item.qc_passed for item in items)
    failed = dataclasses.replace(items[1], qc={**items[1].qc, "Passed": False})
    model = load_inference_model(settings, demo.model_dir)
    results = infer_images(settings, [items[0], failed], model=model)

    assert [r.qc_passed for r in results] == [True, False]
    metadata = json.loads(pcs_metadata_path(output_dir, images[0]).read_text())
    assert metadata["FlipTTA"] is True and "x (left-right)" in metadata["FlipTTAMethod"]
    assert dseg_path(output_dir, images[0]).is_file()
    # the flipped crops ran in the same pass: each hemisphere has its flip agreement
    done = pd.read_csv(pcs_table_path(output_dir, images[0]), sep="\t", dtype=str)
    assert done["flip_agreement"].astype(float).between(0.0, 1.0).all()

    table = pd.read_csv(pcs_table_path(output_dir, images[1]), sep="\t", dtype=str,
                        keep_default_na=False)
    assert list(table["qc_passed"]) == ["false", "false"]
    for column in ("pcs_class", "pcs_class_network", "class_agreement", "p_absent",
                   "p_present", "p_prominent", "class_entropy", "flip_agreement",
                   "pcs_length_mm", "pcs_volume_mm3"):
        assert list(table[column]) == ["n/a", "n/a"], column
    assert table["qc_correlation"].astype(float).notna().all()
    assert not dseg_path(output_dir, images[1]).exists()  # never used, maps removed


@pytest.mark.slow
def test_flip_tta_is_exact_for_crops_symmetric_along_x(demo):
    import torch

    from bids_pcs.inference.predict import predict_hemispheres

    network, _ = load_model(demo.model_dir)
    settings = _settings(demo)
    rng = np.random.default_rng(0)
    half = rng.random((settings.crop.shape_vox[0] // 2, *settings.crop.shape_vox[1:]))
    symmetric = np.concatenate([half, half[::-1]]).astype(np.float32)
    crops = {"L": symmetric, "R": symmetric}
    torch.manual_seed(0)
    plain = predict_hemispheres(network, crops, flip_tta=False)
    flipped = predict_hemispheres(network, crops, flip_tta=True)
    for h in "LR":
        assert np.allclose(plain[h].class_probabilities, flipped[h].class_probabilities,
                           atol=1e-5)
        # a symmetric input gives an x-symmetric average: TTA map == its own flip
        assert np.allclose(flipped[h].pcs_probability, flipped[h].pcs_probability[::-1],
                           atol=1e-5)


def test_dseg_from_probabilities_thresholds_and_resolves_overlaps():
    from bids_pcs.inference.native import dseg_from_probabilities

    left = np.array([0.9, 0.6, 0.2, 0.7, 0.5], dtype=np.float32)
    right = np.array([0.1, 0.8, 0.3, 0.7, 0.5], dtype=np.float32)
    dseg = dseg_from_probabilities({"L": left, "R": right}, 0.5)
    assert dseg.tolist() == [1, 2, 0, 1, 0]
    assert dseg.dtype == np.uint8


def test_flip_tta_runs_the_flipped_crops_in_the_same_batch_and_equals_two_passes():
    import torch

    from bids_pcs.inference.predict import predict_hemispheres

    settings = load_settings("tiny-cpu")
    torch.manual_seed(0)
    network = build_network(settings.model, settings.crop.shape_vox).eval()
    rng = np.random.default_rng(1)
    crops = {h: rng.random(settings.crop.shape_vox, dtype=np.float32) for h in "LR"}
    batches = []
    hook = network.register_forward_hook(lambda _m, args, _o: batches.append(args[0].shape[0]))
    plain = predict_hemispheres(network, crops, flip_tta=False)
    tta = predict_hemispheres(network, crops, flip_tta=True)
    flipped = predict_hemispheres(network, {h: c[::-1].copy() for h, c in crops.items()})
    hook.remove()
    assert batches == [2, 4, 2]  # TTA: one forward pass of the crops and their flips
    for h in "LR":
        assert tta[h].pcs_probability.dtype == np.float32
        assert tta[h].class_probabilities.dtype == np.float32
        expected = (plain[h].pcs_probability + flipped[h].pcs_probability[::-1]) / 2
        assert np.allclose(tta[h].pcs_probability, expected, atol=1e-5)
        assert np.allclose(tta[h].class_probabilities,
                           (plain[h].class_probabilities + flipped[h].class_probabilities) / 2,
                           atol=1e-6)
        assert not np.allclose(plain[h].pcs_probability, tta[h].pcs_probability, atol=1e-4)
