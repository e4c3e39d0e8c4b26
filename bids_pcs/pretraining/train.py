"""Pre-train a network on crops already in memory: the Python API beside the ``pretrain`` level.

The ``pretrain`` level collects every selected crop itself; the study needs to
pre-train on a *chosen* set of crops (the training participants of a split,
never the test ones), so this function takes the crops as they are, trains
with ``settings.pretrain`` on the one engine and, when asked, writes the model
directory (``model.safetensors``, ``model.json``, ``training_log.tsv``,
``loss_curve.png``).

Usage::

    result = pretrain(settings.replace(pretrain={"method": "contrastive"}), crops,
                      model_dir=out / "models" / "pretrain-contrastive")
    result.network        # the pre-trained PcsNetwork (CPU, eval mode)
    result.train.seconds  # wall time of the training loop
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bids_pcs.config import Settings
from bids_pcs.models.model_io import model_card, read_model_card, save_model
from bids_pcs.models.network import PcsNetwork, build_network
from bids_pcs.pretraining.base import get_objective
from bids_pcs.training.data import CropSet
from bids_pcs.training.distributed import DistContext
from bids_pcs.training.engine import Engine, TrainConfig, TrainingInterruptedError, TrainResult
from bids_pcs.training.plots import plot_loss_curve
from bids_pcs.training.schedule import check_schedule
from bids_pcs.training.summary import CURVE_NAME, LOG_NAME, training_summary

LOGGER = logging.getLogger(__name__)


@dataclass
class PretrainResult:
    """What :func:`pretrain` produced.

    Args:
        network: the pre-trained network, eval mode, on the CPU.
        card: its ``model.json`` content (with the weights' digest when saved).
        train: the engine's :class:`~bids_pcs.training.engine.TrainResult`.
        model_dir: where the model was written, or ``None``.
    """

    network: PcsNetwork
    card: dict[str, Any]
    train: TrainResult
    model_dir: Path | None = None


def pretrain(settings: Settings, crops: CropSet, *,
             model_dir: str | os.PathLike[str] | None = None,
             checkpoint_dir: str | os.PathLike[str] | None = None,
             device: torch.device | None = None, context: DistContext | None = None,
             progress: bool = True, training_data: dict[str, Any] | None = None,
             ) -> PretrainResult:
    """Self-supervised training with ``settings.pretrain`` (method, epochs, options) on ``crops``.

    Args:
        settings: the run's settings; ``pretrain``, ``model``, ``crop`` and
            ``run.seed``/``run.resume`` are read.
        crops: the crops to learn from (targets, if any, are ignored).
        model_dir: write the model directory there (main process only);
            ``None``: write nothing.
        checkpoint_dir: per-epoch checkpoints (``run.resume`` continues from them).
        device: where to train (default CPU).
        context: this process's place under ``torchrun``.
        progress: show a progress bar.
        training_data: what ``model.json`` records about the crops.

    Raises:
        TrainingInterruptedError: a signal stopped training (checkpoint saved).
    """
    context = context or DistContext()
    device = device or torch.device("cpu")
    method = settings.pretrain.method
    objective = get_objective(method, settings.pretrain.options)
    images = CropSet(crops.images, {}, crops.names)  # a pretext task sees images only
    torch.manual_seed(settings.run.seed)  # identical initial weights on every process
    network = build_network(settings.model, settings.crop.shape_vox, settings.labels.classes)
    objective.setup(network)
    model_dir = Path(model_dir) if model_dir is not None else None
    check_schedule("[pretrain]", settings.pretrain.lr_schedule, settings.pretrain.warmup_fraction)
    config = TrainConfig(
        epochs=settings.pretrain.epochs, batch_size=settings.pretrain.batch_size,
        accumulate_steps=settings.pretrain.accumulate_steps,
        learning_rate=settings.pretrain.learning_rate,
        lr_schedule=settings.pretrain.lr_schedule,
        warmup_fraction=settings.pretrain.warmup_fraction,
        weight_decay=settings.pretrain.weight_decay, seed=settings.run.seed,
        mixed_precision=settings.pretrain.mixed_precision,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        resume=settings.run.resume, log_tsv=model_dir / LOG_NAME if model_dir else None,
        progress=progress, description=method,
    )
    result = Engine(network, objective, config, device=device, context=context).fit(images)
    if result.interrupted:
        kept = (f"the checkpoint in {checkpoint_dir} is saved, rerun with --resume to continue"
                if checkpoint_dir is not None else "no checkpoint was asked for, so it restarts")
        raise TrainingInterruptedError(
            f"Pre-training stopped by a signal in epoch {result.epochs_completed + 1}; {kept}.")
    network = network.to("cpu").eval()
    card = model_card(
        settings, network, stage="pretrain", method=method, objective=objective.summary(),
        training_data={"n_crops": len(images), **(training_data or {})},
        training=training_summary(result, config, context, device),
        metrics={f"final_{k}": v for k, v in (result.history[-1] if result.history else {}).items()
                 if k not in ("epoch", "seconds", "crops_per_second", "peak_memory_mb",
                              "learning_rate")},
    )
    if model_dir is not None and context.is_main:
        save_model(model_dir, network, card)
        plot_loss_curve(result.history, model_dir / CURVE_NAME, title=f"pre-training: {method}")
        card = read_model_card(model_dir)
    return PretrainResult(network=network, card=card, train=result, model_dir=model_dir)
