"""Supervised fine-tuning: strategies (rules choosing trainable parameters), the
multi-task objective, labelled crops on the crop grid, and the :func:`finetune` API.

Usage::

    from bids_pcs.finetuning import finetune, load_labelled_crops, split_by_participant
    labelled = load_labelled_crops(settings, pairs)
    train, validation = split_by_participant(labelled, settings.finetune.validation_fraction,
                                             seed=settings.run.seed)
    result = finetune(settings, train, validation, init="scratch", model_dir=out)
"""

from bids_pcs.finetuning.data import (
    CropInfo,
    LabelledCrops,
    crop_targets,
    load_labelled_crops,
    split_by_participant,
)
from bids_pcs.finetuning.evaluation import CropPredictions, predict_crops, score_predictions
from bids_pcs.finetuning.strategies import available_strategies, get_strategy
from bids_pcs.finetuning.train import (
    SCRATCH,
    FinetuneResult,
    InitSource,
    check_init,
    default_model_name,
    finetune,
    init_network,
    open_init,
)

__all__ = [
    "CropInfo", "CropPredictions", "FinetuneResult", "InitSource", "LabelledCrops",
    "available_strategies", "crop_targets", "default_model_name", "finetune", "get_strategy",
    "SCRATCH", "check_init", "init_network", "load_labelled_crops", "open_init",
    "predict_crops",
    "score_predictions", "split_by_participant",
]
