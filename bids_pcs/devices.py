"""Resolution of ``--device auto|cpu|cuda|cuda:N`` into a :class:`torch.device`.

Usage::

    device = resolve_device("auto")          # cuda:0 when a GPU is present, else cpu
    device = resolve_device("cuda", local_rank=1)   # under torchrun: this process's GPU
"""

from __future__ import annotations

import re

import torch

from bids_pcs.errors import DeviceError

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")


def resolve_device(spec: str = "auto", local_rank: int | None = None) -> torch.device:
    """The device a run asked for, or :class:`DeviceError` when it is absent.

    Args:
        spec: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``
            or ``"cuda:N"``.
        local_rank: index of this process on its node under ``torchrun``; with
            ``"auto"`` or ``"cuda"`` each process then takes its own GPU.

    Returns:
        The resolved device.
    """
    value = (spec or "auto").strip().lower()
    if value == "cpu":
        return torch.device("cpu")
    if value == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if value in ("auto", "cuda"):
        _require_cuda(value)
        index = local_rank or 0
        _require_index(index, value)
        return torch.device("cuda", index)
    match = _CUDA_INDEX.match(value)
    if match:
        _require_cuda(value)
        index = int(match.group(1))
        _require_index(index, value)
        return torch.device("cuda", index)
    raise DeviceError(f"Device {spec!r} is not understood; use auto, cpu, cuda or cuda:N.")


def _require_cuda(spec: str) -> None:
    if not torch.cuda.is_available():
        raise DeviceError(
            f"Device {spec!r} was requested but this PyTorch sees no CUDA GPU; "
            "use --device cpu or run on a machine with a GPU."
        )


def _require_index(index: int, spec: str) -> None:
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"Device {spec!r} needs GPU {index} but only {count} GPU(s) are visible; "
            "choose a smaller index or fewer processes per node."
        )
