"""The fine-tuning API: initialisation, split, objective, ``finetune()`` and its model files."""

from __future__ import annotations

import math

import pytest
import torch
from finetune_helpers import labelled_crops, tiny_network, tiny_settings

from bids_pcs.config import FinetuneSettings, RecipeError
from bids_pcs.errors import InputDataError, ModelFileError
from bids_pcs.finetuning import (
    check_init,
    finetune,
    get_strategy,
    init_network,
    split_by_participant,
)
from bids_pcs.finetuning.objective import SupervisedObjective
from bids_pcs.models.model_io import load_model, model_card, read_model_card, save_model


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture
def pretrained_dir(tmp_path):
    """A pre-trained model (its own seed) made with the tiny settings."""
    network = tiny_network(seed=5)
    card = model_card(tiny_settings(), network, stage="pretrain", method="contrastive")
    return save_model(tmp_path / "pretrain-contrastive", network, card), network


def _part(state, part):
    return {k: v for k, v in state.items() if k.startswith(f"{part}.")}


def test_pretrained_init_copies_encoder_and_decoder_exactly(pretrained_dir):
    model_dir, pretrained = pretrained_dir
    network, source = init_network(tiny_settings(), model_dir)
    mine, theirs = network.state_dict(), pretrained.state_dict()
    for part in ("encoder", "decoder"):
        assert _part(mine, part).keys() == _part(theirs, part).keys()
        assert all(torch.equal(mine[k], theirs[k]) for k in _part(theirs, part))
    # heads are new (seeded by run.seed), never taken from a pre-trained model
    assert not torch.equal(mine["heads.segmentation.conv.conv.weight"],
                           theirs["heads.segmentation.conv.conv.weight"])
    assert source.method == "contrastive"
    assert source.summary()["transferred_tensors"] == len(_part(theirs, "encoder")) + len(
        _part(theirs, "decoder"))


@pytest.mark.bad_input("model:another geometry or architecture (finetune init)")
def test_a_model_of_another_geometry_or_architecture_is_refused(pretrained_dir):
    model_dir, _ = pretrained_dir
    assert check_init(tiny_settings(), model_dir) == "contrastive"
    assert check_init(tiny_settings(), "scratch") == "scratch"
    with pytest.raises(ModelFileError, match="crop"):
        check_init(tiny_settings().replace(crop={"size_mm": [16, 32, 32]}), model_dir)
    with pytest.raises(ModelFileError, match="feature_size"):
        check_init(tiny_settings().replace(model={"feature_size": 8}), model_dir)
    with pytest.raises(ModelFileError):
        check_init(tiny_settings(), model_dir.parent / "missing")


def test_decoder_finetuning_from_a_pretrained_model_keeps_its_encoder(tmp_path, pretrained_dir):
    model_dir, pretrained = pretrained_dir
    data = labelled_crops(8)
    train, validation = split_by_participant(data, 0.25, seed=0)
    settings = tiny_settings(strategy="decoder", epochs=2)
    result = finetune(settings, train, validation, model_dir, model_dir=tmp_path / "ft",
                      progress=False)
    state, theirs = result.network.state_dict(), pretrained.state_dict()
    assert all(torch.equal(state[k], theirs[k]) for k in _part(theirs, "encoder"))
    assert not all(torch.equal(state[k], theirs[k]) for k in _part(theirs, "decoder"))

    card = result.card
    assert (card["stage"], card["method"], card["strategy"]) == ("finetune", "contrastive",
                                                                "decoder")
    rule = card["finetuning"]["strategy"]
    assert rule["definition"] == get_strategy("decoder").definition
    assert rule["trainable_parameters"] == sum(
        v.numel() for k, v in state.items() if not k.startswith("encoder."))
    assert rule["total_parameters"] == sum(v.numel() for v in state.values())
    assert card["training"]["trainable_parameters"] == rule["trainable_parameters"]
    assert card["finetuning"]["init"]["sha256"] == read_model_card(model_dir)["weights"]["sha256"]
    assert card["finetuning"]["best_epoch"] in (1, 2)
    assert 0.0 <= card["metrics"]["val_dice"] <= 1.0
    assert not math.isnan(card["metrics"]["val_presence_accuracy"])
    assert card["training_data"]["n_participants"] == 3
    assert card["training_data"]["validation"]["participants"] == validation.participants
    assert {p.name for p in (tmp_path / "ft").iterdir()} == {
        "model.safetensors", "model.json", "training_log.tsv", "loss_curve.png",
        "validation_curve.png"}
    loaded, _ = load_model(tmp_path / "ft")
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())


