"""The ``pretrain`` analysis level: self-supervised training on every selected crop.

``bids_pcs BIDS_DIR OUTPUT_DIR pretrain --method M`` preprocesses the selected
T1w images when their crops are missing (the participant level's API), reads
every crop that passed QC into memory and hands them to
:func:`bids_pcs.pretraining.train.pretrain` (the driver the study calls too),
which trains the network with the method's objective on the one training
engine and writes ``OUTPUT_DIR/models/<name>/``:
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
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.levels.training_inputs import preprocessed_passing_qc, selected_images
from bids_pcs.pretraining import get_objective
from bids_pcs.pretraining.train import pretrain
from bids_pcs.training.data import load_crop_set
from bids_pcs.training.distributed import DistContext, distributed_run

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class CropFile:
    """One crop on disk and where it comes from."""

    path: Path
    image: T1wImage
    hemisphere: str


def run(settings: Settings) -> None:
    """Pre-train with ``settings.pretrain.method`` and write the model directory."""
    with distributed_run(settings.run.device) as (context, device):
        _pretrain(settings, context, device)


def model_name(settings: Settings) -> str:
    """Folder name of the model under ``OUTPUT_DIR/models/``."""
    return settings.run.model_name or f"pretrain-{settings.pretrain.method}"


def _pretrain(settings: Settings, context: DistContext, device: torch.device) -> None:
    method = settings.pretrain.method
    get_objective(method, settings.pretrain.options)  # refuse bad options before any work
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
    result = pretrain(settings, crops, model_dir=model_dir, checkpoint_dir=checkpoint_dir,
                      device=device, context=context,
                      training_data=training_data_summary(crop_files, settings))
    if not context.is_main:
        return
    if checkpoint_dir.parent == model_dir:
        # without a work directory the checkpoint only served this run
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    history = result.train.history
    LOGGER.info("Pre-trained model written to %s (final loss %.4f).", model_dir,
                history[-1]["loss"] if history else float("nan"))


def collect_crops(settings: Settings, context: DistContext) -> list[CropFile]:
    """The crops of every selected T1w image that passed QC, preprocessing missing ones.

    Preprocessing (:func:`bids_pcs.preprocess.preprocess_images`, which skips
    images already done) runs on the first process only; the others wait, then
    read what it made (:mod:`bids_pcs.levels.training_inputs`).
    """
    images = selected_images(settings)
    results, _ = preprocessed_passing_qc(settings, images, context)
    crops = [CropFile(Path(result.crops[h]), image, h)
             for image, result in zip(images, results, strict=True) if result is not None
             for h in HEMISPHERES]
    if not crops:
        raise InputDataError(
            f"No crops passed quality control under {settings.run.output_dir}; check the "
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
