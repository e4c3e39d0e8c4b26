"""The model of ``participant --model DIR``: checked before any work, loaded without code.

:func:`load_inference_model` runs before preprocessing, so a wrong model costs
no registration, and its network serves the whole run (the weights are hashed
and read once): the card must be a bids_pcs model card, the model must be
fine-tuned (a pre-trained model's heads were never trained), its template, crop
geometry and class list must be the run's (:func:`~bids_pcs.models.model_io.check_model_fits`),
and its weights must match the SHA-256 recorded in the card. Weights are read
from safetensors only (:mod:`bids_pcs.models.model_io`): loading never runs code.

Usage::

    model = load_inference_model(settings, "/out/models/finetune-scratch-full")  # before work
    results = infer_images(settings, preprocessed, model=model)  # the same network, no reload
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
    VerifiedModel,
    check_model_fits,
    load_model,
    read_model,
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


def load_inference_model(settings: Settings,
                         model: str | os.PathLike[str] | VerifiedModel,
                         device: torch.device | None = None) -> InferenceModel:
    """Check and load a fine-tuned model onto ``device``: one SHA-256, one read of the weights.

    Args:
        settings: the run's settings (template, crop, intensity and classes must
            be the model's).
        model: the model folder, its ``model.json``, or a model already read.
        device: where the network goes (default CPU).

    Raises:
        ModelFileError: no model there, a pre-trained (not fine-tuned) model, one
            made with another template, crop geometry, intensity normalisation or
            class list, or weights that do not match their recorded SHA-256.
    """
    verified = read_model(model)
    card, model_dir = verified.card, verified.model_dir
    if card.get("stage") != "finetune":
        raise ModelFileError(
            f"The model in {model_dir} is a {card.get('stage')!r} model, not a fine-tuned one "
            "(its segmentation and classification heads are untrained); fine-tune it first "
            "(bids_pcs ... finetune --init) and pass that model to --model.")
    check_model_fits(card, settings, model_dir)
    network, _ = load_model(verified, device or torch.device("cpu"))
    _check_classes(network, settings, model_dir)
    return InferenceModel(network=network, card=card, model_dir=model_dir)


def check_inference_model(settings: Settings, model: str | os.PathLike[str],
                          ) -> dict[str, Any]:
    """:func:`load_inference_model`'s checks alone; returns the card (the network is dropped)."""
    return load_inference_model(settings, model).card


def _check_classes(network: PcsNetwork, settings: Settings, model_dir: Path) -> None:
    if tuple(network.spec.classification_classes) != tuple(settings.labels.classes):
        raise ModelFileError(
            f"The network in {model_dir / CARD_NAME} predicts the classes "
            f"{list(network.spec.classification_classes)}, not this run's "
            f"{list(settings.labels.classes)}; use the recipe it was trained with.")
