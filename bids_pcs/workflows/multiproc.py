"""Nipype's MultiProc plugin, made to survive a worker killed by a signal.

When the out-of-memory killer (or a scheduler over its memory limit) sends
SIGKILL to one of MultiProc's worker processes, Python's process pool breaks:
every running task fails with ``BrokenProcessPool``, which Nipype's result
callback does not expect, so the run waits forever (nipy/nipype#2548, seen in
fMRIPrep and XCP-D). This plugin instead

- records which task each worker runs (a small file per task, written by the
  worker before the node starts), so the task whose worker died is known;
- fails that task with a :data:`KILLED_MARKER` line carrying the worker's exit
  status (read back from the crash file by :mod:`bids_pcs.crashes`, which
  names the image, the step and the flags that lower memory);
- starts a new pool and resubmits the tasks that were only collateral damage
  (their workers were terminated by the broken pool), so the other images go on.

Usage (the preprocessing runs it through
:func:`bids_pcs.workflows.execution.quiet_multiproc`, whose workers log into the
run log)::

    workflow.run(plugin=ResilientMultiProcPlugin(plugin_args={"n_procs": 2}))
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from nipype.pipeline.plugins.multiproc import MultiProcPlugin, process_initializer, run_node

LOGGER = logging.getLogger("bids_pcs.preprocess")
# the line of a crash file that says a node's worker process died: "... status -9"
KILLED_MARKER = "WorkerKilledError: the worker process running this node ended with status"
# a task whose worker cannot be told apart is retried this often, then failed
_MAX_RETRIES = 2


def run_node_recording_pid(node, updatehash: bool, taskid: int, pid_dir: str) -> dict[str, Any]:
    """Nipype's ``run_node``, after noting which process runs ``taskid``."""
    Path(pid_dir, f"{taskid}.pid").write_text(str(os.getpid()))
    return run_node(node, updatehash, taskid)


class ResilientMultiProcPlugin(MultiProcPlugin):
    """MultiProc that reports a killed worker's task and resubmits the others.

    Args:
        plugin_args: as for Nipype's MultiProc (``n_procs``, ``memory_gb``,
            ``mp_context``...).
    """

    def __init__(self, plugin_args: dict[str, Any] | None = None) -> None:
        super().__init__(plugin_args=plugin_args)
        self._pid_dir = Path(tempfile.mkdtemp(prefix="bids_pcs_workers_"))
        self._jobs: dict[int, tuple[Any, bool]] = {}
        self._retries: dict[int, int] = {}
        self._resubmit: set[int] = set()
        self._broken: set[int] = set()
        # per task, the worker processes of the pool it went to (pid -> Process): a pool
        # replaced after breaking forgets its own (shutdown() drops them)
        self._workers_of: dict[int, dict[int, Any]] = {}
        self._mp_context = (plugin_args or {}).get("mp_context")
        self._initializer = process_initializer
        self._initargs: tuple[Any, ...] = (self._cwd,)

    def _submit_job(self, node, updatehash: bool = False) -> int:
        self._taskid += 1
        if getattr(node.interface, "terminal_output", "") == "stream":
            node.interface.terminal_output = "allatonce"
        self._jobs[self._taskid] = (node, updatehash)
        self._submit(self._taskid)
        return self._taskid

    def _submit(self, taskid: int) -> None:
        if getattr(self.pool, "_broken", False):
            self._new_pool()
        node, updatehash = self._jobs[taskid]
        future = self.pool.submit(run_node_recording_pid, node, updatehash, taskid,
                                  str(self._pid_dir))
        self._workers_of[taskid] = self.pool._processes  # the dict, filled as workers start
        self._task_obj[taskid] = future
        future.add_done_callback(lambda done, taskid=taskid: self._on_done(taskid, done))

    def _new_pool(self) -> None:
        import multiprocessing as mp

        self.pool.shutdown(wait=False)
        context = mp.get_context(self._mp_context) if self._mp_context else None
        self.pool = ProcessPoolExecutor(max_workers=self.processors,
                                        initializer=self._initializer,
                                        initargs=self._initargs, mp_context=context)

    def _on_done(self, taskid: int, future: Future) -> None:
        # runs in the pool's manager thread: record, never raise
        try:
            result = future.result()
        except BrokenProcessPool:
            # told apart in the main thread, once the broken pool has stopped its workers
            self._broken.add(taskid)
            return
        except BaseException as exc:  # noqa: BLE001 - anything else becomes the node's crash
            result = {"result": None, "taskid": taskid,
                      "traceback": [f"{type(exc).__name__}: {exc}\n"]}
        self._taskresult[taskid] = result

    def _classify_broken(self, taskid: int) -> None:
        """Fail ``taskid`` if its own worker was killed; else resubmit it."""
        self._broken.discard(taskid)
        status = self._worker_status(taskid)
        self._retries[taskid] = self._retries.get(taskid, 0) + 1
        killed = status is not None and status not in (0, -signal.SIGTERM)
        LOGGER.debug("task %d (%s): the process pool broke; its worker's status %s",
                     taskid, self._jobs[taskid][0].fullname, status)
        if killed or self._retries[taskid] > _MAX_RETRIES:
            self._taskresult[taskid] = {
                "result": None, "taskid": taskid,
                "traceback": [f"bids_pcs.workflows.multiproc.{KILLED_MARKER} "
                              f"{status if status is not None else 'unknown'}\n"]}
        else:  # terminated by the broken pool, or never started: run it again
            self._resubmit.add(taskid)

    def _worker_status(self, taskid: int) -> int | None:
        """Exit status of the worker that ran ``taskid`` (None: it never started)."""
        try:
            pid = int((self._pid_dir / f"{taskid}.pid").read_text())
        except (OSError, ValueError):
            return None
        process = (self._workers_of.get(taskid) or {}).get(pid)
        if process is None:
            return None
        # the broken pool terminates its other workers: wait until this one has ended
        process.join(timeout=30)
        return process.exitcode

    def _get_result(self, taskid: int):
        if taskid in self._broken:
            self._classify_broken(taskid)
        if taskid in self._resubmit:
            self._resubmit.discard(taskid)
            self._submit(taskid)
            return None
        return self._taskresult.get(taskid)

    def _clear_task(self, taskid: int) -> None:
        super()._clear_task(taskid)
        self._jobs.pop(taskid, None)
        self._workers_of.pop(taskid, None)
        (self._pid_dir / f"{taskid}.pid").unlink(missing_ok=True)

    def _postrun_check(self) -> None:
        super()._postrun_check()
        shutil.rmtree(self._pid_dir, ignore_errors=True)
