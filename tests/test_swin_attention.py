"""Fused window attention: MONAI's SwinUNETR numbers, weights and gradients, one kernel."""

from __future__ import annotations

import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import WindowAttention
from training_helpers import SWIN_SHAPE, tiny_swin

from bids_pcs.models.swin_attention import FusedWindowAttention, fuse_window_attention


def _pair() -> tuple[SwinUNETR, SwinUNETR]:
    # two blocks per stage: the second attends in shifted windows (the mask path)
    torch.manual_seed(0)
    kwargs = {"in_channels": 1, "out_channels": 2, "feature_size": 12, "depths": (2, 2, 2, 2),
              "window_size": 4, "spatial_dims": 3}
    plain, fused = SwinUNETR(**kwargs), SwinUNETR(**kwargs)
    fused.load_state_dict(plain.state_dict())
    fuse_window_attention(fused)
    return plain, fused


def test_fused_attention_computes_monai_s_outputs_and_gradients():
    torch.set_num_threads(2)
    plain, fused = _pair()
    assert {type(m) for m in fused.modules()} & {WindowAttention, FusedWindowAttention} == {
        FusedWindowAttention}
    assert plain.state_dict().keys() == fused.state_dict().keys()
    image = torch.rand((2, 1, *SWIN_SHAPE), generator=torch.Generator().manual_seed(1))
    outputs = []
    for network in (plain, fused):
        out = network.train()(image)
        out.square().mean().backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-4, atol=1e-5)
    # float rounding, amplified by the instance norms: ~1e-3 of each gradient's scale
    # (a wrong bias or window mask is off by the order of the gradient itself)
    for (name, p), q in zip(plain.named_parameters(), fused.parameters(), strict=True):
        assert (q.grad - p.grad).abs().max() <= 1e-2 * p.grad.abs().max() + 1e-9, name
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(image), plain.eval()(image),
                                   rtol=1e-4, atol=1e-5)


def test_the_bids_pcs_network_uses_the_fused_attention():
    network = tiny_swin()
    kinds = {type(m) for m in network.modules()}
    assert FusedWindowAttention in kinds and WindowAttention not in kinds
