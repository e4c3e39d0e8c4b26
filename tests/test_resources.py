"""CPUs and memory of a run (bids_pcs.resources): allocation defaults and the preprocessing plan."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from bids_pcs.resources import (
    GB,
    PROCESS_BASE_GB,
    WORKER_BASE_GB,
    detect_allocation,
    image_memory_gb,
    multiproc_peak_gb,
    plan_preprocessing,
)
from bids_pcs.synth import SynthOptions, make_cohort

HEAD_1MM = 200 * 230 * 190  # voxels of a 1 mm head


def fake_cgroups(tmp_path: Path, v1: dict[str, str] | None = None,
                 v2: dict[str, str] | None = None) -> tuple[Path, Path]:
    """A cgroup tree with this process in ``/job/step``: (cgroup_root, proc_self_cgroup)."""
    root = tmp_path / "cgroup"
    lines = []
    if v1 is not None:
        lines += ["4:memory:/job/step", "2:cpu,cpuacct:/job/step"]
        for name, value in v1.items():
            controller = "memory" if name.startswith("memory") else "cpu,cpuacct"
            folder = root / controller / "job"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "step").mkdir(exist_ok=True)
            (folder / name).write_text(value + "\n")
            (folder / "step" / name).write_text("9223372036854771712\n" if name.startswith(
                "memory") else "-1\n")
    if v2 is not None:
        lines.append("0::/job/step")
        folder = root / "job" / "step"
        folder.mkdir(parents=True, exist_ok=True)
        for name, value in v2.items():
            (folder / name).write_text(value + "\n")
    proc = tmp_path / "proc_self_cgroup"
    proc.write_text("\n".join(lines) + "\n")
    return root, proc


def test_inside_slurm_the_allocation_sets_cpus_and_memory(tmp_path):
    root, proc = fake_cgroups(tmp_path)
    env = {"SLURM_JOB_ID": "7", "SLURM_CPUS_PER_TASK": "3", "SLURM_MEM_PER_NODE": "6144"}
    allocation = detect_allocation(environ=env, cgroup_root=root, proc_cgroup=proc)
    assert (allocation.cpus, allocation.memory_gb) == (3, 6.0)
    assert (allocation.cpus_from, allocation.memory_from) == ("SLURM_CPUS_PER_TASK",
                                                              "SLURM_MEM_PER_NODE")
    per_cpu = detect_allocation(environ={**env, "SLURM_MEM_PER_NODE": "",
                                         "SLURM_MEM_PER_CPU": "1024"},
                                cgroup_root=root, proc_cgroup=proc)
    assert per_cpu.memory_gb == 3.0 and per_cpu.memory_from == "SLURM_MEM_PER_CPU x CPUs"
    # the command line wins; SLURM variables outside a job are leftovers, ignored
    given = detect_allocation(nprocs=1, mem_gb=2.5, environ=env, cgroup_root=root,
                              proc_cgroup=proc)
    assert (given.cpus, given.memory_gb, given.cpus_from, given.memory_from) == (
        1, 2.5, "--nprocs", "--mem-gb")
    stale = detect_allocation(environ={"SLURM_CPUS_PER_TASK": "64",
                                       "SLURM_MEM_PER_NODE": "999999"},
                              cgroup_root=root, proc_cgroup=proc)
    assert stale.cpus_from == "CPU affinity" and stale.memory_from == "physical memory"


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_cgroup_limits_bound_the_defaults(tmp_path, version):
    if version == "v1":  # the limit of a parent cgroup applies to its children
        root, proc = fake_cgroups(tmp_path, v1={"memory.limit_in_bytes": str(3 * GB),
                                                "cpu.cfs_quota_us": "100000",
                                                "cpu.cfs_period_us": "100000"})
    else:
        root, proc = fake_cgroups(tmp_path, v2={"memory.max": str(3 * GB),
                                                "cpu.max": "100000 100000"})
    allocation = detect_allocation(environ={}, cgroup_root=root, proc_cgroup=proc)
    assert allocation.memory_gb == 3.0 and allocation.memory_from == "cgroup memory limit"
    assert allocation.cpus == 1 and allocation.cpus_from == "cgroup CPU quota"
    # a SLURM job inside a larger cgroup: the smaller figure wins
    inside = detect_allocation(environ={"SLURM_JOB_ID": "1", "SLURM_MEM_PER_NODE": "2048"},
                               cgroup_root=root, proc_cgroup=proc)
    assert inside.memory_gb == 2.0 and inside.memory_from == "SLURM_MEM_PER_NODE"


def test_unlimited_cgroups_leave_the_machine_figures(tmp_path):
    root, proc = fake_cgroups(tmp_path, v2={"memory.max": "max", "cpu.max": "max 100000"})
    allocation = detect_allocation(environ={}, cgroup_root=root, proc_cgroup=proc)
    assert allocation.memory_from == "physical memory"
    assert allocation.cpus_from == "CPU affinity"


def test_plan_fits_images_in_parallel_to_memory_and_cpus():
    image_gb = image_memory_gb(HEAD_1MM)
    roomy = plan_preprocessing(n_images=10, largest_voxels=HEAD_1MM, cpus=4, memory_gb=64)
    assert roomy.images_in_parallel == 4 and roomy.plugin == "MultiProc"
    assert roomy.plugin_args["n_procs"] == 4
    # MultiProc may schedule only what the workers' own imports leave
    assert roomy.plugin_args["memory_gb"] == pytest.approx(
        64 - PROCESS_BASE_GB - 4 * WORKER_BASE_GB, abs=1e-3)
    tight_gb = multiproc_peak_gb(2, image_gb) + 0.01
    tight = plan_preprocessing(n_images=10, largest_voxels=HEAD_1MM, cpus=4,
                               memory_gb=tight_gb)
    assert tight.images_in_parallel == 2 and tight.planned_peak_gb <= tight_gb
    few = plan_preprocessing(n_images=1, largest_voxels=HEAD_1MM, cpus=4, memory_gb=64)
    assert few.images_in_parallel == 1 and few.plugin == "Linear"
    low = plan_preprocessing(n_images=10, largest_voxels=HEAD_1MM, cpus=4, memory_gb=1.0)
    assert low.images_in_parallel == 1 and low.plugin == "Linear" and not low.warning
    assert low.planned_peak_gb == pytest.approx(PROCESS_BASE_GB + image_gb)
    too_low = plan_preprocessing(n_images=2, largest_voxels=HEAD_1MM, cpus=2, memory_gb=0.3)
    assert too_low.images_in_parallel == 1 and "raise --mem-gb" in too_low.warning
    assert image_memory_gb(HEAD_1MM, deformable=True) > image_gb
    assert image_memory_gb(4 * HEAD_1MM) > image_gb


class TreeMemory:
    """Peak resident memory of a process and all its children, sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                processes = [self.root, *self.root.children(recursive=True)]
            except psutil.Error:
                processes = []
            for process in processes:
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            self.peak_bytes = max(self.peak_bytes, total)
            time.sleep(0.02)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak_bytes / GB


