"""Memory of this process: what it holds now and its peak (the engine's and the study's).

The training engine logs :func:`peak_memory_mb` per epoch; the study runs each
job in its own process, so a job's peak is its own:

- on CUDA, the peak of memory *allocated by tensors* on the device
  (``torch.cuda.max_memory_allocated``), the figure the source paper compares;
  the caching allocator may reserve more;
- on the CPU, the process's peak resident set size, which also counts the
  interpreter, the libraries and the crops in memory (roughly the
  ``baseline`` measured before training starts).  On Linux it is read from
  ``VmHWM`` in ``/proc/self/status``: ``getrusage``'s ``ru_maxrss`` survives
  ``exec``, so in a job started by a big parent it would report the parent's
  peak instead of the job's own.

Usage::

    baseline = current_memory_mb(device)
    ...train...
    peak = peak_memory_mb(device)
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import torch


def memory_kind(device: torch.device) -> str:
    """What :func:`peak_memory_mb` measures on ``device``."""
    return "cuda_max_allocated" if device.type == "cuda" else "cpu_peak_rss"


def current_memory_mb(device: torch.device) -> float:
    """Memory held now: allocated on the GPU, or the process's resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_memory_mb(device: torch.device) -> float:
    """Peak since the process started (CPU) or since the engine last reset it (CUDA)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
