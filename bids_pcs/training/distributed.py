"""Data-parallel training under ``torchrun``: process group set-up and small collectives.

``torchrun --nproc_per_node N -m bids_pcs ...`` starts N processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in their environment; each then
calls :func:`init_distributed`.  Without those variables everything here is a
no-op and training runs in one process.

Usage::

    with distributed_run(settings.run.device) as (context, device):
        ...  # Engine(..., context=context)

A process that fails leaves at once, without the final barrier: the others
may be inside a collective it will never join, and would wait for the
process group's timeout (hours). Its exit ends the run: ``torchrun`` stops
every other process of the node when one fails, gloo and NCCL peers see its
connections close, and ``srun --kill-on-bad-exit=1`` ends the other nodes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from bids_pcs.devices import resolve_device

# long enough for rank 0 to preprocess images while the others wait at a barrier
_TIMEOUT = timedelta(hours=6)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a data-parallel run.

    Args:
        rank: global index of this process.
        world_size: number of processes.
        local_rank: index of this process on its node (its GPU under CUDA).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str = "auto") -> tuple[DistContext, torch.device]:
    """Join the process group ``torchrun`` prepared (if any) and pick this process's device.

    The backend is NCCL on CUDA and gloo on CPU.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(), resolve_device(device_spec)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_spec, local_rank=local_rank)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=_TIMEOUT)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank), device


@contextlib.contextmanager
def distributed_run(device_spec: str = "auto") -> Iterator[tuple[DistContext, torch.device]]:
    """Join the process group for the ``with`` block; leave it cleanly only on success.

    On an exception no barrier is entered (the other processes may be stuck in
    a gradient all-reduce this one will never reach): the exception goes on at
    once, the process exits with it and its launcher ends the others.
    """
    context, device = init_distributed(device_spec)
    yield context, device  # an exception in the block is raised here and goes on
    shutdown_distributed(context)


def shutdown_distributed(context: DistContext) -> None:
    """Leave the process group (after a final barrier) when one was joined."""
    if context.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(context: DistContext) -> None:
    """Wait for every process (no-op in a single-process run)."""
    if context.enabled:
        dist.barrier()


def any_true(flag: bool, context: DistContext, device: torch.device) -> bool:
    """True on every process when ``flag`` is true on at least one (a stop request)."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def mean_over_processes(values: dict[str, float], context: DistContext,
                        device: torch.device) -> dict[str, float]:
    """Average each value over processes (epoch losses for the log)."""
    if not context.enabled or not values:
        return values
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= context.world_size
    return dict(zip(keys, tensor.tolist(), strict=True))
