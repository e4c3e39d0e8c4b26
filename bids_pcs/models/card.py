"""``model.json``, read without torch: where a model lives, and what its card says.

The command line reads a model's card before anything heavy is imported, so
that a wrong ``--model`` fails at once and the model's recipe can shape the
run's settings (:mod:`bids_pcs.models.recipe`); the weights are checked and
loaded later, once (:mod:`bids_pcs.models.model_io`).

Usage::

    model_dir = model_dir_of("/out/models/finetune-scratch-full/model.json")  # the folder
    card = read_model_card(model_dir)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bids_pcs.errors import ModelFileError

WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "model.json"
FORMAT = "bids_pcs-model-1"


def model_dir_of(path: str | os.PathLike[str]) -> Path:
    """The model folder of ``path``: the folder itself, or the folder of its ``model.json``.

    Raises:
        ModelFileError: nothing there, or a file that is not a ``model.json``.
    """
    path = Path(path)
    if path.is_file():
        if path.name != CARD_NAME:
            raise ModelFileError(f"{path} is not a model card; give the model folder or its "
                                 f"{CARD_NAME}.")
        return path.parent
    if not path.is_dir():
        raise ModelFileError(f"Model directory {path} does not exist; give the folder that "
                             f"holds {CARD_NAME} and {WEIGHTS_NAME}.")
    return path


def read_model_card(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``model.json`` of ``model_dir`` (or the card file itself), checked to be a bids_pcs card."""
    model_dir = model_dir_of(model_dir)
    path = model_dir / CARD_NAME
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; the model or checkpoint is incomplete.")
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not readable JSON ({exc}).") from exc
    if not isinstance(card, dict):
        raise ModelFileError(f"{path} must hold a JSON object.")
    if card.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not a bids_pcs model card "
                             f"(format {card.get('format')!r}, expected {FORMAT!r}).")
    weights = card.get("weights", {})
    if not isinstance(weights, dict) or not weights.get("sha256"):
        raise ModelFileError(f"{path} records no SHA-256 for the weights; "
                             "the model cannot be verified, so it is refused.")
    return card
