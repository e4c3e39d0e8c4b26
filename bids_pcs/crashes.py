"""Nipype crash files read back: which image failed, at which step, and why.

The preprocessing workflow runs each image's nodes in worker processes; a node
that fails leaves a crash file (``WORK_DIR/crash/crash-*.txt``) holding its
traceback. :func:`crash_reasons` reads the original exception of each image's
first crash, and :func:`machine_error` says whether the machine caused it:

- a full disk, a read-only folder, too many open files: a run-wide
  :class:`~bids_pcs.system_errors.SystemResourceError` (every later image
  would fail the same way), naming the folder;
- memory exhausted, or the step's worker killed by a signal (see
  :mod:`bids_pcs.workflows.multiproc`): a reason for this image only, whose
  fix is the flags that lower memory (:data:`MEMORY_REASONS`).

Usage::

    crashes = crash_reasons(work / "crash", since=started)
    machine = machine_error(crashes.get("sub_01_wf"), image, run_folders(settings))
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bids_pcs.errors import BidsPcsError
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.system_errors import (
    RunFolder,
    error_from_text,
    free_space,
    signal_phrase,
    system_error,
)

# "Node: bids_pcs_preproc_wf.<image>_wf.<node>" opens every Nipype crash file; the
# derivatives sink of an image is "Node: bids_pcs_preproc_wf.ds_<image>_wf"
_CRASH_NODE = re.compile(
    r"^Node: [^.]+\.(?:ds_(?P<sink>[^.\s]+)$|(?P<workflow>[^.]+)\.(?P<node>\S+))")
SINK_STEP = "writing its derivatives"
# the last "SomeError: message" line of a crash file is the original exception
_CRASH_EXCEPTION = re.compile(
    r"^\s*(?:[\w.]+\.)?(?P<type>\w*(?:Error|Exception)): (?P<message>.+)$")


@dataclass(frozen=True)
class Crash:
    """The original exception of a crash file: at which step, its type and message."""

    step: str
    type: str
    message: str

    @property
    def reason(self) -> str:
        # an ImageError already says everything; anything else: say where it happened
        if self.type == "ImageError":
            return self.message
        return f"failed at {self.step} ({self.type}: {self.message})"


def machine_error(crash: Crash | None, image: T1wImage,
                  folders: Sequence[RunFolder]) -> BidsPcsError | str | None:
    """The machine's part in an image's failure, if it had one.

    A full disk, a read-only folder or too many open files come back as the
    run-wide :class:`~bids_pcs.system_errors.SystemResourceError`; running out
    of memory (or a worker killed by a signal) as a reason phrase for this
    image only (:data:`MEMORY_REASONS` words). Without a crash file, a full
    work dir or OUTPUT_DIR (where Nipype could not even write one) is the
    likely cause.
    """
    if crash is None:
        if not _nearly_full(folders):
            return None
        return system_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), folders=folders,
                            where=f"while preprocessing {image.prefix}")
    if crash.type == "WorkerKilledError":
        status = crash.message.rsplit(" ", 1)[-1]
        how = (signal_phrase(int(status)) if status.startswith("-") and status[1:].isdigit()
               else f"an exit with status {status}")
        return f"was killed at {crash.step} by {how}"
    where = (f"while writing the derivatives of {image.prefix}" if crash.step == SINK_STEP
             else f"while {image.prefix} ran {crash.step}")
    exc = error_from_text(crash.type, crash.message)
    error = system_error(exc, folders=folders, where=where) if exc is not None else None
    if error is None:
        # ITK and HDF5 report a failed write without an errno: a full folder says why
        if crash.type != "ImageError" and _nearly_full(folders):
            return system_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
                                folders=folders, where=where)
        return None
    if error.run_wide:
        return error
    return f"ran out of memory at {crash.step} ({crash.message[:120]})"


def _nearly_full(folders: Sequence[RunFolder]) -> bool:
    # under 1 MiB left: too little for the next node's outputs, or a crash file
    return any(f.writes and (free_space(f.path) or 0) < 2**20 for f in folders)


# the reason phrases of images stopped by memory, which get the memory flags as their fix
MEMORY_REASONS = ("ran out of memory at", "was killed at")


def crash_reasons(crash_dir: Path, since: float) -> dict[str, Crash]:
    """Per image workflow name, the exception of its first crash file written after ``since``."""
    reasons: dict[str, Crash] = {}
    if not crash_dir.is_dir():
        return reasons
    for path in sorted(crash_dir.glob("crash-*.txt"), key=lambda p: p.stat().st_mtime):
        if path.stat().st_mtime < since - 1:  # crash files of earlier runs
            continue
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            continue
        node = _CRASH_NODE.match(lines[0]) if lines else None
        if node is None:
            continue
        workflow, step = ((node["sink"], SINK_STEP) if node["sink"]
                          else (node["workflow"], node["node"]))
        if workflow in reasons:
            continue
        # Nipype's own wrapper says nothing about the cause: skip it
        messages = [m for m in map(_CRASH_EXCEPTION.match, lines)
                    if m and m["type"] != "NodeExecutionError"]
        if messages:
            last = messages[-1]
            reasons[workflow] = Crash(step, last["type"], last["message"].strip())
    return reasons
