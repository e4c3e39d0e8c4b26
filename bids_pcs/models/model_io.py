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
from bids_pcs.models.network import NetworkSpec, PcsNetwork, build_network_from_spec
from bids_pcs.models.tensor_file import (
    read_metadata_json,
    read_tensors,
    verify_tensor_file,
    write_tensors,
)

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model.json"
FORMAT = "bids_pcs-model-1"
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
        "hyperparameters": {"model": plain["model"], stage: plain[stage]},
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


def read_model_card(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``model.json`` of ``model_dir``, checked to be a bids_pcs model card."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ModelFileError(f"Model directory {model_dir} does not exist; give the folder that "
                             f"holds {CARD_NAME} and {WEIGHTS_NAME}.")
    card = read_metadata_json(model_dir / CARD_NAME)
    if card.get("format") != FORMAT:
        raise ModelFileError(f"{model_dir / CARD_NAME} is not a bids_pcs model card "
                             f"(format {card.get('format')!r}, expected {FORMAT!r}).")
    weights = card.get("weights", {})
    if not isinstance(weights, dict) or not weights.get("sha256"):
        raise ModelFileError(f"{model_dir / CARD_NAME} records no SHA-256 for the weights; "
                             "the model cannot be verified, so it is refused.")
    return card


def verify_weights(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The card of ``model_dir`` once its weights are checked (digest, format), not loaded.

    For the checks a level makes before any work: a tampered or foreign
    weights file is refused in seconds, not after hours of preprocessing.
    """
    card = read_model_card(model_dir)
    name = Path(card["weights"].get("file", WEIGHTS_NAME)).name  # never leave the directory
    verify_tensor_file(Path(model_dir) / name, card["weights"]["sha256"])
    return card


def load_weights(model_dir: str | os.PathLike[str], device: str | torch.device = "cpu",
                 ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The verified weights and the card of ``model_dir``."""
    card = read_model_card(model_dir)
    weights = card["weights"]
    name = Path(weights.get("file", WEIGHTS_NAME)).name  # never leave the model directory
    tensors = read_tensors(Path(model_dir) / name, weights["sha256"], device)
    return tensors, card


def load_model(model_dir: str | os.PathLike[str], device: str | torch.device = "cpu",
               ) -> tuple[PcsNetwork, dict[str, Any]]:
    """Rebuild the network of ``model_dir`` and load every weight (strictly).

    Returns:
        The network in eval mode on ``device`` and its card.
    """
    tensors, card = load_weights(model_dir)
    try:
        network = build_network_from_spec(card["architecture"])
    except (KeyError, TypeError) as exc:
        raise ModelFileError(f"{Path(model_dir) / CARD_NAME} does not describe a known "
                             f"architecture ({exc}).") from exc
    _load_strict(network, tensors, Path(model_dir))
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


def load_pretrained(network: PcsNetwork, model_dir: str | os.PathLike[str],
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
        model_dir: a pre-trained (or fine-tuned) model directory.
        parts: top-level submodules to copy.

    Returns:
        A :class:`TransferReport`.
    """
    model_dir = Path(model_dir)
    tensors, card = load_weights(model_dir)
    saved = NetworkSpec.from_dict(card["architecture"])
    mine = network.spec
    for key in ("architecture", "feature_size", "depths", "num_heads", "window_size"):
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
    """Refuse a model whose crop geometry, template or label map differ from the run's."""
    plain = settings.to_dict()
    expected = {
        "template": plain["template"],
        "crop": {**plain["crop"], "shape_vox": list(settings.crop.shape_vox)},
        "labels": {"classes": plain["labels"]["classes"]},
    }
    found = {"template": card.get("template"), "crop": card.get("crop"),
             "labels": {"classes": (card.get("labels") or {}).get("classes")}}
    for section, value in expected.items():
        if found[section] != value:
            raise ModelFileError(
                f"The model in {model_dir} was trained with another [{section}] ("
                f"{found[section]}) than this run ({value}); use the recipe it was trained with."
            )


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
