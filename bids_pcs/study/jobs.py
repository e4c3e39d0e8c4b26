"""Starting study jobs, each in a fresh interpreter, and waiting for them.

A job is a JSON file under ``WORK_DIR/study/jobs/`` read by
:mod:`bids_pcs.study.worker`; the child inherits the console (its log lines
and progress bars show as it runs) and the thread settings of the parent's
environment.  Jobs run one at a time, never side by side: the study compares
time and memory, and two trainings sharing the CPUs or the GPU would distort
both.

Usage::

    path = write_job(work_dir, name, spec)
    outcome = run_job(path)            # JobOutcome(returncode=0, seconds=41.2)
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_pcs.io.atomic import write_json

LOGGER = logging.getLogger(__name__)
JOBS_DIR = "jobs"


@dataclass(frozen=True)
class JobOutcome:
    """How a job's process ended.

    Args:
        returncode: its exit status (0 done; negative: killed by that signal).
        seconds: wall time of the whole process, start-up included.
    """

    returncode: int
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def write_job(work_dir: Path, name: str, spec: dict[str, Any]) -> Path:
    """Write the job file ``WORK_DIR/study/jobs/<name>.json``; return its path."""
    path = Path(work_dir) / JOBS_DIR / f"{name}.json"
    write_json(path, {"name": name, **spec})
    return path


def run_job(job_file: Path) -> JobOutcome:
    """Run :mod:`bids_pcs.study.worker` on ``job_file`` in a new interpreter and wait."""
    command = [sys.executable, "-m", "bids_pcs.study.worker", str(job_file)]
    LOGGER.debug("starting %s", " ".join(command))
    started = time.perf_counter()
    # on KeyboardInterrupt subprocess.run kills the child before re-raising
    done = subprocess.run(command, check=False)
    return JobOutcome(returncode=done.returncode, seconds=time.perf_counter() - started)
