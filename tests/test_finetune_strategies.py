"""The four fine-tuning strategies: what trains, what stays bit-identical, LoRA's export."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import labelled_crops, tiny_network, tiny_settings
from training_helpers import SWIN_SHAPE, TINY_SHAPE, smooth_crops, tiny_swin

from bids_pcs.config import FinetuneSettings, ModelSettings
from bids_pcs.finetuning.objective import SupervisedObjective
from bids_pcs.finetuning.strategies import available_strategies, frozen_modules, get_strategy
from bids_pcs.models.model_io import load_model, model_card, save_model
from bids_pcs.models.network import build_network
from bids_pcs.training.engine import Engine, TrainConfig

EXPECTED_GROUPS = {"top": {"heads"}, "decoder": {"decoder", "heads"},
                   "full": {"encoder", "decoder", "heads"}, "lora": {"heads"}}
FROZEN_PARTS = {"top": ("encoder", "decoder"), "decoder": ("encoder",), "full": (),
                "lora": ("decoder",)}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def test_the_registry_holds_the_four_strategies():
    assert available_strategies() == ["decoder", "full", "lora", "top"]
    for name in available_strategies():
        assert get_strategy(name).definition


@pytest.mark.parametrize("name", ["top", "decoder", "full", "lora"])
def test_frozen_parameters_stay_bit_identical_and_trainable_ones_change(name):
    # dropout > 0: frozen parts must still compute deterministically (eval mode)
    network = tiny_network(seed=1, dropout=0.2)
    strategy = get_strategy(name, FinetuneSettings(lora_rank=2, lora_alpha=4))
    network = strategy.prepare(network)
    before = {k: v.detach().clone() for k, v in network.state_dict().items()}
    objective = SupervisedObjective(strategy, FinetuneSettings())
    objective.setup(network)
    modes: dict[str, list[bool]] = {}
    for part in FROZEN_PARTS[name]:
        network.get_submodule(part).register_forward_hook(
            lambda module, args, out, part=part: modes.setdefault(part, []).append(
                module.training))
    config = TrainConfig(epochs=1, batch_size=2, learning_rate=1e-2, progress=False)
    result = Engine(network, objective, config).fit(labelled_crops(6).crops)
    assert result.global_step == 3

    trainable = set(strategy.trainable_names(network))
    groups = {n.split(".", 1)[0] for n in trainable if ".lora_" not in n}
    assert groups == EXPECTED_GROUPS[name]
    after = network.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed == trainable  # every trainable tensor moved, nothing else (buffers too)
    if name == "lora":
        assert trainable == {n for n, _ in network.named_parameters()
                             if ".lora_" in n or n.startswith("heads.")}
        assert any(".lora_" in n and n.startswith("encoder.") for n in trainable)
    # the frozen parts ran in eval mode at every training step
    assert all(modes[p] == [False] * 3 for p in FROZEN_PARTS[name])


def test_frozen_modules_are_the_largest_fully_frozen_parts():
    network = tiny_network()
    names = get_strategy("decoder").trainable_names(network)
    assert frozen_modules(network, names) == ["encoder"]
    assert frozen_modules(network, [n for n, _ in network.named_parameters()]) == []


def test_lora_on_swinunetr_trains_under_five_percent():
    network = get_strategy("lora").prepare(tiny_swin())  # rank 8, the recipe's default
    summary = get_strategy("lora").summary(network)
    assert summary["trainable_fraction"] < 0.05
    adapted = {n.rsplit(".lora_", 1)[0] for n, _ in network.named_parameters() if ".lora_" in n}
    # attention and MLP linear layers of every Swin block, and encoder convolutions
    assert any(n.endswith("attn.qkv") for n in adapted)
    assert any(n.endswith("attn.proj") for n in adapted)
    assert any(n.endswith("mlp.linear1") for n in adapted)
    assert any(n.startswith("encoder.encoder10.") for n in adapted)
    assert not any(n.startswith(("decoder.", "heads.")) for n in adapted)


@pytest.mark.parametrize("architecture", ["cnn", "swinunetr"])
def test_lora_export_merges_into_a_plain_network_with_the_same_outputs(tmp_path, architecture):
    if architecture == "cnn":
        network, shape = tiny_network(seed=2), TINY_SHAPE
        model = ModelSettings(architecture="cnn", feature_size=4)
    else:
        network, shape = tiny_swin(seed=2), SWIN_SHAPE
        model = ModelSettings(architecture="swinunetr", feature_size=12, depths=(1, 1, 1, 1),
                              window_size=4)
    strategy = get_strategy("lora", FinetuneSettings(lora_rank=4, lora_alpha=8))
    network = strategy.prepare(network)
    torch.manual_seed(3)
    with torch.no_grad():  # adapters as after training (lora_B starts at zero)
        for name, param in network.named_parameters():
            if ".lora_B." in name:
                param.normal_(0.0, 0.05)
    crops = smooth_crops(2, shape, seed=4)
    network.eval()
    with torch.no_grad():
        adapted = network(crops)
    plain = strategy.export(network)
    assert not any(".lora_" in k or "base_layer" in k for k in plain.state_dict())

    settings = tiny_settings().replace(crop={"size_mm": list(shape)},
                                       model=dict(model.__dict__))
    save_model(tmp_path / "m", plain, model_card(settings, plain, stage="finetune",
                                                 method="scratch", strategy="lora"))
    loaded, _ = load_model(tmp_path / "m")  # a plain PcsNetwork, strictly loaded
    assert type(loaded) is type(build_network(model, shape))
    with torch.no_grad():
        merged = loaded(crops)
    for key in ("segmentation", "classification"):
        assert torch.allclose(merged[key], adapted[key], atol=1e-4, rtol=1e-4), key