def test_the_init_model_is_hashed_and_read_once(tmp_path, pretrained_dir, monkeypatch):
    """What the finetune level does: open_init before any work, then finetune() from it."""
    from bids_pcs.finetuning import open_init
    from bids_pcs.models import tensor_file

    model_dir, pretrained = pretrained_dir
    hashed = []
    real = tensor_file.sha256_file
    monkeypatch.setattr(tensor_file, "sha256_file", lambda p: hashed.append(p) or real(p))
    settings = tiny_settings(strategy="top", epochs=1)
    init = open_init(settings, model_dir)
    data = labelled_crops(4)
    result = finetune(settings, data, None, init, progress=False)
    assert [path.name for path in hashed] == ["model.safetensors"]
    assert result.init.method == "contrastive"
    theirs = pretrained.state_dict()
    assert all(torch.equal(result.network.state_dict()[k], theirs[k])
               for k in _part(theirs, "encoder"))


def test_a_resumed_finished_run_gives_back_the_kept_epoch(tmp_path):
    data = labelled_crops(8)
    train, validation = split_by_participant(data, 0.25, seed=1)
    settings = tiny_settings(strategy="lora", epochs=3, lora_rank=2)
    first = finetune(settings, train, validation, "scratch", checkpoint_dir=tmp_path / "ckpt",
                     progress=False)
    assert (tmp_path / "ckpt" / "best.safetensors").is_file()
    again = finetune(settings.replace(run={"resume": True}), train, validation, "scratch",
                     checkpoint_dir=tmp_path / "ckpt", progress=False)
    assert again.train.global_step == first.train.global_step  # nothing trained again
    assert again.train.best_epoch == first.train.best_epoch
    kept, resumed = first.network.state_dict(), again.network.state_dict()
    assert all(torch.equal(kept[k], resumed[k]) for k in kept)


def test_the_split_keeps_participants_whole_and_is_seeded():
    subjects = [f"{s:02d}" for s in range(1, 11) for _ in range(4)]  # 2 sessions x 2 hemis
    data = labelled_crops(40, subjects=subjects)
    train, validation = split_by_participant(data, 0.2, seed=3)
    assert len(validation.participants) == 2 and len(train.participants) == 8
    assert not set(train.participants) & set(validation.participants)
    assert len(train) == 32 and len(validation) == 8
    again, _ = split_by_participant(data, 0.2, seed=3)
    assert again.participants == train.participants
    assert split_by_participant(data, 0.0)[1] is None
    with pytest.raises(InputDataError):
        split_by_participant(data, 1.0)


@pytest.mark.parametrize("kind", ["dice_ce", "dice_focal"])
def test_the_loss_is_weighted_and_defined_without_any_pcs_voxel(kind):
    network = tiny_network()
    objective = SupervisedObjective(get_strategy("full"),
                                    FinetuneSettings(segmentation_loss=kind))
    objective.setup(network)
    absent = labelled_crops(4).subset([0, 2])  # no PCS voxel in the batch
    batch = absent.crops.batch(torch.arange(2))
    losses = objective.losses(batch, network, "main")
    assert torch.isfinite(losses["loss"])
    expected = 0.8 * losses["segmentation"] + 0.2 * losses["classification"]
    assert torch.allclose(losses["loss"], expected)
    losses["loss"].backward()


def test_unknown_loss_and_strategy_are_refused():
    with pytest.raises(RecipeError, match="segmentation_loss"):
        SupervisedObjective(get_strategy("full"), FinetuneSettings(segmentation_loss="l2"))
    with pytest.raises(RecipeError, match="strategy"):
        get_strategy("everything")


def test_the_selection_score_gives_nothing_for_finding_nothing():
    """An empty, always-"absent" model on a mostly absent set: Dice counts only true sulci."""
    import numpy as np

    from bids_pcs.finetuning import CropPredictions, score_predictions

    crops = labelled_crops(8)  # odd crops hold a sulcus (class present)
    n = len(crops)
    shape = tuple(crops.crops.targets["segmentation"].shape[1:])
    keep = [0, 2, 4, 6, 1]  # four without a sulcus, one with
    part = crops.subset(keep)
    empty = CropPredictions(probabilities=np.tile([0.9, 0.05, 0.05], (len(keep), 1)),
                            masks=np.zeros((len(keep), *shape), dtype=bool))
    scores = score_predictions(empty, part, prefix="val_")
    assert scores["val_dice"] == 0.0 and scores["val_dice_n"] == 1  # the one true sulcus
    assert scores["val_presence_accuracy"] == pytest.approx(0.8)  # the old score's 0.8 ...
    assert scores["val_presence_balanced_accuracy"] == 0.5  # ... is chance, balanced
    assert scores["val_score"] == pytest.approx(0.25)
    assert not any("hd95" in key for key in scores)  # no SciPy distances per epoch
    truth = crops.crops.targets["segmentation"].numpy().astype(bool)
    perfect = CropPredictions(
        probabilities=np.array([[0.1, 0.8, 0.1] if k % 2 else [0.8, 0.1, 0.1]
                                for k in range(n)]), masks=truth)
    best = score_predictions(perfect, crops, prefix="val_")
    assert best["val_score"] == best["val_dice"] == best["val_presence_balanced_accuracy"] == 1.0
