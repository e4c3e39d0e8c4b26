"""The model of ``participant --model DIR``: checked before any work, loaded without code.

:func:`check_inference_model` runs before preprocessing, so a wrong model costs
no registration: the card must be a bids_pcs model card, the model must be
fine-tuned (a pre-trained model's heads were never trained), its template, crop
geometry and class list must be the run's (:func:`~bids_pcs.models.model_io.check_model_fits`),
and its weights must match the SHA-256 recorded in the card. Weights are read
from safetensors only (:mod:`bids_pcs.models.model_io`): loading never runs code.

Usage::

    card = check_inference_model(settings, "/out/models/finetune-scratch-full")
    model = load_inference_model(settings, "/out/models/finetune-scratch-full", device)
    model.network, model.provenance    # provenance: the "Model" entry of every sidecar
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bids_pcs.config import Settings
from bids_pcs.errors import ModelFileError
from bids_pcs.models.model_io import (
    CARD_NAME,
    check_model_fits,
    load_model,
    read_model_card,
)
from bids_pcs.models.network import PcsNetwork


@dataclass(frozen=True)
class InferenceModel:
    """A loaded fine-tuned network and what the derivatives record about it.

    Args:
        network: the network, eval mode, on its device.
        card: its ``model.json``.
        model_dir: where it was loaded from (``None`` for an in-memory network).
    """

    network: PcsNetwork
    card: dict[str, Any]
    model_dir: Path | None = None

    @property
    def provenance(self) -> dict[str, Any]:
        """The ``Model`` entry of the sidecars: name, stage, method, strategy, sha256, version."""
        return model_provenance(self.card, self.model_dir)


def model_provenance(card: dict[str, Any], model_dir: str | os.PathLike[str] | None,
                     ) -> dict[str, Any]:
    """``{name, stage, method, strategy, sha256, version}`` of a model card."""
    name = Path(model_dir).name if model_dir is not None else card.get("name", "in-memory")
    return {
        "name": name,
        "stage": card.get("stage"),
        "method": card.get("method"),
        "strategy": card.get("strategy"),
        "sha256": (card.get("weights") or {}).get("sha256"),
        "version": (card.get("app") or {}).get("version"),
    }


def check_inference_model(settings: Settings, model_dir: str | os.PathLike[str],
                          ) -> dict[str, Any]:
    """Refuse, in one sentence, a model that cannot serve this run; return its card.

    Raises:
        ModelFileError: no model there, a pre-trained (not fine-tuned) model, one
            made with another template, crop geometry or class list, or weights
            that do not match their recorded SHA-256.
    """
    model_dir = Path(model_dir)
    card = read_model_card(model_dir)
    if card.get("stage") != "finetune":
        raise ModelFileError(
            f"The model in {model_dir} is a {card.get('stage')!r} model, not a fine-tuned one "
            "(its segmentation and classification heads are untrained); fine-tune it first "
            "(bids_pcs ... finetune --init) and pass that model to --model.")
    check_model_fits(card, settings, model_dir)
    # a strict load now (digest, architecture against weights, class list)
    # costs a second and spares a run that would fail after preprocessing
    network, _ = load_model(model_dir, torch.device("cpu"))
    _check_classes(network, settings, model_dir)
    return card


def load_inference_model(settings: Settings, model_dir: str | os.PathLike[str],
                         device: torch.device | None = None) -> InferenceModel:
    """Check (:func:`check_inference_model`) and load a fine-tuned model onto ``device``."""
    model_dir = Path(model_dir)
    check_inference_model(settings, model_dir)
    network, card = load_model(model_dir, device or torch.device("cpu"))
    return InferenceModel(network=network, card=card, model_dir=model_dir)


def _check_classes(network: PcsNetwork, settings: Settings, model_dir: Path) -> None:
    if tuple(network.spec.classification_classes) != tuple(settings.labels.classes):
        raise ModelFileError(
            f"The network in {model_dir / CARD_NAME} predicts the classes "
            f"{list(network.spec.classification_classes)}, not this run's "
            f"{list(settings.labels.classes)}; use the recipe it was trained with.")
