"""Devices and threads, for every entry point (``bids_pcs``, ``bids_pcs-demo``, study jobs).

``--device auto|cpu|cuda|cuda:N`` is checked for its form without importing
torch (:func:`check_device_spec`, so ``--help`` stays fast), refused before any
work when the GPU it names is absent (:func:`check_device`) and resolved into a
:class:`torch.device` where the network runs (:func:`resolve_device`).
``--nprocs`` defaults to the CPUs this process may use (:func:`available_cpus`)
and ``--omp-nthreads`` to ``min(nprocs, 8)`` (:func:`default_omp_threads`);
:func:`set_threads` applies the thread count to OpenMP, BLAS and PyTorch.

Usage::

    check_device("cuda:1")                   # DeviceError when there is no such GPU
    device = resolve_device("auto")          # cuda:0 when a GPU is present, else cpu
    device = resolve_device("cuda", local_rank=1)   # under torchrun: this process's GPU
    set_threads(default_omp_threads(available_cpus()))
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

from bids_pcs.errors import DeviceError

if TYPE_CHECKING:
    import torch

DEVICE_SPEC = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")
MAX_DEFAULT_OMP_THREADS = 8
# OpenMP and BLAS read these when loaded; ITK's count is fixed by spatial.antsio (one
# thread: multi-threaded Mattes mutual information does not repeat exactly)
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def check_device_spec(spec: str) -> str:
    """``spec`` if it has the form auto, cpu, cuda or cuda:N, else :class:`DeviceError`."""
    value = (spec or "auto").strip().lower()
    if not DEVICE_SPEC.match(value):
        raise DeviceError(f"Device {spec!r} is not understood; use auto, cpu, cuda or cuda:N.")
    return value


def check_device(spec: str) -> None:
    """Refuse a ``cuda`` device that this machine lacks, before any work (torch only then)."""
    if check_device_spec(spec).startswith("cuda"):
        resolve_device(spec)


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
    import torch

    value = check_device_spec(spec)
    if value == "cpu" or (value == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    match = _CUDA_INDEX.match(value)
    index = int(match.group(1)) if match else (local_rank or 0)
    _require_cuda(value)
    _require_index(index, value)
    return torch.device("cuda", index)


def available_cpus() -> int:
    """CPUs this run may use: the SLURM allocation's, else the affinity mask or cgroup quota.

    See :func:`bids_pcs.resources.detect_allocation` (which also sizes the memory).
    """
    from bids_pcs.resources import detect_allocation

    return detect_allocation().cpus


def default_omp_threads(nprocs: int) -> int:
    """Threads per process when ``--omp-nthreads`` is not given: ``min(nprocs, 8)``."""
    return min(nprocs, MAX_DEFAULT_OMP_THREADS)


def set_threads(n: int) -> None:
    """Use ``n`` threads in OpenMP, BLAS and PyTorch (this process and its children).

    The environment reaches libraries loaded later and child processes (Nipype
    workers, study jobs); PyTorch is told directly when it is already imported.
    """
    for name in _THREAD_VARIABLES:
        os.environ[name] = str(n)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n)


def _require_cuda(spec: str) -> None:
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {spec} was asked for but no CUDA GPU is available here; "
            "use --device cpu or auto."
        )


def _require_index(index: int, spec: str) -> None:
    import torch

    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"--device {spec} (GPU {index}) does not exist; this machine has {count} GPU(s) "
            "(cuda:0 ...); choose a smaller index or fewer processes per node."
        )
