"""Fine-tune a network on labelled crops: the Python API behind the ``finetune`` level.

:func:`finetune` takes crops already split (the level splits by participant;
the study and the demo bring their own splits), builds the network from
scratch or from a pre-trained model, lets the strategy choose what trains,
trains on the one engine with a per-epoch validation, keeps the best epoch,
merges LoRA adapters, and writes the model directory when asked.

Usage::

    train, validation = split_by_participant(load_labelled_crops(settings, pairs), 0.2)
    result = finetune(settings, train, validation, init="/out/models/pretrain-contrastive",
                      model_dir="/out/models/finetune-contrastive-lora")
    result.network          # a plain PcsNetwork (eval mode, on the CPU)
    result.metrics          # {"val_dice": ..., "val_presence_balanced_accuracy": ..., ...}
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bids_pcs.config import FinetuneSettings, RecipeError, Settings
from bids_pcs.errors import ModelFileError
from bids_pcs.finetuning.data import LabelledCrops
from bids_pcs.finetuning.evaluation import SCORE_DEFINITION, make_evaluator
from bids_pcs.finetuning.frozen_outputs import cache_frozen_outputs, frozen_part
from bids_pcs.finetuning.objective import SupervisedObjective
from bids_pcs.finetuning.plots import plot_validation_curve
from bids_pcs.finetuning.strategies import get_strategy
from bids_pcs.models.model_io import (
    VerifiedModel,
    check_model_fits,
    load_pretrained,
    model_card,
    read_model,
    read_model_card,
    save_model,
)
from bids_pcs.models.network import PcsNetwork, architecture_keys, build_network, network_spec
from bids_pcs.models.tensor_file import read_tensors
from bids_pcs.training.data import CropSet
from bids_pcs.training.distributed import DistContext
from bids_pcs.training.engine import Engine, TrainConfig, TrainingInterruptedError, TrainResult
from bids_pcs.training.plots import plot_loss_curve
from bids_pcs.training.schedule import check_schedule
from bids_pcs.training.summary import CURVE_NAME, LOG_NAME, training_summary

LOGGER = logging.getLogger(__name__)
SCRATCH = "scratch"
VALIDATION_CURVE_NAME = "validation_curve.png"
MONITOR = "val_score"
BEST_NAME = "best.safetensors"  # written by the engine beside its checkpoint


@dataclass
class InitSource:
    """What a fine-tuned network starts from.

    Args:
        method: ``"scratch"`` or the pre-training method of the model (its card's ``method``).
        model_dir: the model directory, ``None`` from scratch.
        card: that model's ``model.json``.
        transferred: names of the tensors copied from it (encoder and decoder).
    """

    method: str = SCRATCH
    model_dir: str | None = None
    card: dict[str, Any] | None = None
    transferred: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What model.json records about the initialisation."""
        if self.card is None:
            return {"method": SCRATCH, "seeded_by": "run.seed"}
        weights = self.card.get("weights", {})
        return {"method": self.method, "model_dir": self.model_dir,
                "stage": self.card.get("stage"), "strategy": self.card.get("strategy"),
                "sha256": weights.get("sha256"), "app_version":
                (self.card.get("app") or {}).get("version"),
                "transferred_tensors": len(self.transferred),
                "transferred_parts": ["encoder", "decoder"]}


@dataclass
class FinetuneResult:
    """What :func:`finetune` produced.

    Args:
        network: the fine-tuned plain network (best epoch, adapters merged), eval mode, CPU.
        card: its ``model.json`` content (without the weights' digest unless saved).
        train: the engine's :class:`TrainResult` (history, timing, memory).
        metrics: validation scores at the best epoch (empty without validation).
        strategy: the strategy's summary (definition, parameter counts).
        init: where the weights came from.
        model_dir: where the model was written, or ``None``.
    """

    network: PcsNetwork
    card: dict[str, Any]
    train: TrainResult
    metrics: dict[str, float]
    strategy: dict[str, Any]
    init: InitSource
    model_dir: Path | None = None


def open_init(settings: Settings, init: str | os.PathLike[str] | VerifiedModel | None,
              ) -> VerifiedModel | None:
    """Read ``init`` once (digest checked, weights in memory) and check that it fits the run.

    Returns:
        ``None`` for ``"scratch"``, else the model, to hand to :func:`finetune`
        so that its weights are neither hashed nor read again.

    Raises:
        ModelFileError: no model there, or one made with another template, crop
            geometry, class list or architecture.
    """
    if init is None or (not isinstance(init, VerifiedModel) and str(init) in ("", SCRATCH)):
        return None
    model = read_model(init)
    card, where = model.card, model.model_dir
    check_model_fits(card, settings, where)
    mine = network_spec(settings.model, settings.crop.shape_vox, settings.labels.classes)
    theirs = card.get("architecture") or {}
    for key in ("architecture", "feature_size", *architecture_keys(mine.architecture)):
        value = getattr(mine, key)
        if _plain(theirs.get(key)) != _plain(value):
            raise ModelFileError(
                f"The model in {where} has [model] {key} {theirs.get(key)!r} but this run's "
                f"network has {_plain(value)!r}; use the recipe the model was pre-trained with.")
    return model


def check_init(settings: Settings, init: str | os.PathLike[str] | VerifiedModel | None) -> str:
    """Check ``init`` before any work and return its method name (``"scratch"`` or the card's)."""
    model = open_init(settings, init)
    return SCRATCH if model is None else str(model.card.get("method") or "unknown")


def check_learning_rates(ft: FinetuneSettings) -> None:
    """Refuse ``[finetune] learning_rates`` naming an unknown strategy or a rate <= 0.

    Raises:
        RecipeError: one sentence naming the key and the valid strategies.
    """
    from bids_pcs.finetuning.strategies import available_strategies

    check_schedule("[finetune]", ft.lr_schedule, ft.warmup_fraction)
    known = available_strategies()
    for strategy, rate in {**ft.learning_rates, "learning_rate": ft.learning_rate}.items():
        if strategy != "learning_rate" and strategy not in known:
            raise RecipeError(f"[finetune.learning_rates] has the unknown strategy {strategy!r}; "
                              f"use {', '.join(known)}.")
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not rate > 0:
            raise RecipeError(f"[finetune] learning rate of {strategy} must be a positive "
                              f"number, not {rate!r}.")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def init_network(settings: Settings,
                 init: str | os.PathLike[str] | VerifiedModel | None = SCRATCH,
                 ) -> tuple[PcsNetwork, InitSource]:
    """A new network seeded with ``settings.run.seed``, its encoder and decoder from ``init``.

    Args:
        settings: the run's settings (model, crop, template, labels).
        init: ``"scratch"``, a model directory (pre-trained, or fine-tuned), or
            the model :func:`open_init` returned (then it is not read again).

    Raises:
        ModelFileError: the model is missing, tampered with, made with another
            template, crop geometry, class list or architecture, or lacks any
            encoder or decoder tensor.
    """
    torch.manual_seed(settings.run.seed)  # identical initial weights on every process
    network = build_network(settings.model, settings.crop.shape_vox, settings.labels.classes)
    model = open_init(settings, init)
    if model is None:
        return network, InitSource()
    model_dir, card = model.model_dir, model.card
    report = load_pretrained(network, model)
    if report.matched_in("encoder") == 0:
        raise ModelFileError(f"The model in {model_dir} holds no encoder weights; give a "
                             "pre-trained model directory.")
    return network, InitSource(method=str(card.get("method") or "unknown"),
                               model_dir=str(model_dir.absolute()), card=card,
                               transferred=report.matched)


def init_heads_from_prior(network: PcsNetwork, train: LabelledCrops) -> dict[str, Any]:
    """Start both heads' output biases at the training data's priors (never transferred).

    The PCS fills well under 1 % of a crop: from a zero bias the voxel logits
    first spend hundreds of optimiser steps learning "mostly background".
    Setting the PCS logit's bias to ``log(pi / (1 - pi))`` (``pi`` the PCS
    voxel fraction of the training masks, crops without a mask left out; Lin et
    al. 2017, focal loss) and the class logits' to the log frequencies of the
    known classes (add-one smoothed) starts the
    heads at the prior, so the first steps already learn *where* the sulcus is.

    Returns:
        The priors used, for model.json.
    """
    has_mask = train.crops.targets["has_mask"].bool()
    masks = train.crops.targets["segmentation"][has_mask]
    # without any mask there is no prior to learn: the PCS logit starts at the floor
    fraction = float(masks.float().mean()) if has_mask.any() else 0.0
    fraction = min(max(fraction, 1e-4), 0.5)
    classes = train.crops.targets["classification"]
    counts = torch.bincount(classes[classes >= 0],
                            minlength=len(network.spec.classification_classes)).double() + 1
    frequencies = counts / counts.sum()
    segmentation = network.heads["segmentation"].conv.conv
    classification = network.heads["classification"].mlp[-1]
    with torch.no_grad():
        segmentation.bias.zero_()
        segmentation.bias[1] = math.log(fraction / (1 - fraction))
        classification.bias.copy_(frequencies.log().to(classification.bias.dtype))
    return {"pcs_voxel_fraction": fraction,
            "class_frequencies": [round(float(f), 6) for f in frequencies]}


def default_model_name(settings: Settings, init_method: str) -> str:
    """``finetune-<init method or scratch>-<strategy>``, unless ``--model-name`` was given."""
    return settings.run.model_name or f"finetune-{init_method}-{settings.finetune.strategy}"


def finetune(settings: Settings, train: LabelledCrops, validation: LabelledCrops | None = None,
             init: str | os.PathLike[str] | VerifiedModel | None = SCRATCH, *,
             model_dir: str | os.PathLike[str] | None = None,
             checkpoint_dir: str | os.PathLike[str] | None = None,
             device: torch.device | None = None, context: DistContext | None = None,
             progress: bool = True, steps_per_epoch: int | None = None,
             data_summary: dict[str, Any] | None = None) -> FinetuneResult:
    """Fine-tune with ``settings.finetune`` (strategy, epochs, loss) on ``train``.

    Args:
        settings: the run's settings; ``finetune`` and ``run.seed``/``run.resume`` are read.
        train: training crops with targets.
        validation: crops scored after every epoch; the epoch with the best
            ``val_score`` is kept.  ``None``: the last epoch is kept.
        init: ``"scratch"``, a pre-trained model directory, or :func:`open_init`'s model.
        model_dir: write ``model.safetensors``, ``model.json``, the log and
            the curves there (main process only); ``None``: write nothing.
        checkpoint_dir: per-epoch checkpoints (for ``--resume`` and SIGTERM).
        device: where to train (default CPU).
        context: this process's place under ``torchrun``.
        progress: show a progress bar.
        steps_per_epoch: cap on batches per epoch (quick checks).
        data_summary: extra fields for model.json's ``training_data``.

    Raises:
        TrainingInterruptedError: a signal stopped training (checkpoint saved).
    """
    context = context or DistContext()
    device = device or torch.device("cpu")
    ft = settings.finetune
    check_learning_rates(ft)
    strategy = get_strategy(ft.strategy, ft)
    network, source = init_network(settings, init)
    head_prior = init_heads_from_prior(network, train)
    network = strategy.prepare(network)
    objective = SupervisedObjective(strategy, ft)
    objective.setup(network)
    strategy_summary = strategy.summary(network)
    model_dir = Path(model_dir) if model_dir is not None else None
    config = TrainConfig(
        epochs=ft.epochs, batch_size=ft.batch_size, accumulate_steps=ft.accumulate_steps,
        learning_rate=ft.learning_rate_for(ft.strategy), lr_schedule=ft.lr_schedule,
        warmup_fraction=ft.warmup_fraction, weight_decay=ft.weight_decay, seed=settings.run.seed,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        resume=settings.run.resume, log_tsv=model_dir / LOG_NAME if model_dir else None,
        progress=progress, description=f"finetune {ft.strategy}",
        steps_per_epoch=steps_per_epoch, monitor=MONITOR if validation is not None else None,
        monitor_mode="max",
    )
    LOGGER.info("Fine-tuning (%s from %s) on %d crops of %d participants, validating on %d; "
                "%d of %d parameters train.", ft.strategy, source.method, len(train),
                len(train.participants), len(validation) if validation is not None else 0,
                strategy_summary["trainable_parameters"], strategy_summary["base_parameters"])
    engine = Engine(network, objective, config, device=device, context=context)
    train_crops, validation_crops = _keep_frozen_outputs(
        network, objective, train, validation, settings, device, config.mixed_precision)
    evaluate = (make_evaluator(validation, batch_size=ft.batch_size, device=device,
                               threshold=settings.inference.threshold,
                               crops=validation_crops)
                if validation is not None else None)
    result = engine.fit(train_crops, evaluate=evaluate)
    if result.interrupted:
        raise TrainingInterruptedError(
            f"Fine-tuning stopped by a signal in epoch {result.epochs_completed + 1}; the "
            f"checkpoint in {checkpoint_dir} is saved, rerun with --resume to continue.")
    best_state = result.best_state
    if best_state is None and result.best_epoch is not None and config.checkpoint_dir:
        # resumed after the best epoch: the engine saved its weights beside the checkpoint
        best_file = config.checkpoint_dir / BEST_NAME
        if best_file.is_file():
            best_state = read_tensors(best_file, None)
    if best_state is not None:
        network.load_state_dict(best_state, strict=True)
    plain = strategy.export(network).to("cpu").eval()
    best_metrics = _best_metrics(result)
    card = model_card(
        settings, plain, stage="finetune", method=source.method, strategy=ft.strategy,
        objective=objective.summary(),
        training_data={**train.summary(), **(data_summary or {}),
                       "validation": validation.summary() if validation is not None else None},
        training=training_summary(result, config, context, device),
        metrics=best_metrics,
        extra={"finetuning": {"strategy": strategy_summary, "init": source.summary(),
                              "head_bias_prior": head_prior,
                              "monitor": MONITOR if validation is not None else None,
                              "monitor_definition": (SCORE_DEFINITION if validation is not None
                                                     else "none: the last epoch is kept"),
                              "best_epoch": (result.best_epoch + 1
                                             if result.best_epoch is not None else None)}},
    )
    if model_dir is not None and context.is_main:
        save_model(model_dir, plain, card)
        plot_loss_curve(result.history, model_dir / CURVE_NAME,
                        title=f"fine-tuning: {source.method} / {ft.strategy}")
        if validation is not None:
            plot_validation_curve(result.history, model_dir / VALIDATION_CURVE_NAME,
                                  best_epoch=result.best_epoch,
                                  title=f"validation: {source.method} / {ft.strategy}")
        card = read_model_card(model_dir)
    return FinetuneResult(network=plain, card=card, train=result, metrics=best_metrics,
                          strategy=strategy_summary, init=source, model_dir=model_dir)


def _keep_frozen_outputs(network: PcsNetwork, objective: SupervisedObjective,
                         train: LabelledCrops, validation: LabelledCrops | None,
                         settings: Settings, device: torch.device, mixed_precision: bool,
                         ) -> tuple[CropSet, CropSet | None]:
    """Train and validation crops with the frozen part's outputs where they can be kept.

    Top and decoder tuning (:mod:`bids_pcs.finetuning.frozen_outputs`); the
    crops as they are for full and LoRA tuning, with ``cache_frozen = false``,
    or when the outputs would not fit in memory.
    """
    ft = settings.finetune
    part = (frozen_part(network, objective.trainable_names(network))
            if ft.cache_frozen else None)
    if part is None:
        return train.crops, validation.crops if validation is not None else None
    kept = []
    for labelled in (train, validation):
        cached = None
        if labelled is not None:
            cached = cache_frozen_outputs(network, labelled.crops, part,
                                          batch_size=ft.batch_size, device=device,
                                          mixed_precision=mixed_precision)
        kept.append(cached if cached is not None or labelled is None else labelled.crops)
    return kept[0], kept[1]


def _best_metrics(result: TrainResult) -> dict[str, float]:
    if not result.history:
        return {}
    if result.best_epoch is None:
        row = result.history[-1]
    else:
        row = next((r for r in result.history if r["epoch"] == result.best_epoch + 1),
                   result.history[-1])
    # a score over no crop (e.g. Dice without any mask) is null in model.json, not NaN
    out = {k: None if isinstance(v, float) and math.isnan(v) else v
           for k, v in row.items() if k.startswith("val_")}
    out.update({f"final_train_{k}": v for k, v in result.history[-1].items()
                if k in ("loss", "segmentation", "classification")})
    return out
