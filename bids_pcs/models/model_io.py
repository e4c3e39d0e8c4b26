"""Model directories: ``model.safetensors`` (weights only) + ``model.json`` (everything else).

``model.json`` records the app version, the architecture and its
hyper-parameters, the stage (``pretrain`` / ``finetune``), method and strategy,
the template, crop geometry, intensity normalisation and label map the weights
expect, a summary of the training data, metrics, and the SHA-256 of the weights.
Loading checks that digest and that the weights file is safetensors; nothing in
a model directory can run code.

Usage::

    card = model_card(settings, network, stage="pretrain", method="reconstruction")
    save_model(out / "models" / "pretrain-reconstruction", network, card)

    network, card = load_model(model_dir)                  # a complete model
    report = load_pretrained(new_network, model_dir)       # encoder + decoder into a new one

    model = read_model(model_dir)     # digest checked and weights read once, then reused:
    network, card = load_model(model)  # no second hash
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bids_pcs import APP_NAME, CODE_URL, __version__
from bids_pcs.config import Settings
from bids_pcs.errors import ModelFileError
from bids_pcs.io.atomic import write_json
from bids_pcs.models.card import CARD_NAME, FORMAT, WEIGHTS_NAME, model_dir_of, read_model_card
from bids_pcs.models.network import (
    NetworkSpec,
    PcsNetwork,
    architecture_keys,
    build_network_from_spec,
    model_settings_of,
)
from bids_pcs.models.recipe import card_recipe, conflict_sentence, first_conflict
from bids_pcs.models.tensor_file import read_tensors, verify_tensor_file, write_tensors

__all__ = ["CARD_NAME", "FORMAT", "WEIGHTS_NAME", "STAGES", "TRANSFERABLE_PARTS",
           "TransferReport", "VerifiedModel", "check_model_fits", "load_model",
           "load_pretrained", "load_weights", "model_card", "read_model", "read_model_card",
           "save_model", "verify_weights"]
STAGES = ("pretrain", "finetune")
TRANSFERABLE_PARTS: tuple[str, ...] = ("encoder", "decoder")


def model_card(
    settings: Settings,
    network: PcsNetwork,
    *,
    stage: str,
    method: str | None = None,
    strategy: str | None = None,
    objective: dict[str, Any] | None = None,
    training_data: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The content of ``model.json`` (without the weights' digest, added on save).

    Args:
        settings: the run's settings (template, crop, intensity, labels, model and
            the stage's training section are copied from them).
        network: the trained network (its spec and parameter counts).
        stage: ``"pretrain"`` or ``"finetune"``.
        method: pre-training method (for a fine-tuned model: the one it started from,
            or ``"scratch"``).
        strategy: fine-tuning strategy (``None`` for a pre-trained model).
        objective: the objective's summary (name, options).
        training_data: what the model was trained on (counts, participants).
        training: how it was trained (epochs, steps, seconds, device, world size).
        metrics: final losses or validation metrics.
        extra: anything else a stage records (e.g. ``{"lora": {...}}``).
    """
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    plain = settings.to_dict()
    crop = {**plain["crop"], "shape_vox": list(settings.crop.shape_vox)}
    card = {
        "format": FORMAT,
        "app": {"name": APP_NAME, "version": __version__, "code_url": CODE_URL},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "stage": stage,
        "method": method,
        "strategy": strategy,
        "architecture": network.spec.to_dict(),
        # only the settings of this architecture (a CNN's card has no Swin heads)
        "hyperparameters": {"model": model_settings_of(plain["model"]), stage: plain[stage]},
        "recipe": card_recipe(plain, settings.run.recipe),
        "objective": objective or {},
        "template": plain["template"],
        "crop": crop,
        "intensity": plain["intensity"],
        "labels": plain["labels"],
        "parameter_groups": {group: sum(dict(network.named_parameters())[n].numel()
                                        for n in names)
                             for group, names in network.parameter_groups().items()},
        "training_data": training_data or {},
        "training": training or {},
        "metrics": metrics or {},
    }
    if extra:
        card.update(extra)
    return card


def save_model(model_dir: str | os.PathLike[str], network: torch.nn.Module,
               card: dict[str, Any]) -> Path:
    """Write the weights, then ``model.json`` with their SHA-256 (each file atomically).

    Args:
        model_dir: the model directory (created when missing).
        network: the network whose ``state_dict`` is saved (weights only).
        card: from :func:`model_card`.

    Returns:
        The model directory.
    """
    model_dir = Path(model_dir)
    tensors = {k: v for k, v in network.state_dict().items()}
    digest = write_tensors(model_dir / WEIGHTS_NAME, tensors,
                           metadata={"format": FORMAT, "stage": str(card.get("stage"))})
    # the card comes last: a directory with a card always has the matching weights
    write_json(model_dir / CARD_NAME,
               {**card, "weights": {"file": WEIGHTS_NAME, "sha256": digest,
                                    "tensors": len(tensors)}})
    return model_dir


