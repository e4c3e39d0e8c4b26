"""What a run may use (CPUs, memory) and how preprocessing fits in it.

On a cluster a job gets a share of a node: ``--cpus-per-task`` CPUs and
``--mem`` megabytes, enforced by cgroups that kill a job going over. A run
that sizes itself from the whole node's ``nproc`` and memory gets killed, the
most reported pain of fMRIPrep users; so the defaults come from the
allocation, in this order:

- CPUs: ``--nprocs``, else ``SLURM_CPUS_PER_TASK`` inside a SLURM job, else
  the smaller of the CPU affinity and a cgroup CPU quota;
- memory: ``--mem-gb``, else the smallest of ``SLURM_MEM_PER_NODE`` (or
  ``SLURM_MEM_PER_CPU`` x CPUs) inside a SLURM job, a cgroup memory limit
  (v1 or v2) and the physical memory.

:func:`plan_preprocessing` then chooses how many images the Nipype workflow
processes at once (one ITK thread each) and what Nipype's MultiProc may
schedule, from a memory model measured on this app (see docs/hpc.md and
``benchmarks/bench_memory.py``). Standard library only: the CLI imports this
module before any level runs.

Usage::

    allocation = detect_allocation()              # Allocation(cpus=4, memory_gb=8.0, ...)
    plan = plan_preprocessing(n_images=3, largest_voxels=9_000_000, cpus=4, memory_gb=8.0)
    plan.plugin, plan.plugin_args                 # "MultiProc", {"n_procs": 3, "memory_gb": ...}
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GB = 2**30
# The memory model, measured with benchmarks/bench_memory.py (peak resident set of
# the whole process tree, 1 mm and 1.5 mm synthetic T1w images, tiny-cpu-2mm):
# the main process once nipype, ANTs and nibabel are imported
PROCESS_BASE_GB = 0.30
# each MultiProc worker process imports the same libraries
WORKER_BASE_GB = 0.30
# one image being registered and cropped: the 1 mm template and its pyramid,
# plus copies of the image (float32, N4 output, resampled levels)
IMAGE_FIXED_GB = 0.35
IMAGE_BYTES_PER_VOXEL = 16
DEFORMABLE_EXTRA_GB = 0.6
_UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a huge number


@dataclass(frozen=True)
class Allocation:
    """CPUs and memory this run may use, and where each figure comes from.

    Args:
        cpus: CPUs (processes x threads) the run may keep busy.
        memory_gb: memory in GiB the whole process tree may hold.
        cpus_from: the source of ``cpus`` (``"--nprocs"``, ``"SLURM_CPUS_PER_TASK"``...).
        memory_from: the source of ``memory_gb`` (``"--mem-gb"``, ``"SLURM_MEM_PER_NODE"``...).
    """

    cpus: int
    memory_gb: float
    cpus_from: str
    memory_from: str

    def describe(self) -> str:
        return (f"{self.cpus} CPU(s) ({self.cpus_from}), {self.memory_gb:.1f} GB "
                f"({self.memory_from})")


def detect_allocation(*, nprocs: int | None = None, mem_gb: float | None = None,
                      environ: Mapping[str, str] | None = None,
                      cgroup_root: Path = Path("/sys/fs/cgroup"),
                      proc_cgroup: Path = Path("/proc/self/cgroup")) -> Allocation:
    """The CPUs and memory of this run: the values given, else the allocation's.

    Args:
        nprocs: ``--nprocs`` when given.
        mem_gb: ``--mem-gb`` when given.
        environ: the environment (default ``os.environ``).
        cgroup_root, proc_cgroup: where the cgroup file systems and this
            process's cgroup membership are read (tests point them elsewhere).
    """
    environ = os.environ if environ is None else environ
    in_slurm = bool(environ.get("SLURM_JOB_ID"))
    memberships = _cgroup_memberships(proc_cgroup)

    if nprocs:
        cpus, cpus_from = int(nprocs), "--nprocs"
    elif in_slurm and _positive_int(environ.get("SLURM_CPUS_PER_TASK")):
        cpus, cpus_from = int(environ["SLURM_CPUS_PER_TASK"]), "SLURM_CPUS_PER_TASK"
    else:
        cpus, cpus_from = _affinity_cpus(), "CPU affinity"
        quota = cgroup_cpu_limit(cgroup_root, memberships)
        if quota is not None and math.ceil(quota) < cpus:
            cpus, cpus_from = max(1, math.ceil(quota)), "cgroup CPU quota"

    if mem_gb:
        return Allocation(cpus, float(mem_gb), cpus_from, "--mem-gb")
    candidates: list[tuple[float, str]] = []
    if in_slurm:
        per_node = _positive_int(environ.get("SLURM_MEM_PER_NODE"))
        per_cpu = _positive_int(environ.get("SLURM_MEM_PER_CPU"))
        if per_node:
            candidates.append((per_node * 2**20 / GB, "SLURM_MEM_PER_NODE"))
        elif per_cpu:
            candidates.append((per_cpu * cpus * 2**20 / GB, "SLURM_MEM_PER_CPU x CPUs"))
    limit = cgroup_memory_limit(cgroup_root, memberships)
    if limit is not None:
        candidates.append((limit / GB, "cgroup memory limit"))
    candidates.append((physical_memory_bytes() / GB, "physical memory"))
    memory, memory_from = min(candidates, key=lambda c: c[0])
    return Allocation(cpus, memory, cpus_from, memory_from)


@dataclass(frozen=True)
class PreprocPlan:
    """How the preprocessing workflow runs within an allocation.

    ITK runs one thread per image (``bids_pcs.spatial.antsio.ITK_THREADS``,
    for registrations that repeat exactly), so CPUs are used by processing
    images side by side, as many as the memory allows.

    Args:
        images_in_parallel: images registered at the same time.
        memory_gb: the memory allowed.
        image_gb: estimated peak memory of one image being processed (the
            ``mem_gb`` of its heavy nodes).
        planned_peak_gb: estimated peak of the whole process tree.
        plugin: the Nipype plugin (``"Linear"`` for one image at a time: no
            worker processes, whose imports alone cost memory).
        plugin_args: its arguments (MultiProc: ``n_procs``, ``memory_gb``).
        warning: set when even one image at a time may not fit.
    """

    images_in_parallel: int
    memory_gb: float
    image_gb: float
    planned_peak_gb: float
    plugin: str
    plugin_args: dict[str, Any] = field(default_factory=dict)
    warning: str = ""
    threads_per_image: int = 1

    def describe(self) -> str:
        parallel = ("1 image at a time" if self.images_in_parallel == 1
                    else f"{self.images_in_parallel} images at a time")
        return (f"{parallel}, {self.threads_per_image} thread each, Nipype {self.plugin}; "
                f"planned peak {self.planned_peak_gb:.2f} GB of {self.memory_gb:.1f} GB "
                f"({self.image_gb:.2f} GB per image)")


def image_memory_gb(voxels: int, deformable: bool = False) -> float:
    """Estimated peak memory (GiB) of preprocessing one image of ``voxels`` voxels."""
    # SyN adds forward and inverse displacement fields on the 1 mm template grid
    return (IMAGE_FIXED_GB + voxels * IMAGE_BYTES_PER_VOXEL / GB
            + (DEFORMABLE_EXTRA_GB if deformable else 0.0))


def plan_preprocessing(*, n_images: int, largest_voxels: int, cpus: int, memory_gb: float,
                       deformable: bool = False) -> PreprocPlan:
    """Images in parallel and Nipype's limits for this allocation.

    Args:
        n_images: images to preprocess.
        largest_voxels: voxel count of the largest of them (memory grows with it).
        cpus: CPUs allowed (``--nprocs`` or the allocation's).
        memory_gb: memory allowed (``--mem-gb`` or the allocation's).
        deformable: the registration is affine + SyN (more memory per image).
    """
    image_gb = image_memory_gb(largest_voxels, deformable)
    parallel = 1
    for k in range(2, min(n_images, cpus) + 1):
        if multiproc_peak_gb(k, image_gb) <= memory_gb:
            parallel = k
    if parallel == 1:
        peak = PROCESS_BASE_GB + image_gb
        warning = ""
        if peak > memory_gb:
            warning = (f"one image needs about {peak:.1f} GB but only {memory_gb:.1f} GB is "
                       "allowed; running one image at a time, which may still run out of "
                       "memory (raise --mem-gb or the job's --mem)")
        return PreprocPlan(1, memory_gb, image_gb, peak, "Linear", {}, warning)
    # MultiProc counts only its nodes' mem_gb: what its workers' imports leave
    node_memory = memory_gb - PROCESS_BASE_GB - parallel * WORKER_BASE_GB
    return PreprocPlan(parallel, memory_gb, image_gb, multiproc_peak_gb(parallel, image_gb),
                       "MultiProc", {"n_procs": parallel, "memory_gb": round(node_memory, 3)})


def multiproc_peak_gb(parallel: int, image_gb: float) -> float:
    """Estimated peak of a MultiProc run with ``parallel`` workers, each on one image."""
    # one worker process per slot (n_procs), each paying the imports
    return PROCESS_BASE_GB + parallel * (WORKER_BASE_GB + image_gb)


def cgroup_memory_limit(cgroup_root: Path, memberships: dict[str, str]) -> int | None:
    """The tightest memory limit (bytes) of this process's cgroup and its parents, if any."""
    limits = []
    if "" in memberships:  # cgroup v2: one unified hierarchy
        for folder in _ancestors(cgroup_root, memberships[""]):
            value = _read(folder / "memory.max")
            if value and value != "max" and value.isdigit():
                limits.append(int(value))
    if "memory" in memberships:  # cgroup v1
        for folder in _ancestors(cgroup_root / "memory", memberships["memory"]):
            value = _read(folder / "memory.limit_in_bytes")
            if value and value.isdigit() and int(value) < _UNLIMITED:
                limits.append(int(value))
    return min(limits) if limits else None


def cgroup_cpu_limit(cgroup_root: Path, memberships: dict[str, str]) -> float | None:
    """The tightest CPU quota (in CPUs) of this process's cgroup and its parents, if any."""
    quotas = []
    if "" in memberships:
        for folder in _ancestors(cgroup_root, memberships[""]):
            parts = (_read(folder / "cpu.max") or "").split()
            if len(parts) == 2 and parts[0] != "max" and parts[1].isdigit():
                quotas.append(int(parts[0]) / int(parts[1]))
    for name in ("cpu", "cpu,cpuacct"):
        if name in memberships:
            for folder in _ancestors(cgroup_root / name, memberships[name]):
                quota = _read(folder / "cpu.cfs_quota_us")
                period = _read(folder / "cpu.cfs_period_us")
                if quota and period and quota.lstrip("-").isdigit() and int(quota) > 0:
                    quotas.append(int(quota) / int(period))
    return min(quotas) if quotas else None


def physical_memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not on Linux: assume enough
        return 16 * GB


def _affinity_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _cgroup_memberships(proc_cgroup: Path) -> dict[str, str]:
    """``/proc/self/cgroup`` as {controller: path}; the v2 hierarchy under ``""``."""
    memberships: dict[str, str] = {}
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            memberships[controller] = parts[2]
        if "," in parts[1]:
            memberships[parts[1]] = parts[2]
    return memberships


def _ancestors(mount: Path, path: str) -> list[Path]:
    """``mount/a/b``, ``mount/a``, ``mount``: limits of parents apply too."""
    parts = [p for p in path.strip("/").split("/") if p]
    return [mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _positive_int(value: str | None) -> int | None:
    if value and value.strip().isdigit() and int(value) > 0:
        return int(value)
    return None
