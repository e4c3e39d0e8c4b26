"""Running a Nipype workflow quietly: its chatter in the run log, one console line per image.

Nipype gives its loggers a handler of their own that prints every node's
``[Node] Setting-up / Executing / Finished`` lines, and the full traceback of
each crashed node, to stdout, in the main process and in every MultiProc
worker (about 360 lines for the demo).  Here:

- :func:`quiet_nipype` takes Nipype's handler away, so its records reach only
  the app's handlers: the run log (everything) and, with ``-v``, the console;
- :class:`QuietMultiProc` starts MultiProc's worker processes with the same
  arrangement, their records appended to the run log;
- :class:`ImageProgress`, Nipype's ``status_callback``, logs one line when an
  image starts, and one when it is finished or has failed (with the reason).

Crash files are written as before (``WORK/crash``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

LOGGER = logging.getLogger("bids_pcs.preprocess")
# the last "SomeError: message" line of a traceback is the original exception
_EXCEPTION_LINE = re.compile(
    r"^\s*(?:[\w.]+\.)?(?P<type>\w*(?:Error|Exception)): (?P<message>.+)$")


def quiet_nipype() -> None:
    """Route Nipype's records to the app's handlers only, node chatter included (INFO).

    Nipype adds its stdout handler when it is first imported, so it is
    imported here first, then the handler goes.
    """
    import nipype  # noqa: F401

    nipype_logger = logging.getLogger("nipype")
    for handler in list(nipype_logger.handlers):
        nipype_logger.removeHandler(handler)
    nipype_logger.propagate = True
    for name in ("nipype.workflow", "nipype.interface"):
        logging.getLogger(name).setLevel(logging.INFO)


def failure_reason(lines: Iterable[str], node: str) -> str | None:
    """One phrase for the exception a traceback (or crash file) ends with, or None.

    An :class:`~bids_pcs.errors.ImageError` already says everything; anything
    else also says at which node it happened.
    """
    # Nipype's own wrapper says nothing about the cause: skip it
    messages = [m for m in map(_EXCEPTION_LINE.match, lines)
                if m and m["type"] != "NodeExecutionError"]
    if not messages:
        return None
    last = messages[-1]
    if last["type"] == "ImageError":
        return last["message"].strip()
    return f"failed at {node} ({last['type']}: {last['message'].strip()})"


def _init_worker(cwd: str, log_file: str | None) -> None:
    """A MultiProc worker: Nipype's set-up, its records appended to the run log."""
    from bids_pcs.runlog import LOG_FORMAT, quiet_third_party

    os.chdir(cwd)
    os.environ["NIPYPE_NO_ET"] = "1"  # as Nipype's own initializer: no telemetry
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    if log_file:
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    else:  # a library call without a run log: nothing on the console either
        root.addHandler(logging.NullHandler())
    quiet_nipype()
    quiet_third_party()


def quiet_multiproc(plugin_args: dict, log_file: Path | None):  # noqa: ANN201 - a plugin
    """Nipype's MultiProc plugin whose workers log into ``log_file`` instead of stdout.

    It is the :class:`~bids_pcs.workflows.multiproc.ResilientMultiProcPlugin`, so
    a worker killed by a signal (the out-of-memory killer) fails its own image only.
    """
    from bids_pcs.workflows.multiproc import ResilientMultiProcPlugin

    class QuietMultiProc(ResilientMultiProcPlugin):
        def __init__(self) -> None:
            super().__init__(plugin_args=plugin_args)
            # the pool starts its processes on the first task: none runs yet
            self.pool.shutdown(wait=False)
            # a pool started again after a worker was killed gets the same set-up
            self._initializer = _init_worker
            self._initargs = (self._cwd, str(log_file) if log_file else None)
            self.pool = ProcessPoolExecutor(
                max_workers=self.processors, initializer=self._initializer,
                initargs=self._initargs,
                mp_context=multiprocessing.get_context(plugin_args.get("mp_context")))

    return QuietMultiProc()


class ImageProgress:
    """Nipype ``status_callback``: one line per image started, finished or failed.

    Args:
        images: per-image workflow name -> the image's BIDS prefix.
        crash_dir: named in the line of a failed image.
        sink_prefix: name of each image's derivatives sink is this + its workflow name.

    ``failed`` holds, per prefix, the reason announced for each failed image.
    """

    def __init__(self, images: Mapping[str, str], crash_dir: Path,
                 sink_prefix: str = "ds_") -> None:
        self._images = dict(images)
        self._crash_dir = crash_dir
        self._sink_prefix = sink_prefix
        self._started: dict[str, float] = {}
        self.failed: dict[str, str] = {}

    def __call__(self, node, status: str) -> None:
        parts = node.fullname.split(".")
        owner = parts[1] if len(parts) > 1 else ""
        is_sink = owner.startswith(self._sink_prefix)
        name = owner[len(self._sink_prefix):] if is_sink else owner
        prefix = self._images.get(name)
        if prefix is None:
            return
        if status == "start" and name not in self._started:
            self._started[name] = time.monotonic()
            LOGGER.info("%s: preprocessing started", prefix)
        elif status == "end" and is_sink:
            began = self._started.get(name)
            took = f" in {time.monotonic() - began:.0f} s" if began else " (from the work dir)"
            LOGGER.info("%s: preprocessing finished%s", prefix, took)
        elif status == "exception" and prefix not in self.failed:
            reason = _node_failure(node) or f"failed at {node.name}"
            self.failed[prefix] = reason
            LOGGER.error("%s: preprocessing failed: %s (crash file in %s)", prefix, reason,
                         self._crash_dir)


def _node_failure(node) -> str | None:
    """The reason a node failed, from the result file its worker wrote."""
    try:
        traceback = node.result.runtime.traceback
    except Exception:  # noqa: BLE001 - no result file: the crash file will tell
        return None
    return failure_reason(str(traceback).splitlines(), node.name) if traceback else None
