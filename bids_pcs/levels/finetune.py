"""The ``finetune`` analysis level: supervised training on labelled crops.

``bids_pcs BIDS_DIR OUTPUT_DIR finetune --init MODEL_DIR|scratch --strategy S
--labels LABELS``:

1. checks the initial model (crop geometry, template, classes, architecture)
   before any work;
2. reads the label source for the selected T1w images (a label dataset with
   masks for none, some or all images, a class table, or a folder of rating
   files: :mod:`bids_pcs.io.labels`); images with neither a mask nor a class
   are skipped with a warning (the run fails only when no image is labelled);
   images without a mask train the classification only;
3. preprocesses the labelled images whose crops are missing (the participant
   level's API); images that fail registration QC are skipped and logged;
4. builds both crops of every image with their targets on the crop grid
   (:mod:`bids_pcs.finetuning.data`), splits *participants* into training and
   validation parts (``[finetune] validation_fraction``, seeded by ``--seed``);
5. fine-tunes (:func:`bids_pcs.finetuning.finetune`), scoring the validation
   part after every epoch and keeping the best epoch;
6. writes ``OUTPUT_DIR/models/<name>/`` (default ``finetune-<method>-<strategy>``):
   ``model.safetensors``, ``model.json``, ``training_log.tsv``,
   ``loss_curve.png`` and ``validation_curve.png``.

Checkpoints go to ``WORK_DIR/finetune/<name>/`` so that ``--resume`` continues
an interrupted run (SIGTERM saves one at the next step and exits 143).

Usage::

    run(settings.replace(run={"init": "scratch", "labels": "/data/derivatives/pcs-labels"},
                         finetune={"strategy": "top"}))
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch

from bids_pcs.config import Settings
from bids_pcs.errors import InputDataError
from bids_pcs.finetuning import (
    SCRATCH,
    default_model_name,
    finetune,
    get_strategy,
    load_labelled_crops,
    open_init,
    split_by_participant,
)
from bids_pcs.levels.training_inputs import collect_labelled
from bids_pcs.training.distributed import DistContext, distributed_run

LOGGER = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    """Fine-tune with ``settings.finetune.strategy`` from ``settings.run.init``; write the model."""
    with distributed_run(settings.run.device) as (context, device):
        _finetune(settings, context, device)


def model_dir_of(settings: Settings, init_method: str) -> Path:
    """``OUTPUT_DIR/models/<name>`` of this run."""
    return Path(settings.run.output_dir) / "models" / default_model_name(settings, init_method)


def _finetune(settings: Settings, context: DistContext, device: torch.device) -> None:
    run_settings = settings.run
    if not run_settings.init:
        raise InputDataError("finetune needs --init MODEL_DIR (a pre-trained model) or "
                             "--init scratch.")
    if not run_settings.labels:
        raise InputDataError("finetune needs --labels LABELS (a PCS label dataset, a class "
                             "table or a folder of rating files).")
    get_strategy(settings.finetune.strategy, settings.finetune)  # refuse a bad name early
    # read and checked once, before any work; the same weights seed the network
    init = open_init(settings, run_settings.init)
    method = SCRATCH if init is None else str(init.card.get("method") or "unknown")
    model_dir = model_dir_of(settings, method)
    checkpoint_dir = (Path(run_settings.work_dir) / "finetune" / model_dir.name
                      if run_settings.work_dir else model_dir / ".checkpoint")

    pairs, skipped = collect_labelled(settings, context)
    labelled = load_labelled_crops(settings, pairs)
    train, validation = split_by_participant(labelled, settings.finetune.validation_fraction,
                                             seed=run_settings.seed)
    LOGGER.info("Fine-tuning %s (init %s) on %d participants, validating on %d.",
                settings.finetune.strategy, method, len(train.participants),
                len(validation.participants) if validation is not None else 0)
    result = finetune(
        settings, train, validation, init if init is not None else SCRATCH,
        model_dir=model_dir,
        checkpoint_dir=checkpoint_dir, device=device, context=context,
        data_summary={"dataset": Path(run_settings.bids_dir).name,
                      "labels_dataset": Path(run_settings.labels).name,
                      "right_mirrored": settings.crop.mirror_right,
                      "split": {"unit": "participant",
                                "validation_fraction": settings.finetune.validation_fraction,
                                "seed": run_settings.seed},
                      "skipped": skipped},
    )
    if not context.is_main:
        return
    if checkpoint_dir.parent == model_dir:
        # without a work directory the checkpoint only served this run
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    scores = ", ".join(f"{k.removeprefix('val_')} {v:.3f}" for k, v in result.metrics.items()
                       if k in ("val_dice", "val_presence_balanced_accuracy", "val_score")
                       and v is not None)  # None: no validation crop had a mask or a class
    LOGGER.info("Fine-tuned model written to %s (%s trainable parameters%s).", model_dir,
                f"{result.strategy['trainable_parameters']:,}",
                f"; validation at the kept epoch: {scores}" if scores else "")
