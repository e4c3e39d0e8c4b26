"""The supervised objective of fine-tuning: PCS segmentation + PCS classification.

Per crop the targets are the hemisphere's PCS mask on the crop grid
(``"segmentation"``, (N, X, Y, Z), 0/1) and its class index (``"classification"``,
0 absent, 1 present, 2 prominent).  The loss is

    segmentation_weight x L_seg + classification_weight x CE(class logits, class)

with ``L_seg`` MONAI's ``DiceCELoss`` (``dice_ce``) or ``DiceFocalLoss``
(``dice_focal``) on the two voxel logits (softmax, one-hot target).  The Dice
term ignores the background channel and is computed over the whole batch, so
a crop without any PCS voxel (an absent sulcus) still gives a defined loss
that pushes its PCS probabilities down.

Labels without masks (``has_mask`` 0, see :mod:`bids_pcs.finetuning.data`)
switch the segmentation loss off per crop: ``L_seg`` is computed over the
crops of the batch that have a mask, and a batch without any contributes 0
(and no gradient) to it; likewise the cross-entropy runs over the crops whose
class is known (target :data:`~bids_pcs.finetuning.data.NO_CLASS` elsewhere).
Each term covers only the crops it applies to, so the share of masked crops
in a batch does not dilute either loss.

Usage::

    objective = SupervisedObjective(strategy, settings.finetune)
    objective.setup(network)
    objective.losses(batch, network, "main")  # {"loss", "segmentation", "classification"}
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from monai.losses import DiceCELoss, DiceFocalLoss
from torch import nn

from bids_pcs.config import FinetuneSettings, RecipeError
from bids_pcs.finetuning.data import NO_CLASS
from bids_pcs.finetuning.frozen_outputs import network_outputs
from bids_pcs.finetuning.strategies import Strategy, frozen_modules
from bids_pcs.training.objective import Batch, Objective

SEGMENTATION_LOSSES: tuple[str, ...] = ("dice_ce", "dice_focal")


class SupervisedObjective(Objective):
    """Weighted segmentation + classification loss; trains what ``strategy`` chooses.

    Args:
        strategy: the fine-tuning strategy (its rule is this objective's
            :meth:`trainable_names`, which the engine applies).
        settings: ``settings.finetune`` (loss kind and weights).

    Example::

        objective = SupervisedObjective(get_strategy("top"), settings.finetune)
        objective.setup(network)
        engine = Engine(network, objective, config)   # trains the heads only
    """

    defaults: ClassVar[dict[str, Any]] = {
        "segmentation_loss": "dice_ce",
        "segmentation_weight": 0.8,
        "classification_weight": 0.2,
    }

    def __init__(self, strategy: Strategy, settings: FinetuneSettings | None = None) -> None:
        settings = settings or FinetuneSettings()
        super().__init__({key: getattr(settings, key) for key in self.defaults})
        # the engine refuses to resume a checkpoint of another objective name:
        # naming the strategy here keeps a LoRA checkpoint from seeding "full"
        self.name = f"finetune-{strategy.name}"
        self.strategy = strategy
        kind = self.options["segmentation_loss"]
        if kind not in SEGMENTATION_LOSSES:
            raise RecipeError(f"[finetune] segmentation_loss {kind!r} is unknown; use one of "
                              f"{', '.join(SEGMENTATION_LOSSES)}.")
        for key in ("segmentation_weight", "classification_weight"):
            if float(self.options[key]) < 0:
                raise RecipeError(f"[finetune] {key} must not be negative.")
        if float(self.options["segmentation_weight"]) + float(
                self.options["classification_weight"]) <= 0:
            raise RecipeError("[finetune] segmentation_weight and classification_weight "
                              "cannot both be 0.")
        self._frozen: list[str] = []

    def setup(self, network: nn.Module) -> None:
        common = {"to_onehot_y": True, "softmax": True, "include_background": False,
                  "batch": True}
        if self.options["segmentation_loss"] == "dice_ce":
            self.segmentation_loss = DiceCELoss(**common)
        else:
            self.segmentation_loss = DiceFocalLoss(**common)
        self.classification_loss = nn.CrossEntropyLoss()
        self._frozen = frozen_modules(network, self.trainable_names(network))

    def trainable_names(self, network: nn.Module) -> list[str]:
        return self.strategy.trainable_names(network)

    def losses(self, batch: Batch, network: nn.Module, phase: str) -> dict[str, torch.Tensor]:
        if network.training:
            # the engine puts the whole network in train mode at every epoch;
            # frozen parts must compute exactly what they compute at inference
            for name in self._frozen:
                network.get_submodule(name).eval()
        # top/decoder tuning: the batch may carry the frozen part's kept outputs
        out = network_outputs(network, batch)
        logits = out["segmentation"].float()
        has_mask = batch["has_mask"].bool() if "has_mask" in batch else torch.ones(
            logits.shape[0], dtype=torch.bool, device=logits.device)
        if bool(has_mask.any()):
            target = batch["segmentation"][has_mask].long().unsqueeze(1)
            segmentation = self.segmentation_loss(logits[has_mask], target)
        else:
            # zero, yet tied to the graph: every process of a DDP run reduces the same
            # parameters whichever of its batches have masks
            segmentation = logits.sum() * 0.0
        class_logits = out["classification"].float()
        class_target = batch["classification"].long()
        known = class_target != NO_CLASS
        if bool(known.any()):
            classification = self.classification_loss(class_logits[known], class_target[known])
        else:
            classification = class_logits.sum() * 0.0
        loss = (float(self.options["segmentation_weight"]) * segmentation
                + float(self.options["classification_weight"]) * classification)
        return {"loss": loss, "segmentation": segmentation.detach(),
                "classification": classification.detach()}

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        return []  # the losses have no parameters; only the network trains

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "strategy": self.strategy.name,
                "segmentation_target": "the hemisphere's PCS mask on the crop grid",
                "classification_target": "the hemisphere's class index"}
