"""``lora``: low-rank adapters (``peft``) on the encoder; heads trained in full.

Adapters go on the backbone's attention and MLP linear layers and on every
encoder convolution; their base weights, the rest of the encoder, and the
decoder stay frozen, while both heads train in full.  At export the adapters
are merged into their base weights (``peft``'s ``merge_and_unload``), so the
saved model is a plain :class:`~bids_pcs.models.network.PcsNetwork` that loads
and runs without ``peft``.

``peft`` 0.21 mis-merges point-wise (1x1x1) ``Conv3d`` adapters (its 2D 1x1
shortcut, huggingface/peft#3768, fixed after 0.21.2 by #3777); those few
layers (the residual projections of the CNN's encoder) are merged here with
the exact formula before ``merge_and_unload`` merges the rest.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bids_pcs.config import RecipeError
from bids_pcs.finetuning.strategies.base import Strategy, is_adapter_parameter, register

ADAPTER = "default"
# Swin transformer blocks of MONAI's SwinUNETR name their parts "attn" and "mlp"
_TRANSFORMER_PARTS = (".attn.", ".mlp.")


def lora_target_modules(network: nn.Module) -> list[str]:
    """Names of the modules that get adapters.

    Every ``nn.Linear`` inside a Swin attention (``qkv``, ``proj``) or MLP
    (``linear1``, ``linear2``) block of the encoder, and every ``nn.Conv3d`` of
    the encoder (SwinUNETR: patch embedding and the convolutional skip blocks
    ``encoder1-4``, ``encoder10``; CNN: every convolution of its residual
    stages).  Patch-merging reductions, the decoder (its transposed
    convolutions have no LoRA layer in ``peft``) and the heads get none.
    """
    targets = []
    for name, module in network.named_modules():
        if not name.startswith("encoder."):
            continue
        in_transformer = any(part in f"{name}." for part in _TRANSFORMER_PARTS)
        if isinstance(module, nn.Conv3d) or (isinstance(module, nn.Linear) and in_transformer):
            targets.append(name)
    return targets


@register
class Lora(Strategy):
    """LoRA adapters (rank ``lora_rank``, scale ``lora_alpha / lora_rank``) + full heads.

    Args:
        settings: ``settings.finetune`` (``lora_rank``, ``lora_alpha``, ``lora_dropout``).

    Example::

        strategy = Lora(settings.finetune)
        network = strategy.prepare(network)      # adapters injected in place
        ...                                      # train strategy.trainable_names(network)
        plain = strategy.export(network)         # adapters merged, no peft needed to load
    """

    name = "lora"
    definition = ("Low-rank adapters (peft LoRA, rank r and scale alpha/r from [finetune]) are "
                  "added to every linear layer of the Swin attention (qkv, proj) and MLP "
                  "(linear1, linear2) blocks and to every Conv3d of the encoder; the adapters "
                  "and both task heads train, every original encoder and decoder weight is "
                  "frozen; the adapters are merged into the weights at export.")
    trained_groups = ("heads",)

    def __init__(self, settings: Any = None) -> None:
        super().__init__(settings)
        self._tuners: dict[int, Any] = {}

    def prepare(self, network: nn.Module) -> nn.Module:
        from peft import LoraConfig
        from peft.tuners.lora import LoraModel

        if int(self.settings.lora_rank) < 1 or int(self.settings.lora_alpha) < 1:
            raise RecipeError("[finetune] lora_rank and lora_alpha must be positive integers.")
        if not 0.0 <= float(self.settings.lora_dropout) < 1.0:
            raise RecipeError("[finetune] lora_dropout must lie in [0, 1).")
        targets = lora_target_modules(network)
        if not targets:
            raise ValueError("the network has no module LoRA can adapt")
        config = LoraConfig(r=int(self.settings.lora_rank),
                            lora_alpha=int(self.settings.lora_alpha),
                            lora_dropout=float(self.settings.lora_dropout),
                            target_modules=targets, bias="none")
        # LoraModel injects the adapters in place: the network keeps its type and
        # its parameter names (plus ".lora_A.default" / ".lora_B.default" entries)
        self._tuners[id(network)] = LoraModel(network, config, ADAPTER)
        return network

    def trainable_names(self, network: nn.Module) -> list[str]:
        return [n for n, _ in network.named_parameters()
                if is_adapter_parameter(n) or n.startswith("heads.")]

    def export(self, network: nn.Module) -> nn.Module:
        tuner = self._tuners.pop(id(network), None)
        if tuner is None:
            raise ValueError("export() needs the network this strategy prepared")
        _merge_pointwise_conv3d(network)
        merged = tuner.merge_and_unload(progressbar=False, safe_merge=True)
        leftover = [n for n, _ in merged.named_parameters() if is_adapter_parameter(n)]
        if leftover:
            raise RuntimeError(f"LoRA adapters survived the merge: {leftover[:3]}")
        return merged

    def summary(self, network: nn.Module) -> dict[str, Any]:
        out = super().summary(network)
        out["lora"] = {"rank": int(self.settings.lora_rank),
                       "alpha": int(self.settings.lora_alpha),
                       "dropout": float(self.settings.lora_dropout),
                       "target_modules": len(lora_target_modules_of_adapted(network)),
                       "merged_at_export": True}
        return out


def lora_target_modules_of_adapted(network: nn.Module) -> list[str]:
    """Names of the modules of an adapted network that carry an adapter."""
    from peft.tuners.lora import LoraLayer

    return [n for n, m in network.named_modules() if isinstance(m, LoraLayer)]


def _merge_pointwise_conv3d(network: nn.Module) -> None:
    """Merge and unwrap adapted 1x1x1 ``Conv3d`` layers (peft 0.21 gets their delta wrong)."""
    from peft.tuners.lora.layer import Conv3d as LoraConv3d

    for name, module in list(network.named_modules()):
        if not isinstance(module, LoraConv3d):
            continue
        base = module.get_base_layer()
        if tuple(base.kernel_size) != (1, 1, 1):
            continue
        with torch.no_grad():
            for adapter in module.active_adapters:
                down = module.lora_A[adapter].weight.flatten(1)  # (r, in)
                up = module.lora_B[adapter].weight.flatten(1)    # (out, r)
                delta = (up @ down) * module.scaling[adapter]
                base.weight += delta.view_as(base.weight).to(base.weight.dtype)
        parent_name, _, child = name.rpartition(".")
        setattr(network.get_submodule(parent_name) if parent_name else network, child, base)
