"""Each pre-training method learns: its loss halves while overfitting one tiny batch."""

from __future__ import annotations

import pytest
import torch
from training_helpers import TINY_OPTIONS, crop_set, tiny_cnn

from bids_pcs.config import RecipeError
from bids_pcs.pretraining import available_methods, get_objective
from bids_pcs.training.engine import Engine, TrainConfig

METHODS = ("reconstruction", "contrastive", "adversarial", "diffusion")


pytestmark = pytest.mark.usefixtures("two_torch_threads")


def test_registry_has_the_four_methods():
    assert available_methods() == sorted(METHODS)


def test_unknown_method_and_option_are_refused_in_one_sentence():
    with pytest.raises(RecipeError, match="unknown"):
        get_objective("jigsaw")
    with pytest.raises(RecipeError, match="mask_fraction"):
        get_objective("reconstruction", {"mask_fraction": 0.2})


def test_options_table_per_method_is_picked_by_name():
    objective = get_objective("diffusion", {"diffusion": {"embedding_dim": 16},
                                            "reconstruction": {"mask_ratio": 0.1}})
    assert objective.options["embedding_dim"] == 16
    assert objective.options["num_train_timesteps"] == 1000


@pytest.mark.parametrize("method", METHODS)
def test_loss_halves_when_overfitting_one_batch(method):
    network = tiny_cnn(seed=1)
    heads_before = {k: v.clone() for k, v in network.heads.state_dict().items()}
    # a filling queue raises the contrastive loss's chance level (more negatives each
    # step): the loss is comparable across steps only without one (the queue has its tests)
    options = {**TINY_OPTIONS[method], **({"queue_size": 0} if method == "contrastive" else {})}
    objective = get_objective(method, options)
    objective.setup(network)
    crops = crop_set(4 if method == "contrastive" else 2)
    # one batch per epoch: every "epoch" is one optimiser step on the same crops
    config = TrainConfig(epochs=40, batch_size=len(crops), learning_rate=3e-3, weight_decay=0.0,
                         progress=False, seed=3)
    result = Engine(network, objective, config).fit(crops)
    losses = [row["loss"] for row in result.history]
    first, last = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    assert last <= 0.5 * first, f"{method}: {first:.3f} -> {last:.3f}"
    # pretext tasks never touch the task heads
    for key, value in network.heads.state_dict().items():
        assert torch.equal(value, heads_before[key]), key


def test_diffusion_conditioning_starts_neutral_and_is_the_networks_own_at_t0():
    network = tiny_cnn()
    names_before = [n for n, _ in network.named_parameters()]
    objective = get_objective("diffusion", TINY_OPTIONS["diffusion"])
    objective.setup(network)
    # the only new network parameter is the clean-image condition, in the encoder group
    assert [n for n, _ in network.named_parameters() if n not in names_before] == [
        "encoder.clean_condition"]
    assert network.spec.input_conditioning.to_dict() == {
        "scale": 2.0, "offset": -1.0, "clean_condition": True}
    crops = crop_set(2).images
    with torch.no_grad():
        network.clean_condition.normal_()
        for layer in (objective.conditioning.to_bottleneck, objective.conditioning.to_film):
            layer.weight.normal_()
    shift, scale, bias = objective.conditioning(torch.tensor([0, 3, 700]))
    assert shift.shape == (3, network.bottleneck_channels)
    # g(t) - g(0): exactly zero at t = 0, not elsewhere once trained
    assert torch.equal(shift[0], torch.zeros_like(shift[0])) and shift[1:].abs().sum() > 0
    assert torch.equal(scale[0], torch.zeros_like(scale[0]))
    network.eval()
    with torch.no_grad():
        plain = network(crops, heads=False)["features"]  # what fine-tuning computes
        at_zero = network(crops, condition=network.clean_condition[None] + shift[:1],
                          heads=False)["features"]
        at_700 = network(crops, condition=network.clean_condition[None] + shift[2:],
                         heads=False)["features"]
    assert torch.allclose(plain, at_zero)
    assert not torch.allclose(plain, at_700)