def verify_weights(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The card of ``model_dir`` once its weights are checked (digest, format), not loaded.

    For the checks a level makes before any work: a tampered or foreign
    weights file is refused in seconds, not after hours of preprocessing.
    """
    card = read_model_card(model_dir)
    name = Path(card["weights"].get("file", WEIGHTS_NAME)).name  # never leave the directory
    verify_tensor_file(Path(model_dir) / name, card["weights"]["sha256"])
    return card


@dataclass(frozen=True)
class VerifiedModel:
    """A model directory read once: its card, and its weights after their SHA-256 matched.

    Pass it wherever a model directory is expected (:func:`load_model`,
    :func:`load_pretrained`) so that a run hashes and reads the weights once.

    Args:
        model_dir: the model folder.
        card: its ``model.json``.
        tensors: the weights, by name, on the CPU.
    """

    model_dir: Path
    card: dict[str, Any]
    tensors: dict[str, torch.Tensor]


def read_model(model: str | os.PathLike[str] | VerifiedModel) -> VerifiedModel:
    """The card and the verified weights of a model folder (or of its ``model.json``)."""
    if isinstance(model, VerifiedModel):
        return model
    model_dir = model_dir_of(model)
    card = read_model_card(model_dir)
    weights = card["weights"]
    name = Path(weights.get("file", WEIGHTS_NAME)).name  # never leave the model directory
    tensors = read_tensors(model_dir / name, weights["sha256"], "cpu")
    return VerifiedModel(model_dir=model_dir, card=card, tensors=tensors)


def load_weights(model: str | os.PathLike[str] | VerifiedModel,
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified weights and the card of a model."""
    verified = read_model(model)
    return verified.tensors, verified.card


def load_model(model: str | os.PathLike[str] | VerifiedModel,
               device: str | torch.device = "cpu") -> tuple[PcsNetwork, dict[str, Any]]:
    """Rebuild the network of a model and load every weight (strictly).

    Args:
        model: a model folder, its ``model.json``, or a :class:`VerifiedModel`.
        device: where the network goes.

    Returns:
        The network in eval mode on ``device`` and its card.
    """
    verified = read_model(model)
    card = verified.card
    try:
        network = build_network_from_spec(card["architecture"])
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{verified.model_dir / CARD_NAME} does not describe a known "
                             f"architecture ({exc}).") from exc
    _load_strict(network, verified.tensors, verified.model_dir)
    return network.to(device).eval(), card


@dataclass
class TransferReport:
    """What :func:`load_pretrained` copied.

    Args:
        matched: parameter and buffer names copied into the network.
        skipped: names of the network left as they were (outside ``parts``).
        source: the model directory the weights came from.
    """

    matched: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    source: str = ""

    def matched_in(self, part: str) -> int:
        return sum(1 for name in self.matched if name.startswith(f"{part}."))


def load_pretrained(network: PcsNetwork, model_dir: str | os.PathLike[str] | VerifiedModel,
                    parts: Sequence[str] = TRANSFERABLE_PARTS) -> TransferReport:
    """Copy the ``parts`` (default encoder and decoder) of a saved model into ``network``.

    Every tensor of those parts must be present with the same shape, otherwise
    nothing is copied and :class:`ModelFileError` says why; the architecture
    hyper-parameters must agree as well (the crop shape may differ only where
    the architecture allows, so it is not compared here).  The saved model's
    :class:`~bids_pcs.models.network.InputConditioning` (input scaling,
    clean-image condition) is adopted first: how the backbone reads its input
    is part of what transfers.

    Args:
        network: a freshly built network (for fine-tuning).
        model_dir: a pre-trained (or fine-tuned) model directory, or a
            :class:`VerifiedModel` already read.
        parts: top-level submodules to copy.

    Returns:
        A :class:`TransferReport`.
    """
    verified = read_model(model_dir)
    model_dir, tensors, card = verified.model_dir, verified.tensors, verified.card
    saved = NetworkSpec.from_dict(card["architecture"])
    mine = network.spec
    for key in ("architecture", "feature_size", *architecture_keys(saved.architecture)):
        if getattr(saved, key) != getattr(mine, key):
            raise ModelFileError(
                f"The model in {model_dir} has {key} {getattr(saved, key)!r} but this run's "
                f"network has {getattr(mine, key)!r}; use a recipe with the same [model] section."
            )
    network.set_input_conditioning(saved.input_conditioning)
    prefixes = tuple(f"{part}." for part in parts)
    own = network.state_dict()
    wanted = [name for name in own if name.startswith(prefixes)]
    missing = [name for name in wanted if name not in tensors]
    wrong = [name for name in wanted if name in tensors and tensors[name].shape != own[name].shape]
    if missing or wrong:
        example = (missing or wrong)[0]
        raise ModelFileError(
            f"The model in {model_dir} lacks or mis-shapes {len(missing) + len(wrong)} of the "
            f"{len(wanted)} {'/'.join(parts)} tensors (e.g. {example}); it was not made for "
            "this network."
        )
    network.load_state_dict({name: tensors[name] for name in wanted}, strict=False)
    return TransferReport(matched=wanted, skipped=[n for n in own if n not in wanted],
                          source=str(model_dir))


def check_model_fits(card: dict[str, Any], settings: Settings, model_dir: str | os.PathLike[str],
                     ) -> None:
    """Refuse a model whose template, crop geometry, intensity or classes differ from the run's.

    The error is one sentence naming the setting and both values
    (:func:`bids_pcs.models.recipe.conflict_sentence`).
    """
    conflict = first_conflict(card, settings.to_dict())
    if conflict is not None:
        raise ModelFileError(conflict_sentence(conflict, model_dir))


def _load_strict(network: torch.nn.Module, tensors: dict[str, torch.Tensor],
                 model_dir: Path) -> None:
    own = network.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    wrong = sorted(k for k in set(own) & set(tensors) if own[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        example = (missing or unexpected or wrong)[0]
        raise ModelFileError(
            f"The weights in {model_dir} do not fit the architecture in its {CARD_NAME} "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} mis-shaped, "
            f"e.g. {example})."
        )
    network.load_state_dict(tensors, strict=True)
