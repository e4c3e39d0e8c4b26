"""Top and decoder tuning train on the frozen part's outputs, computed once: same result."""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import labelled_crops, tiny_network, tiny_settings
from training_helpers import SWIN_SHAPE

from bids_pcs.config import FinetuneSettings
from bids_pcs.finetuning import finetune
from bids_pcs.finetuning.data import split_by_participant
from bids_pcs.finetuning.frozen_outputs import (
    BOTTLENECK,
    FEATURES,
    cache_frozen_outputs,
    frozen_part,
    network_outputs,
)
from bids_pcs.finetuning.strategies import get_strategy
from bids_pcs.finetuning.train import init_network


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.mark.parametrize(("strategy", "part"), [("top", "decoder"), ("decoder", "encoder"),
                                                ("full", None), ("lora", None)])
def test_the_kept_part_is_the_frozen_prefix(strategy, part):
    rule = get_strategy(strategy, FinetuneSettings(lora_rank=2, lora_alpha=4))
    network = rule.prepare(tiny_network())
    assert frozen_part(network, rule.trainable_names(network)) == part


@pytest.mark.parametrize("part", ["decoder", "encoder"])
def test_outputs_from_kept_parts_are_the_network_outputs(part):
    network = tiny_network(seed=2).eval()
    crops = labelled_crops(3).crops
    cached = cache_frozen_outputs(network, crops, part, batch_size=2,
                                  device=torch.device("cpu"))
    assert (FEATURES in cached.targets) == (part == "decoder")
    assert cached.targets[BOTTLENECK].shape[0] == 3
    index = torch.tensor([0, 1])  # a batch of the cache: the same arithmetic, bit for bit
    with torch.no_grad():
        kept = network_outputs(network, cached.batch(index))
        plain = network(crops.batch(index)["image"])
    for key in ("segmentation", "classification", "features", "bottleneck"):
        assert torch.equal(kept[key], plain[key]), key


def test_outputs_that_do_not_fit_are_not_kept():
    crops = labelled_crops(2).crops
    assert cache_frozen_outputs(tiny_network(), crops, "decoder", batch_size=2,
                                device=torch.device("cpu"), memory_bytes=1024) is None


def _finetune(strategy: str, cache: bool, train, validation, encoder_calls: list[int]):
    settings = tiny_settings(strategy=strategy, epochs=3, cache_frozen=cache)
    original = init_network

    def counting(*args, **kwargs):
        network, source = original(*args, **kwargs)
        network.encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
        return network, source

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("bids_pcs.finetuning.train.init_network", counting)
        return finetune(settings, train, validation, "scratch", progress=False)


@pytest.mark.parametrize("strategy", ["top", "decoder"])
def test_cached_finetuning_equals_the_uncached_path(strategy):
    # dropout-free tiny CNN, 6 training + 2 validation crops, 3 epochs of 3 steps
    data = labelled_crops(8)
    train, validation = split_by_participant(data, 0.25, seed=1)
    calls_cached: list[int] = []
    calls_plain: list[int] = []
    cached = _finetune(strategy, True, train, validation, calls_cached)
    plain = _finetune(strategy, False, train, validation, calls_plain)

    # the frozen encoder ran once per batch of the cache (3 train + 1 validation), not per step
    assert len(calls_cached) == 4
    assert len(calls_plain) == 3 * (3 + 1)
    for got, want in zip(cached.train.history, plain.train.history, strict=True):
        for key in ("loss", "segmentation", "classification", "val_dice", "val_score"):
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    assert cached.train.best_epoch == plain.train.best_epoch
    kept, recomputed = cached.network.state_dict(), plain.network.state_dict()
    assert kept.keys() == recomputed.keys()
    for key in kept:
        torch.testing.assert_close(kept[key], recomputed[key], rtol=1e-4, atol=1e-6)
    # and training did move the heads
    assert not torch.equal(kept["heads.segmentation.conv.conv.weight"],
                           tiny_network().state_dict()["heads.segmentation.conv.conv.weight"])


@pytest.mark.slow
def test_cached_top_tuning_of_swinunetr_equals_the_uncached_path():
    data = labelled_crops(4, shape=SWIN_SHAPE)
    train, validation = split_by_participant(data, 0.5, seed=0)
    results = []
    for cache in (True, False):
        settings = tiny_settings(strategy="top", epochs=2, cache_frozen=cache).replace(
            crop={"size_mm": list(SWIN_SHAPE)},
            model={"architecture": "swinunetr", "feature_size": 12, "depths": [1, 1, 1, 1],
                   "window_size": 4})
        results.append(finetune(settings, train, validation, "scratch", progress=False))
    cached, plain = results
    for got, want in zip(cached.train.history, plain.train.history, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
        assert got["val_score"] == pytest.approx(want["val_score"], rel=1e-5)
    for key, value in cached.network.state_dict().items():
        torch.testing.assert_close(value, plain.network.state_dict()[key], rtol=1e-4, atol=1e-6)
