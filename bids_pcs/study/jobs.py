"""Starting study jobs, each in a fresh interpreter, and waiting for them.

A job is a JSON file under ``WORK_DIR/study/jobs/`` read by
:mod:`bids_pcs.study.worker`; the child inherits the console (its log lines
and progress bars show as it runs) and the thread settings of the parent's
environment.  Jobs run one at a time, never side by side: the study compares
time and memory, and two trainings sharing the CPUs or the GPU would distort
both.

SIGTERM (a scheduler's pre-emption, ``kill``) and Ctrl-C stop the running
job's process too, so no orphan keeps training after the study ended.

Usage::

    path = write_job(work_dir, name, spec)
    outcome = run_job(path)            # JobOutcome(returncode=0, seconds=41.2)
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_pcs.errors import BidsPcsError
from bids_pcs.io.atomic import write_json

LOGGER = logging.getLogger(__name__)
JOBS_DIR = "jobs"


@dataclass(frozen=True)
class JobOutcome:
    """How a job's process ended.

    Args:
        returncode: its exit status (0 done; negative: killed by that signal).
        seconds: wall time of the whole process, start-up included.
        error: the job's one-sentence error, if it failed with one (or was killed).
        run_wide: whether every later job would fail the same way (a full disk).
    """

    returncode: int
    seconds: float
    error: str | None = None
    run_wide: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def write_job(work_dir: Path, name: str, spec: dict[str, Any]) -> Path:
    """Write the job file ``WORK_DIR/study/jobs/<name>.json``; return its path."""
    path = Path(work_dir) / JOBS_DIR / f"{name}.json"
    write_json(path, {"name": name, **spec})
    return path


def run_job(job_file: Path) -> JobOutcome:
    """Run :mod:`bids_pcs.study.worker` on ``job_file`` in a new interpreter and wait.

    Raises:
        StudyInterruptedError: SIGTERM arrived while the job ran; the job was
            stopped too (it would otherwise outlive the study as an orphan).
    """
    command = [sys.executable, "-m", "bids_pcs.study.worker", str(job_file)]
    LOGGER.debug("starting %s", " ".join(command))
    failure = failure_path(job_file)
    failure.unlink(missing_ok=True)  # an earlier attempt's reason is not this one's
    started = time.perf_counter()
    process = subprocess.Popen(command)
    with _forward_sigterm(process, Path(job_file).stem):
        try:
            returncode = process.wait()
        except BaseException:  # Ctrl-C or SIGTERM: the job stops with the study
            _stop(process)
            raise
    seconds = time.perf_counter() - started
    if returncode < 0:
        from bids_pcs.system_errors import killed_by_signal

        error = killed_by_signal(returncode, f"Study job {Path(job_file).stem}")
        return JobOutcome(returncode, seconds, error=str(error), run_wide=False)
    reported = _read_failure(failure) if returncode else {}
    return JobOutcome(returncode, seconds, error=reported.get("message"),
                      run_wide=bool(reported.get("run_wide")))


def failure_path(job_file: Path) -> Path:
    """Where a failed job leaves its one-sentence error for the study (beside its job file)."""
    return Path(job_file).with_suffix(".error.json")


def write_failure(job_file: Path, error: BidsPcsError) -> None:
    """Leave ``error`` for the study to show; best effort (the disk may be full)."""
    text = json.dumps({"message": str(error), "type": type(error).__name__,
                       "run_wide": bool(getattr(error, "run_wide", False))})
    with contextlib.suppress(OSError):
        failure_path(job_file).write_text(text)


def _read_failure(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


class StudyInterruptedError(BidsPcsError):
    """The study was stopped by SIGTERM; finished jobs are kept (rerun to continue)."""

    exit_code = 143  # 128 + SIGTERM, what schedulers expect of a pre-empted job


@contextlib.contextmanager
def _forward_sigterm(process: subprocess.Popen, name: str) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise StudyInterruptedError(
            f"The study was stopped by a signal while {name} ran; finished jobs are kept, "
            "rerun the same command to continue.")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop(process: subprocess.Popen) -> None:
    # the worker saves nothing partial: terminating it loses only the running job
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
