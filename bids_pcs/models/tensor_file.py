"""Tensor files that cannot run code: safetensors, written atomically, checked by SHA-256.

``torch.load`` of a pickle can execute arbitrary code, so model weights and
training checkpoints are only ever stored as safetensors.  Reading checks the
file's digest against the one recorded beside it, then that the file really is
safetensors (a pickle renamed ``.safetensors`` is refused before any parser
sees it).

Usage::

    digest = write_tensors(path, {"w": torch.zeros(3)})
    tensors = read_tensors(path, expected_sha256=digest)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from bids_pcs.errors import ModelFileError
from bids_pcs.io.atomic import atomic_path

# safetensors: 8-byte little-endian header length, then a JSON header
_MAX_HEADER = 100 * 1024 * 1024


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_tensors(path: str | os.PathLike[str], tensors: dict[str, torch.Tensor],
                  metadata: dict[str, str] | None = None) -> str:
    """Write ``tensors`` (moved to CPU, made contiguous) atomically; return the file's SHA-256."""
    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(plain, str(tmp), metadata=metadata)
        digest = sha256_file(tmp)
    return digest


def check_safetensors_header(path: str | os.PathLike[str]) -> None:
    """Refuse a file that does not start like safetensors (e.g. a renamed pickle)."""
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ModelFileError(f"{path} is not a safetensors file (too short); replace it.")
        (length,) = struct.unpack("<Q", head)
        first = handle.read(1)
    if length < 2 or length > min(_MAX_HEADER, size - 8) or first != b"{":
        raise ModelFileError(
            f"{path} is not a safetensors file (a pickle or other format?); refusing to load it."
        )


def verify_tensor_file(path: str | os.PathLike[str], expected_sha256: str | None) -> None:
    """Refuse a missing file, one whose digest differs, or one that is not safetensors.

    Reads the file once to hash it, and never parses it: cheap enough to run
    before any work, and safe on a hostile file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; the model or checkpoint is incomplete.")
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise ModelFileError(
                f"{path} does not match the SHA-256 recorded beside it (expected "
                f"{expected_sha256[:12]}..., found {actual[:12]}...); the file was changed or "
                "damaged, so it is refused."
            )
    check_safetensors_header(path)


def read_tensors(path: str | os.PathLike[str], expected_sha256: str | None,
                 device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file after checking its digest and its format.

    Args:
        path: the file.
        expected_sha256: the digest recorded beside it; ``None`` skips the check
            (only for files this process wrote itself).
        device: where the tensors go.

    Returns:
        The tensors by name.
    """
    path = Path(path)
    verify_tensor_file(path, expected_sha256)
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelFileError(f"{path} is not a valid safetensors file ({exc}).") from exc


def read_metadata_json(path: str | os.PathLike[str]) -> dict:
    """Read a JSON sidecar, or :class:`ModelFileError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path} is missing; the model or checkpoint is incomplete.")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not readable JSON ({exc}).") from exc
    if not isinstance(data, dict):
        raise ModelFileError(f"{path} must hold a JSON object.")
    return data
