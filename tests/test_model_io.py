"""Model directories: safetensors + model.json, verified on load, transferable encoder."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from training_helpers import SWIN_SHAPE, TINY_SHAPE, tiny_cnn, tiny_swin

from bids_pcs import __version__
from bids_pcs.config import load_settings
from bids_pcs.errors import ModelFileError
from bids_pcs.models.model_io import (
    check_model_fits,
    load_model,
    load_pretrained,
    model_card,
    read_model_card,
    save_model,
)
from bids_pcs.models.tensor_file import sha256_file


def _settings(shape=TINY_SHAPE, architecture="cnn", feature_size=4):
    return load_settings("default", overrides={
        "crop": {"size_mm": list(shape)},
        "model": {"architecture": architecture, "feature_size": feature_size},
    })


def _saved(tmp_path, network=None, settings=None):
    network = network or tiny_cnn(seed=5)
    settings = settings or _settings()
    card = model_card(settings, network, stage="pretrain", method="reconstruction",
                      training_data={"n_crops": 2}, metrics={"final_loss": 0.1})
    return save_model(tmp_path / "model", network, card), network


def test_round_trip_keeps_every_weight_and_records_the_contract(tmp_path):
    model_dir, network = _saved(tmp_path)
    assert sorted(p.name for p in model_dir.iterdir()) == ["model.json", "model.safetensors"]
    card = read_model_card(model_dir)
    for key in ("app", "architecture", "hyperparameters", "stage", "method", "strategy",
                "template", "crop", "intensity", "labels", "training_data", "metrics"):
        assert key in card, key
    assert card["app"]["version"] == __version__
    assert card["crop"]["shape_vox"] == list(TINY_SHAPE)
    assert card["weights"]["sha256"] == sha256_file(model_dir / "model.safetensors")
    loaded, _ = load_model(model_dir)
    for key, value in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.bad_input("model:weights whose SHA-256 differs")
def test_tampered_weights_are_refused_by_their_sha256(tmp_path):
    model_dir, _ = _saved(tmp_path)
    weights = model_dir / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip bits of the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="SHA-256") as info:
        load_model(model_dir)
    assert str(info.value).count(". ") == 0  # one sentence


@pytest.mark.bad_input("model:pickle renamed as safetensors")
def test_a_pickle_renamed_as_safetensors_is_refused_even_with_a_matching_digest(tmp_path):
    model_dir, network = _saved(tmp_path)
    weights = model_dir / "model.safetensors"
    with open(weights, "wb") as handle:
        pickle.dump(network.state_dict(), handle)
    card = json.loads((model_dir / "model.json").read_text())
    card["weights"]["sha256"] = sha256_file(weights)  # an attacker fixes the digest too
    (model_dir / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="not a safetensors file"):
        load_model(model_dir)


@pytest.mark.bad_input("model:missing directory", "model:foreign model.json")
def test_missing_card_and_foreign_json_are_refused(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    model_dir, _ = _saved(tmp_path)
    (model_dir / "model.json").write_text(json.dumps({"weights": {}}))
    with pytest.raises(ModelFileError, match="not a bids_pcs model card"):
        load_model(model_dir)


def test_pretrained_swin_weights_fill_every_encoder_key_of_a_finetuning_network(tmp_path):
    pretrained = tiny_swin(seed=1)
    settings = _settings(SWIN_SHAPE, "swinunetr", 12).replace(
        model={"depths": [1, 1, 1, 1], "window_size": 4})
    model_dir, _ = _saved(tmp_path, pretrained, settings)
    finetune = tiny_swin(seed=2)
    report = load_pretrained(finetune, model_dir)
    encoder_keys = [k for k in finetune.state_dict() if k.startswith("encoder.")]
    assert len(encoder_keys) > 50  # Swin transformer and skip blocks
    assert report.matched_in("encoder") == len(encoder_keys)
    assert report.matched_in("decoder") == len([k for k in finetune.state_dict()
                                                if k.startswith("decoder.")])
    for key in encoder_keys:
        assert torch.equal(finetune.state_dict()[key], pretrained.state_dict()[key]), key
    # the heads keep the fine-tuning network's own initialisation
    assert all(k.startswith("heads.") for k in report.skipped)


@pytest.mark.bad_input("model:another architecture")
def test_pretrained_weights_of_another_architecture_are_refused(tmp_path):
    model_dir, _ = _saved(tmp_path)
    with pytest.raises(ModelFileError, match="feature_size"):
        load_pretrained(tiny_cnn(feature_size=8), model_dir)


@pytest.mark.bad_input("model:another crop geometry")
def test_model_with_another_crop_geometry_does_not_fit_the_run(tmp_path):
    model_dir, _ = _saved(tmp_path)
    card = read_model_card(model_dir)
    check_model_fits(card, _settings(), model_dir)
    other = _settings().replace(crop={"left_min_mm": [-28.0, -16.0, -6.0]})
    with pytest.raises(ModelFileError, match=r"\[crop\]"):
        check_model_fits(card, other, model_dir)


def test_a_card_holds_its_own_architecture_s_settings_and_its_recipe(tmp_path):
    settings = _settings().replace(run={"recipe": "tiny-cpu"})
    model_dir, network = _saved(tmp_path, settings=settings)
    card = read_model_card(model_dir)
    for section in (card["architecture"], card["hyperparameters"]["model"]):
        assert section["architecture"] == "cnn" and section["feature_size"] == 4
        assert not {"num_heads", "window_size", "depths", "use_checkpoint"} & set(section)
    assert card["recipe"] == {"name": "tiny-cpu",
                              "registration": settings.to_dict()["registration"]}
    loaded, _ = load_model(model_dir)  # the spec is complete again without Swin's settings
    assert loaded.spec == network.spec
    swin_dir = save_model(tmp_path / "swin", tiny_swin(), model_card(
        _settings(SWIN_SHAPE, "swinunetr", 12).replace(model={"depths": [1, 1, 1, 1],
                                                               "window_size": 4}),
        tiny_swin(), stage="pretrain", method="reconstruction"))
    swin = read_model_card(swin_dir)
    assert swin["architecture"]["window_size"] == 4 and swin["architecture"]["num_heads"]


def test_the_model_json_file_names_its_model_and_weights_are_read_once(tmp_path, monkeypatch):
    from bids_pcs.models import model_io, tensor_file

    model_dir, network = _saved(tmp_path)
    hashed = []
    real = tensor_file.sha256_file
    monkeypatch.setattr(tensor_file, "sha256_file", lambda p: hashed.append(p) or real(p))
    model = model_io.read_model(model_dir / "model.json")  # the card file names the model too
    assert model.model_dir == model_dir and len(hashed) == 1
    load_model(model)
    load_pretrained(tiny_cnn(seed=9), model)
    assert len(hashed) == 1  # a VerifiedModel is never hashed again
    with pytest.raises(ModelFileError, match="is not a model card"):
        model_io.read_model(model_dir / "model.safetensors")


def test_a_conflict_with_the_model_is_one_sentence_naming_both_values(tmp_path):
    model_dir, _ = _saved(tmp_path)
    card = read_model_card(model_dir)
    other = _settings().replace(crop={"voxel_mm": 2.0, "size_mm": [32, 64, 64]})
    with pytest.raises(ModelFileError) as info:
        check_model_fits(card, other, model_dir)
    message = str(info.value)
    assert "[crop] size_mm = [16, 32, 16] but this run gives [32, 64, 64]" in message
    assert message.count(". ") == 0 and message.endswith(".")
    assert "{" not in message  # no dump of dictionaries
