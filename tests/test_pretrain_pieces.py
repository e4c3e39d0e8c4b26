"""The pieces the pretext tasks share: views, separable SSIM, hidden-voxel loss, MoCo queue."""

from __future__ import annotations

import pytest
import torch
from monai.metrics.regression import compute_ssim_and_cs
from training_helpers import TINY_OPTIONS, crop_set, smooth_crops, tiny_cnn

from bids_pcs.config import RecipeError
from bids_pcs.pretraining import get_objective
from bids_pcs.pretraining.losses import SeparableSSIM, masked_restoration_loss
from bids_pcs.pretraining.views import RandomViews

NO_INTENSITY = {"gamma": 1.0, "intensity_scale": 0.0, "intensity_shift": 0.0,
                "blur_probability": 0.0, "noise_std": 0.0}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


def test_views_are_batched_float32_random_and_seeded():
    crops = smooth_crops(3)
    views = RandomViews()
    torch.manual_seed(0)
    first, second = views(crops), views(crops)
    torch.manual_seed(0)
    again = views(crops)
    assert first.shape == crops.shape and first.dtype == torch.float32
    assert torch.equal(first, again)          # the engine's per-epoch seed fixes them
    assert not torch.allclose(first, second)  # two views of a crop differ
    assert not torch.allclose(first, crops)
    # bf16 crops come back as bf16, computed in float32
    assert views(crops.to(torch.bfloat16)).dtype == torch.bfloat16


def test_a_view_without_crop_rotation_or_intensity_change_is_the_crop():
    crops = smooth_crops(2)
    identity = RandomViews(crop_fraction=1.0, rotate_degrees=0.0, **NO_INTENSITY)
    assert torch.allclose(identity(crops), crops, atol=1e-5)


def test_a_random_crop_zooms_into_the_crop():
    crops = torch.zeros(1, 1, 16, 32, 16)
    crops[..., :8, :, :] = 1.0  # half the crop along its first axis is bright
    zoomed = RandomViews(crop_fraction=0.5, rotate_degrees=0.0, **NO_INTENSITY)
    torch.manual_seed(1)
    fractions = zoomed(crops.expand(200, -1, -1, -1, -1)).mean(dim=(1, 2, 3, 4))
    # sub-boxes land anywhere: some views are mostly bright, some mostly dark; without
    # the zoom every view would be half bright
    assert fractions.max() > 0.8 and fractions.min() < 0.2


def test_views_refuse_a_crop_fraction_outside_the_unit_interval():
    with pytest.raises(RecipeError, match="crop_fraction"):
        RandomViews(crop_fraction=0.0)


def test_separable_ssim_equals_monai_dense_gaussian_ssim_inside_the_crop():
    x, y = smooth_crops(2, seed=1), smooth_crops(2, seed=2)
    mine = SeparableSSIM(window=7, sigma=1.5).map(x, y)
    dense, _ = compute_ssim_and_cs(x, y, spatial_dims=3, kernel_size=[7, 7, 7],
                                   kernel_sigma=[1.5, 1.5, 1.5], data_range=1.0)
    assert torch.allclose(mine[..., 3:-3, 3:-3, 3:-3], dense, atol=1e-3)
    assert torch.allclose(SeparableSSIM()(x, x), torch.tensor(1.0))


def test_the_restoration_loss_counts_the_hidden_voxels_only():
    image = smooth_crops(2)
    hidden = torch.zeros_like(image, dtype=torch.bool)
    hidden[..., :8, :, :] = True
    ssim = SeparableSSIM()
    copied_visible = torch.where(hidden, torch.zeros_like(image), image)
    restored_hidden = torch.where(hidden, image, torch.zeros_like(image))
    assert masked_restoration_loss(copied_visible, image, hidden, ssim)["l1"] > 0.1
    assert masked_restoration_loss(restored_hidden, image, hidden, ssim)["l1"] == 0
    weighted = masked_restoration_loss(restored_hidden, image, hidden, ssim, visible_weight=0.5)
    assert weighted["l1"] > 0.1


def _contrastive(**options):
    network = tiny_cnn(seed=1)
    objective = get_objective("contrastive", {**TINY_OPTIONS["contrastive"], **options})
    objective.setup(network)
    return network, objective


def test_the_queue_keeps_the_latest_keys_and_never_uses_the_querys_own_crop():
    network, objective = _contrastive(queue_size=6)
    crops = crop_set(4).images
    for indices in ([0, 1], [2, 3], [0, 2], [1, 3]):
        batch = {"image": crops[indices], "index": torch.tensor(indices)}
        objective.losses(batch, network, "main")["loss"].backward()
    # 8 keys went into 6 slots: the first two were pushed out
    assert sorted(objective.queue_index.tolist()) == [0, 1, 2, 2, 3, 3]
    assert torch.allclose(objective.queue.norm(dim=1), torch.ones(6))
    # a query of crop 0 sees the keys of crops 1, 2, 3 only: its logits over the
    # queue are those of the other crops (the -inf of its own entries costs nothing)
    batch = {"image": crops[[0, 1]], "index": torch.tensor([0, 1])}
    assert torch.isfinite(objective.losses(batch, network, "main")["loss"])


def test_the_key_encoder_is_a_moving_average_of_the_trained_encoder():
    network, objective = _contrastive(momentum=0.75)
    key_before = {k: v.clone() for k, v in objective.key_encoder.state_dict().items()}
    with torch.no_grad():
        for parameter in network.encoder.parameters():
            parameter.add_(1.0)
    objective.momentum_update(network)
    name = next(iter(key_before))
    expected = 0.75 * key_before[name] + 0.25 * network.encoder.state_dict()[name]
    assert torch.allclose(objective.key_encoder.state_dict()[name], expected)
    assert not any(p.requires_grad for p in objective.key_encoder.parameters())


def test_contrastive_trains_the_decoder_unless_its_restoration_term_is_off():
    network, objective = _contrastive()
    assert any(n.startswith("decoder.") for n in objective.trainable_names(network))
    network, objective = _contrastive(reconstruction_weight=0.0)
    assert not any(n.startswith("decoder.") for n in objective.trainable_names(network))
