"""What a training run did, as recorded under ``training`` in model.json."""

from __future__ import annotations

from typing import Any

import torch

from bids_pcs.training.distributed import DistContext
from bids_pcs.training.engine import TrainConfig, TrainResult

# file names inside a model directory, shared by pre-training and fine-tuning
LOG_NAME = "training_log.tsv"
CURVE_NAME = "loss_curve.png"


def training_summary(result: TrainResult, config: TrainConfig, context: DistContext,
                     device: torch.device) -> dict[str, Any]:
    """Epochs, steps, batch geometry, device, speed and memory of one training run."""
    return {
        "epochs": result.epochs_completed,
        "best_epoch": result.best_epoch + 1 if result.best_epoch is not None else None,
        "optimizer_steps": result.global_step // config.accumulate_steps,
        "batch_size_per_process": config.batch_size,
        "accumulate_steps": config.accumulate_steps,
        "processes": context.world_size,
        "device": device.type,
        "mixed_precision": bool(config.mixed_precision and device.type == "cuda"),
        "seed": config.seed,
        "optimizer": {"name": "AdamW", "learning_rate": config.learning_rate,
                      "weight_decay": config.weight_decay,
                      "schedule": result.schedule or {"kind": config.lr_schedule}},
        "seconds_this_run": round(result.seconds, 2),
        "crops_per_second": round(result.crops_per_second, 3),
        "peak_memory_mb": round(result.peak_memory_mb, 1),
        "trainable_parameters": result.trainable_parameters,
        "total_parameters": result.total_parameters,
        "log": LOG_NAME,
        "loss_curve": CURVE_NAME,
    }
