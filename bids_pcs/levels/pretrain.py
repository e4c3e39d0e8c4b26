"""The ``pretrain`` analysis level: self-supervised training on every selected crop.

``bids_pcs BIDS_DIR OUTPUT_DIR pretrain --method M`` preprocesses the selected
T1w images when their crops are missing (the participant level's API), reads
every crop that passed QC into memory, trains the network with the method's
objective on the one training engine, and writes ``OUTPUT_DIR/models/<name>/``:
``model.safetensors``, ``model.json``, ``training_log.tsv`` and
``loss_curve.png``.  Checkpoints go to ``WORK_DIR/pretrain/<name>/`` (with
``-w``) so that ``--resume`` continues an interrupted run; under ``torchrun``
every process trains on its share of the crops and the first one writes.

Usage::

    run(settings.replace(pretrain={"method": "diffusion"}))
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bids_pcs.config import HEMISPHERES, Settings
from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import T1wImage, collect_t1w
from bids_pcs.models.model_io import model_card, save_model
from bids_pcs.models.network import build_network
from bids_pcs.pretraining import get_objective
from bids_pcs.training.data import load_crop_set
from bids_pcs.training.distributed import (
    DistContext,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from bids_pcs.training.engine import Engine, TrainConfig, TrainingInterruptedError, TrainResult
from bids_pcs.training.plots import plot_loss_curve
from bids_pcs.training.summary import CURVE_NAME, LOG_NAME, training_summary

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropFile:
    """One crop on disk and where it comes from."""

    path: Path
    image: T1wImage
    hemisphere: str


def run(settings: Settings) -> None:
    """Pre-train with ``settings.pretrain.method`` and write the model directory."""
    context, device = init_distributed(settings.run.device)
    try:
        _pretrain(settings, context, device)
    finally:
        shutdown_distributed(context)


def model_name(settings: Settings) -> str:
    """Folder name of the model under ``OUTPUT_DIR/models/``."""
    return settings.run.model_name or f"pretrain-{settings.pretrain.method}"


def _pretrain(settings: Settings, context: DistContext, device: torch.device) -> None:
    method = settings.pretrain.method
    objective = get_objective(method, settings.pretrain.options)  # refuse bad options early
    output_dir = Path(settings.run.output_dir)
    name = model_name(settings)
    model_dir = output_dir / "models" / name
    checkpoint_dir = (Path(settings.run.work_dir) / "pretrain" / name if settings.run.work_dir
                      else model_dir / ".checkpoint")

    crop_files = collect_crops(settings, context)
    crops = load_crop_set([c.path for c in crop_files], settings.crop.shape_vox,
                          names=[f"{c.image.prefix}_hemi-{c.hemisphere}" for c in crop_files])
    LOGGER.info("Pre-training %s on %d crops of %d T1w images, %s, %d process(es).", method,
                len(crops), len({c.image.prefix for c in crop_files}), device,
                context.world_size)

    torch.manual_seed(settings.run.seed)  # identical initial weights on every process
    network = build_network(settings.model, settings.crop.shape_vox, settings.labels.classes)
    objective.setup(network)
    config = TrainConfig(
        epochs=settings.pretrain.epochs,
        batch_size=settings.pretrain.batch_size,
        accumulate_steps=settings.pretrain.accumulate_steps,
        learning_rate=settings.pretrain.learning_rate,
        weight_decay=settings.pretrain.weight_decay,
        seed=settings.run.seed,
        mixed_precision=settings.pretrain.mixed_precision,
        checkpoint_dir=checkpoint_dir,
        resume=settings.run.resume,
        log_tsv=model_dir / LOG_NAME,
        description=method,
    )
    result = Engine(network, objective, config, device=device, context=context).fit(crops)
    if result.interrupted:
        raise TrainingInterruptedError(
            f"Pre-training stopped by a signal in epoch {result.epochs_completed + 1}; the "
            f"checkpoint in {checkpoint_dir} is saved, rerun with --resume to continue."
        )
    if not context.is_main:
        return
    card = model_card(
        settings, network, stage="pretrain", method=method, objective=objective.summary(),
        training_data=training_data_summary(crop_files, settings),
        training=training_summary(result, config, context, device),
        metrics=_final_losses(result),
    )
    save_model(model_dir, network, card)
    plot_loss_curve(result.history, model_dir / CURVE_NAME, title=f"pre-training: {method}")
    if checkpoint_dir.parent == model_dir:
        # without a work directory the checkpoint only served this run
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    LOGGER.info("Pre-trained model written to %s (final loss %.4f).", model_dir,
                result.history[-1]["loss"] if result.history else float("nan"))


def collect_crops(settings: Settings, context: DistContext) -> list[CropFile]:
    """The crops of every selected T1w image that passed QC, preprocessing missing ones.

    Preprocessing (:func:`bids_pcs.preprocess.preprocess_images`, which skips
    images already done) runs on the first process only; the others wait, then
    read what it made.
    """
    from bids_pcs import preprocess  # Nipype and ANTs only when a level needs them

    run_settings = settings.run
    images = collect_t1w(Path(run_settings.bids_dir), run_settings.participant_label,
                         run_settings.session_label)
    if not images:
        raise InputDataError(f"No T1w images selected in {run_settings.bids_dir}; check "
                             "--participant-label and --session-label.")
    if context.is_main:
        results = list(preprocess.preprocess_images(settings, images))
    barrier(context)
    if not context.is_main:
        results = [preprocess.load_preprocessed(settings, image) for image in images]
    crops = []
    for image, result in zip(images, results, strict=True):
        if result is None or not result.qc_passed:
            LOGGER.warning("Skipping %s: registration failed quality control.", image.prefix)
            continue
        crops += [CropFile(Path(result.crops[h]), image, h) for h in HEMISPHERES]
    if not crops:
        raise InputDataError(
            f"No crops passed quality control under {run_settings.output_dir}; check the "
            "participant level's QC records and reports."
        )
    return crops


def training_data_summary(crop_files: list[CropFile], settings: Settings) -> dict[str, Any]:
    """What model.json says about the crops a model learnt from."""
    participants = sorted({c.image.subject for c in crop_files})
    return {
        "dataset": Path(settings.run.bids_dir).name,
        "n_crops": len(crop_files),
        "n_images": len({c.image.prefix for c in crop_files}),
        "n_participants": len(participants),
        "participants": participants,
        "hemispheres": dict(Counter(c.hemisphere for c in crop_files)),
        "right_mirrored": settings.crop.mirror_right,
        "images": sorted({c.image.prefix for c in crop_files}),
    }


def _final_losses(result: TrainResult) -> dict[str, float]:
    if not result.history:
        return {}
    last = result.history[-1]
    return {f"final_{k}": v for k, v in last.items()
            if k not in ("epoch", "seconds", "crops_per_second", "peak_memory_mb",
                         "learning_rate")}
