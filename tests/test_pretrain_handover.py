"""What each pre-training method hands to fine-tuning: a trained encoder AND decoder, fed right.

For every method: pre-train a tiny network for a few steps, then fine-tune
from it with a frozen backbone (``top``). The pre-trained decoder must differ
from the from-scratch one (both are built after the same seed, so a method
that never trains its decoder would hand over a bit-identical random one), and
the first forward pass of fine-tuning must feed the encoder inputs in the
range that pre-training fed it.
"""

from __future__ import annotations

import pytest
import torch
from finetune_helpers import labelled_crops, tiny_settings
from training_helpers import TINY_OPTIONS, crop_set

from bids_pcs.finetuning import finetune, init_network
from bids_pcs.inference.predict import predict_hemispheres
from bids_pcs.models.model_io import load_model, read_model_card
from bids_pcs.models.network import CnnEncoder
from bids_pcs.pretraining.train import pretrain

METHODS = ("reconstruction", "contrastive", "adversarial", "diffusion")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


class EncoderInputs:
    """Every input any CNN encoder receives while the context is open (a global pre-hook)."""

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []

    def __enter__(self) -> EncoderInputs:
        def record(module, args):
            if isinstance(module, CnnEncoder):
                self.inputs.append(args[0].detach().clone())

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()

    @property
    def low(self) -> float:
        return min(float(x.min()) for x in self.inputs)

    @property
    def high(self) -> float:
        return max(float(x.max()) for x in self.inputs)


def _settings(method: str):
    return tiny_settings(strategy="top", epochs=1).replace(
        pretrain={"method": method, "epochs": 2, "batch_size": 2, "learning_rate": 3e-3,
                  "options": {method: TINY_OPTIONS[method]}},
        run={"seed": 4})


@pytest.mark.parametrize("method", METHODS)
def test_pretraining_hands_over_a_trained_decoder_fed_as_in_pretraining(tmp_path, method):
    settings = _settings(method)
    with EncoderInputs() as seen_in_pretraining:
        pretrain(settings, crop_set(4, seed=2), model_dir=tmp_path / "model", progress=False)

    scratch, _ = init_network(settings, "scratch")
    pretrained, source = init_network(settings, tmp_path / "model")
    assert source.method == method
    mine, theirs = pretrained.state_dict(), scratch.state_dict()
    for part in ("encoder", "decoder"):
        names = [n for n, _ in scratch.named_parameters() if n.startswith(f"{part}.")]
        unchanged = [n for n in names if torch.equal(mine[n], theirs[n])]
        assert not unchanged, f"{method}: {part} tensors equal to scratch: {unchanged[:3]}"

    train = labelled_crops(4, seed=3)
    with EncoderInputs() as seen_in_finetuning:
        result = finetune(settings, train, None, tmp_path / "model", progress=False,
                          steps_per_epoch=1)
    first = seen_in_finetuning.inputs[0]
    tolerance = 0.05
    assert seen_in_pretraining.low - tolerance <= float(first.min()), method
    assert float(first.max()) <= seen_in_pretraining.high + tolerance, method
    # the frozen (top) backbone is the pre-trained one, conditioning included
    state = result.network.state_dict()
    assert all(torch.equal(state[k], v) for k, v in mine.items() if not k.startswith("heads."))

    if method == "diffusion":
        # the network itself scales its input to [-1, 1] as in pre-training...
        scaled = 2 * train.crops.images - 1
        assert all(any(torch.allclose(x, crop) for crop in scaled) for x in first)
        assert seen_in_pretraining.low < -0.5  # ...which pre-training did: not [0, 1]
        assert float(first.min()) < -0.5
        # ...and adds the clean-image (t = 0) condition, learnt and frozen with the encoder
        assert pretrained.clean_condition is not None
        assert pretrained.clean_condition.abs().sum() > 0
        for card in (read_model_card(tmp_path / "model"), result.card):
            assert (card["architecture"]["input_scale"], card["architecture"]["input_offset"],
                    card["architecture"]["clean_condition"]) == (2.0, -1.0, True)
    else:
        assert pretrained.spec.input_conditioning.is_identity
        assert pretrained.clean_condition is None


def test_inference_applies_the_saved_input_conditioning(tmp_path):
    settings = _settings("diffusion")
    pretrain(settings, crop_set(4, seed=2), model_dir=tmp_path / "pre", progress=False)
    finetune(settings, labelled_crops(4, seed=3), None, tmp_path / "pre",
             model_dir=tmp_path / "ft", progress=False, steps_per_epoch=1)
    network, card = load_model(tmp_path / "ft")
    assert card["stage"] == "finetune" and network.clean_condition is not None
    crops = {h: labelled_crops(2, seed=5).crops.images[i, 0].numpy() for i, h in enumerate("LR")}
    with EncoderInputs() as seen:
        predict_hemispheres(network, crops)
    expected = 2 * torch.stack([torch.as_tensor(crops[h]) for h in "LR"])[:, None] - 1
    assert torch.allclose(seen.inputs[0], expected)
