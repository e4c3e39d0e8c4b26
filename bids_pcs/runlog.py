"""Per-run logging, run ids, configuration dumps and progress display.

Every run writes ``OUTPUT_DIR/logs/<level>_<run id>.log`` (debug level) and
``OUTPUT_DIR/logs/<level>_<run id>_config.toml`` (the effective settings), so a
result can always be traced to the exact configuration that made it.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import secrets
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from bids_pcs import __version__

LOGGER = logging.getLogger("bids_pcs")
T = TypeVar("T")
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
# third-party loggers whose detail nobody reads: bidsschematools says "No schema
# path specified" on every load, fsspec logs each file it opens at DEBUG
_QUIET_LOGGERS = ("bids", "bidsschematools", "fsspec", "upath", "matplotlib", "PIL",
                  "urllib3", "asyncio")
_current_log: Path | None = None


def new_run_id() -> str:
    """A sortable, unique run id: ``20261128-215737-3fa9c1``."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{secrets.token_hex(3)}"


def setup_console_logging(verbose: int) -> None:
    """Console logging: INFO by default, DEBUG with ``-v``; quiet third-party loggers."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_bids_pcs_console", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._bids_pcs_console = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s", "%H:%M:%S"))
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        # Nipype logs every crashed node with its whole traceback; the console gets one
        # line per failed image from bids_pcs instead (the log file keeps it all)
        handler.addFilter(_not_nipype)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    quiet_third_party(verbose)


def quiet_third_party(verbose: int = 0) -> None:
    """Silence third-party chatter below WARNING (kept with ``-vv``).

    Nipype is not among them: its node lines belong in the run log, and the
    console handler filters them (see :mod:`bids_pcs.workflows.execution`).
    """
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)


def current_log() -> Path | None:
    """The log file of the run in progress in this process, if one was started."""
    return _current_log


def _not_nipype(record: logging.LogRecord) -> bool:
    return not record.name.startswith("nipype")


class RunLogHandler(logging.FileHandler):
    """The run log's file handler: a failed write (a full disk) stops it, quietly.

    ``logging`` would print a traceback to stderr for every record it cannot
    write; on a full OUTPUT_DIR that buries the one sentence saying so. The
    first failure is said once on stderr and the log stops there.
    """

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        if self.stream is not None:
            with contextlib.suppress(OSError):
                self.stream.close()
        self.stream = None
        self.setLevel(logging.CRITICAL + 1)  # nothing more is tried
        sys.stderr.write(f"bids_pcs: warning: the run log {self.baseFilename} stops here "
                         f"({exc.strerror}).\n")


def start_run_log(output_dir: Path, level: str, run_id: str) -> Path:
    """Attach a debug-level file handler under ``OUTPUT_DIR/logs``; return the log path."""
    logs = Path(output_dir) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"{level}_{run_id}.log"
    global _current_log
    handler = RunLogHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    _current_log = path
    LOGGER.info("bids_pcs %s, run %s, log %s", __version__, run_id, path)
    LOGGER.debug("command line: %s", " ".join(sys.argv))
    LOGGER.debug("pid %d, cwd %s", os.getpid(), os.getcwd())
    return path


def dump_config(output_dir: Path, level: str, run_id: str, settings) -> Path:
    """Write the effective settings of this run as TOML beside its log."""
    from bids_pcs.config import dump_settings_toml
    from bids_pcs.io.atomic import write_text

    path = Path(output_dir) / "logs" / f"{level}_{run_id}_config.toml"
    header = f"# bids_pcs {__version__}, run {run_id}, level {level}\n"
    write_text(path, header + dump_settings_toml(settings))
    return path


def progress(items: Iterable[T], *, desc: str, total: int | None = None,
             unit: str = "it") -> Iterator[T]:
    """Iterate with a progress bar on stderr and one log line per finished item."""
    from tqdm import tqdm

    items = list(items) if total is None and not hasattr(items, "__len__") else items
    count = total if total is not None else len(items)  # type: ignore[arg-type]
    bar = tqdm(items, desc=desc, total=count, unit=unit, file=sys.stderr,
               dynamic_ncols=True, disable=None, leave=True)
    for index, item in enumerate(bar, start=1):
        yield item
        LOGGER.debug("%s: %d/%d done", desc, index, count)
