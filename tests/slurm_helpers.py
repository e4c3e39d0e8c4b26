"""Talking to the one-node SLURM cluster that ``.ci/slurm`` starts (tests/test_slurm.py).

The cluster is reachable when ``SLURM_CONF`` names its configuration and
``sinfo`` answers; ``.ci/slurm`` also exports ``BIDS_PCS_SLURM_SHARED`` (a
folder every job user can write) and ``BIDS_PCS_SLURM_USER`` (who the jobs run
as). Without a cluster the tests skip, unless ``BIDS_PCS_REQUIRE_SLURM=1``
(CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PIPELINES = REPO_ROOT / "pipelines"
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "PREEMPTED", "BOOT_FAIL", "DEADLINE"}


def require_cluster() -> Path:
    """The shared folder of the running cluster; skip (or fail under CI) without one."""
    conf = os.environ.get("SLURM_CONF")
    problem = None
    if not conf or not Path(conf).is_file():
        problem = "SLURM_CONF is not set (start a cluster with: bash .ci/slurm CMD)"
    elif shutil.which("sinfo") is None:
        problem = "sinfo is not installed"
    else:
        answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                check=False, timeout=30)
        if answer.returncode != 0 or not answer.stdout.strip():
            problem = f"sinfo does not answer: {answer.stderr.strip()}"
    if problem:
        if os.environ.get("BIDS_PCS_REQUIRE_SLURM") == "1":
            pytest.fail(f"BIDS_PCS_REQUIRE_SLURM=1 but {problem}")
        pytest.skip(problem)
    return Path(os.environ["BIDS_PCS_SLURM_SHARED"])


def job_user() -> str:
    return os.environ.get("BIDS_PCS_SLURM_USER", "root")


def as_job_user(command: list[str]) -> list[str]:
    """``command`` run as the jobs' user (sbatch runs a job as whoever submits it)."""
    user = job_user()
    if os.geteuid() == 0 and user != "root":
        return ["runuser", "-u", user, "--", *command]
    return command


def run_as_job_user(command: list[str], env: dict[str, str] | None = None,
                    timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(as_job_user(command), capture_output=True, text=True, check=False,
                          timeout=timeout, env={**os.environ, **(env or {})})


def sbatch(*args: str | Path, env: dict[str, str] | None = None) -> str:
    """Submit a job (as the jobs' user); its id."""
    done = run_as_job_user(["sbatch", "--parsable", *map(str, args)], env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().split(";")[0]


def job_records(job_id: str) -> list[dict[str, str]]:
    """``scontrol -o show job`` as one dict per job (every task of an array)."""
    done = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                          text=True, check=False, timeout=30)
    if done.returncode != 0:
        return []
    records = []
    for line in done.stdout.splitlines():
        fields = {}
        for token in line.split():
            key, sep, value = token.partition("=")
            if sep:
                fields[key] = value
        records.append(fields)
    return records


def wait_for(job_id: str, timeout: float) -> list[dict[str, str]]:
    """Wait until every task of ``job_id`` has finished; their final records."""
    deadline = time.monotonic() + timeout
    while True:
        records = job_records(job_id)
        if records and all(r.get("JobState") in FINISHED for r in records):
            return records
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], check=False)
            raise AssertionError(f"job {job_id} still running after {timeout} s: "
                                 f"{[(r.get('JobId'), r.get('JobState')) for r in records]}")
        time.sleep(0.5)


def exit_code(record: dict[str, str]) -> int:
    """The job's own exit status (``ExitCode=status:signal``)."""
    return int(record["ExitCode"].split(":")[0])


def shared_workspace(shared: Path, name: str) -> Path:
    """A fresh folder under the cluster's shared folder, writable by the jobs' user."""
    path = shared / name
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    path.chmod(0o1777)
    return path
