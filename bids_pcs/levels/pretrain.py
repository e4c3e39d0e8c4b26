"""The ``pretrain`` analysis level: self-supervised training on every selected crop.

``bids_pcs BIDS_DIR OUTPUT_DIR pretrain --method M [--pretrain-data DIR ...]``
preprocesses the selected T1w images of BIDS_DIR and every T1w image of each
``--pretrain-data`` dataset when their crops are missing (the participant
level's API; an extra dataset's derivatives go to
``OUTPUT_DIR/derivatives/<its folder name>/``), reads every crop that passed
QC into memory and hands them to
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
from pathlib import Path
from typing import Any

import torch

from bids_pcs.config import Settings
from bids_pcs.levels.training_inputs import CropFile, collect_pretraining_crops
from bids_pcs.pretraining import get_objective
from bids_pcs.pretraining.train import pretrain
from bids_pcs.training.data import load_crop_set
from bids_pcs.training.distributed import DistContext, distributed_run

LOGGER = logging.getLogger(__name__)


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
                          names=[c.name for c in crop_files])
    summary = training_data_summary(crop_files, settings)
    LOGGER.info("Pre-training %s on %d crops of %d T1w images (%d dataset(s)), %s, "
                "%d process(es).", method, len(crops), summary["n_images"],
                len(summary["datasets"]), device, context.world_size)
    result = pretrain(settings, crops, model_dir=model_dir, checkpoint_dir=checkpoint_dir,
                      device=device, context=context, training_data=summary)
    if not context.is_main:
        return
    if checkpoint_dir.parent == model_dir:
        # without a work directory the checkpoint only served this run
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    history = result.train.history
    LOGGER.info("Pre-trained model written to %s (final loss %.4f).", model_dir,
                history[-1]["loss"] if history else float("nan"))


def collect_crops(settings: Settings, context: DistContext) -> list[CropFile]:
    """The crops of every selected T1w image (and ``--pretrain-data`` image) that passed QC.

    Preprocessing (:func:`bids_pcs.preprocess.preprocess_images`, which skips
    images already done) runs on the first process only; the others wait, then
    read what it made (:mod:`bids_pcs.levels.training_inputs`).
    """
    return collect_pretraining_crops(settings, context)


def training_data_summary(crop_files: list[CropFile], settings: Settings) -> dict[str, Any]:
    """What model.json says about the crops a model learnt from (per dataset too)."""
    main = str(Path(settings.run.bids_dir).absolute())
    own = [c for c in crop_files if c.dataset in ("", main)]
    participants = sorted({c.image.subject for c in own})
    datasets = {}
    for dataset in dict.fromkeys(c.dataset or main for c in crop_files):
        mine = [c for c in crop_files if (c.dataset or main) == dataset]
        datasets[Path(dataset).name] = {
            "path": dataset, "n_crops": len(mine), "n_images": len({c.image.prefix for c in mine}),
            "n_participants": len({c.image.subject for c in mine})}
    return {
        "dataset": Path(settings.run.bids_dir).name,
        "n_crops": len(crop_files),
        "n_images": sum(d["n_images"] for d in datasets.values()),
        "n_participants": sum(d["n_participants"] for d in datasets.values()),
        "participants": participants,
        "datasets": datasets,
        "hemispheres": dict(Counter(c.hemisphere for c in crop_files)),
        "right_mirrored": settings.crop.mirror_right,
        "images": sorted({c.image.prefix for c in own}),
    }
