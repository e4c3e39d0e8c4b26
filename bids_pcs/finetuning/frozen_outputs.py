"""What the frozen part of the network computes, computed once per run (top and decoder tuning).

Fine-tuning feeds every crop unchanged in every epoch (no augmentation), and
the parts a strategy freezes run in eval mode (no dropout, no statistics
updated), so their output for a crop is the same number in epoch 1 and in
epoch 30. Where the trainable parameters all sit *after* a frozen prefix of
the network, that prefix is run once over the training and validation crops
and the epochs train on its outputs:

- ``top`` (only ``heads`` train): the decoder's ``features`` and the
  bottleneck are kept; an epoch is the two heads and their backward pass;
- ``decoder`` (``decoder`` and ``heads`` train): the encoder's skips and its
  (conditioned) bottleneck are kept; an epoch runs the decoder and the heads.

``full`` and ``lora`` train parameters inside the encoder, so nothing is kept
for them. The outputs travel with the crops as extra per-crop tensors of the
:class:`~bids_pcs.training.data.CropSet` (keys ``frozen.*``), so the engine
slices, shards and moves them like any target, and
:func:`network_outputs` uses them in place of the frozen forward pass. They are
computed on the training device under the engine's autocast and kept in the
dtype the network gives there, so every number downstream is the one the
uncached path computes (tested). The price is memory: SwinUNETR's full-size
features are ``feature_size`` channels per voxel (19 MB per 32x96x64 crop at
feature size 24 in float32); when the outputs would take more than half of
the memory at hand they are not kept and the run trains as before (logged).

Usage::

    part = frozen_part(network, strategy.trainable_names(network))   # "decoder" for top
    cached = cache_frozen_outputs(network, crops, part, batch_size=2, device=device)
    out = network_outputs(network, cached.batch(torch.tensor([0, 1])))  # heads on kept features
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable

import torch
from torch import nn

from bids_pcs.models.network import EncoderOutput
from bids_pcs.training.data import CropSet

LOGGER = logging.getLogger(__name__)
PREFIX = "frozen."
FEATURES = f"{PREFIX}features"
BOTTLENECK = f"{PREFIX}bottleneck"
SKIP = f"{PREFIX}skip"
# the frozen prefix: the decoder's output (encoder and decoder frozen) or the encoder's
PARTS: tuple[str, ...] = ("decoder", "encoder")
MEMORY_SHARE = 0.5  # of the memory at hand, at most, for the kept outputs


def frozen_part(network: nn.Module, trainable: Iterable[str]) -> str | None:
    """The frozen prefix whose outputs can be kept: ``"decoder"``, ``"encoder"`` or ``None``.

    Args:
        network: a :class:`~bids_pcs.models.network.PcsNetwork` as prepared by the strategy.
        trainable: the names of its parameters that train.

    Returns:
        ``"decoder"`` when no encoder or decoder parameter trains (keep the
        features), ``"encoder"`` when no encoder parameter trains (keep the
        encoder's outputs), ``None`` otherwise (nothing to keep).
    """
    trainable = set(trainable)
    groups = {name.split(".", 1)[0] for name in trainable}
    if not {"encoder", "decoder"} <= {n.split(".", 1)[0] for n, _ in network.named_parameters()}:
        return None  # not a PcsNetwork (a wrapped one: its forward may differ)
    if not groups & {"encoder", "decoder"}:
        return "decoder"
    if "encoder" not in groups:
        return "encoder"
    return None


def network_outputs(network: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``network(batch["image"])``, from the kept frozen outputs when the batch carries them."""
    if FEATURES in batch:
        features, bottleneck = batch[FEATURES], batch[BOTTLENECK]
    elif f"{SKIP}0" in batch:
        skips = [batch[f"{SKIP}{i}"] for i in range(_count_skips(batch))]
        bottleneck = batch[BOTTLENECK]
        features = network.decoder(EncoderOutput(skips=skips, bottleneck=bottleneck))
    else:
        return network(batch["image"])
    return {"features": features, "bottleneck": bottleneck,
            "segmentation": network.heads["segmentation"](features),
            "classification": network.heads["classification"](bottleneck)}


def cache_frozen_outputs(network: nn.Module, crops: CropSet, part: str, *, batch_size: int,
                         device: torch.device, mixed_precision: bool = True,
                         memory_bytes: int | None = None) -> CropSet | None:
    """``crops`` with the outputs of the frozen ``part`` of ``network`` added per crop.

    Args:
        network: the network (its frozen part runs in eval mode here; the mode
            of every module is restored after).
        crops: the crops (and targets) to run through it.
        part: from :func:`frozen_part`.
        batch_size: crops per forward pass.
        device: where to compute (the training device); the outputs are kept
            on the crops' device.
        mixed_precision: the engine's bf16 autocast on CUDA (the kept outputs
            must be what training would compute).
        memory_bytes: room for the outputs (default: :data:`MEMORY_SHARE` of
            the memory at hand where the crops live).

    Returns:
        A new :class:`CropSet` (same images, names and targets, plus the
        ``frozen.*`` tensors), or ``None`` when they would not fit.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, not {part!r}")
    if len(crops) == 0:
        return None
    room = memory_bytes if memory_bytes is not None else _memory_at_hand(crops.device)
    started = time.perf_counter()
    modes = {name: module.training for name, module in network.named_modules()}
    network.eval()
    kept: dict[str, torch.Tensor] = {}
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16)
                if device.type == "cuda" and mixed_precision else contextlib.nullcontext())
    try:
        with torch.no_grad(), autocast:
            for start in range(0, len(crops), batch_size):
                index = torch.arange(start, min(start + batch_size, len(crops)))
                outputs = _frozen_forward(network, crops.batch(index, device)["image"], part)
                if not kept:
                    per_crop = sum(t[0].numel() * t.element_size() for t in outputs.values())
                    needed = per_crop * len(crops)
                    if needed > room:
                        LOGGER.info("The frozen %s's outputs would take %.1f GB, more than the "
                                    "%.1f GB at hand; every epoch recomputes them.",
                                    "part" if part == "decoder" else "encoder",
                                    needed / 2**30, room / 2**30)
                        return None
                    kept = {key: torch.empty((len(crops), *value.shape[1:]), dtype=value.dtype,
                                             device=crops.device)
                            for key, value in outputs.items()}
                for key, value in outputs.items():
                    kept[key][start:start + len(index)] = value.to(crops.device)
    finally:
        for name, module in network.named_modules():
            module.train(modes[name])
    LOGGER.info("Kept the frozen %s outputs of %d crops (%.2f GB) in %.1f s: every epoch "
                "trains on them instead of recomputing them.",
                "encoder+decoder" if part == "decoder" else "encoder", len(crops),
                sum(t.numel() * t.element_size() for t in kept.values()) / 2**30,
                time.perf_counter() - started)
    return CropSet(crops.images, {**crops.targets, **kept}, crops.names)


def _frozen_forward(network: nn.Module, image: torch.Tensor, part: str,
                    ) -> dict[str, torch.Tensor]:
    encoded = network.encode(image)
    if part == "decoder":
        return {FEATURES: network.decoder(encoded), BOTTLENECK: encoded.bottleneck}
    out = {f"{SKIP}{i}": skip for i, skip in enumerate(encoded.skips)}
    out[BOTTLENECK] = encoded.bottleneck
    return out


def _count_skips(batch: dict[str, torch.Tensor]) -> int:
    return sum(1 for key in batch if key.startswith(SKIP))


def _memory_at_hand(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * MEMORY_SHARE)
    import psutil

    from bids_pcs.resources import detect_allocation

    available = psutil.virtual_memory().available
    allocation = int(detect_allocation().memory_gb * 2**30)
    return int(min(available, allocation) * MEMORY_SHARE)
