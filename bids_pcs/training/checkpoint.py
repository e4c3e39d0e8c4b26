"""Training checkpoints without pickles: tensors in safetensors, the rest in JSON.

A checkpoint is ``checkpoint-<step>.safetensors`` (network, objective and
optimiser tensors) and ``checkpoint.json`` (epoch, step, history, optimiser
hyper-parameters, the tensor file's name and SHA-256).  The JSON is written
last and names its tensor file, so a crash at any moment leaves either the old
checkpoint or the new one, never a mix; older tensor files are then removed.

Usage::

    save_checkpoint(directory, tensors, state)
    loaded = load_checkpoint(directory)   # None when there is none
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bids_pcs.io.atomic import remove_stale_temporaries, write_json
from bids_pcs.models.tensor_file import read_metadata_json, read_tensors, write_tensors

INDEX_NAME = "checkpoint.json"
FORMAT = "bids_pcs-checkpoint-1"


@dataclass
class Checkpoint:
    """A checkpoint as read back: tensors by name and the JSON state."""

    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]


def optimizer_to_flat(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[
        dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser's state dict into tensors (for safetensors) and JSON scalars."""
    state_dict = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, param_state in state_dict["state"].items():
        for key, value in param_state.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.{param_id}.{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    groups = [{k: list(v) if isinstance(v, tuple) else v for k, v in g.items()}
              for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                        meta: dict[str, Any], prefix: str) -> None:
    """Restore what :func:`optimizer_to_flat` split, into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {}
    marker = f"{prefix}."
    for name, value in tensors.items():
        if not name.startswith(marker):
            continue
        param_id, key = name[len(marker):].split(".", 1)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, values in meta.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(values)
    groups = []
    for group in meta["param_groups"]:
        restored = dict(group)
        if "betas" in restored:
            restored["betas"] = tuple(restored["betas"])
        groups.append(restored)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def save_checkpoint(directory: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                    state: dict[str, Any]) -> Path:
    """Write a checkpoint into ``directory`` and remove the previous one's tensor file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    step = int(state.get("global_step", 0))
    tensor_name = f"checkpoint-{step:09d}.safetensors"
    digest = write_tensors(directory / tensor_name, tensors)
    index = {**state, "format": FORMAT, "tensors": tensor_name, "sha256": digest}
    write_json(directory / INDEX_NAME, index)
    for old in directory.glob("checkpoint-*.safetensors"):
        if old.name != tensor_name:
            old.unlink(missing_ok=True)
    remove_stale_temporaries(directory)  # partial files of a run killed while saving
    return directory / INDEX_NAME


def load_checkpoint(directory: str | os.PathLike[str],
                    device: str | torch.device = "cpu") -> Checkpoint | None:
    """The checkpoint in ``directory`` (digest checked), or ``None`` when there is none."""
    index_path = Path(directory) / INDEX_NAME
    if not index_path.is_file():
        return None
    state = read_metadata_json(index_path)
    tensors = read_tensors(Path(directory) / state["tensors"], state["sha256"], device)
    return Checkpoint(tensors=tensors, state=state)