@pytest.mark.slow
def test_a_low_mem_gb_runs_one_image_at_a_time_and_stays_under_it(tmp_path):
    summary = make_cohort(tmp_path / "bids", 2, seed=1, options=SynthOptions.from_preset(
        "easy", anatomy=("MNI152NLin2009aSym",), figure=False, voxel_sizes=((1.0, 1.0, 1.0),)))
    out = tmp_path / "out"
    limit_gb = 1.0
    command = [sys.executable, "-m", "bids_pcs.cli", str(summary.bids_dir), str(out),
               "participant", "--recipe", "tiny-cpu-2mm", "-w", str(tmp_path / "work"),
               "--nprocs", "2", "--mem-gb", str(limit_gb), "--skip-bids-validation"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    memory = TreeMemory(process.pid)
    output, _ = process.communicate(timeout=900)  # 30 s alone; a shared machine is slower
    peak_gb = memory.stop()
    assert process.returncode == 0, output[-3000:]
    assert ("Resources: 2 CPU(s), 1.0 GB (CPUs: --nprocs; memory: --mem-gb); preprocessing "
            "plan for 2 image(s): 1 image at a time") in output
    assert "Nipype Linear" in output
    assert len(list(out.rglob("*desc-medialfrontal*_T1w.nii.gz"))) == 4
    assert peak_gb < limit_gb, f"peak {peak_gb:.2f} GB over --mem-gb {limit_gb}"
    # the plan is in the run log too, beside the config dump that records the limit
    logs = "".join(p.read_text() for p in (out / "logs").glob("*.log"))
    assert "1 image at a time" in logs
    dumps = "".join(p.read_text() for p in (out / "logs").glob("*.toml"))
    assert "mem_gb = 1.0" in dumps
