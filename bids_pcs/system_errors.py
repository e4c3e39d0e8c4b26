"""Errors that come from the machine, not the data, said in one sentence whatever layer meets them.

A full disk, a read-only or forbidden folder, memory exhausted (or a process
killed by a signal, on Linux usually the out-of-memory killer) and too many
open files reach bids_pcs as an ``OSError`` or ``MemoryError`` from any layer:
a Nipype node (read back from its crash file), the NIfTI writer, a model or
checkpoint save, a report, a study job. :func:`system_error` turns each into
a :class:`SystemResourceError` whose message names the folder (with its free
space) or the step, and the fix; any other exception gives ``None`` (a bug,
or an input problem with an error of its own).

Usage::

    try:
        save_model(model_dir, network, card)
    except (OSError, MemoryError) as exc:
        raise system_error(exc, folders=run_folders(settings)) or exc
"""

from __future__ import annotations

import errno
import os
import re
import resource
import shutil
import signal
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bids_pcs.errors import BidsPcsError

# what lowers the memory a run needs, named in every out-of-memory sentence
MEMORY_FLAGS = ("--nprocs (images preprocessed at once) or --omp-nthreads (threads per "
                "process), or give --mem-gb the memory the job really has")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_TOO_MANY_FILES = (errno.EMFILE, errno.ENFILE)
# "[Errno 28] No space left on device: '/a' -> '/b'" (str() of an OSError, in crash files)
_OS_ERROR_TEXT = re.compile(
    r"\[Errno (?P<errno>\d+)\] (?P<strerror>[^:]+?)(?:: '(?P<f1>.*?)'(?: -> '(?P<f2>.*?)')?)?$")


class SystemResourceError(BidsPcsError):
    """The machine stopped the work: disk space, permissions, memory or file handles.

    ``run_wide`` says whether every later image would meet it too (a full
    disk), so a run stops at once instead of failing each image in turn.
    """

    run_wide = True


class DiskFullError(SystemResourceError):
    """No space left (or the quota is full) where the run writes."""


class NotWritableError(SystemResourceError):
    """A folder is read-only, or this user may not write (or read) there."""


class OutOfMemoryError(SystemResourceError):
    """Memory ran out, or a process was killed by a signal (usually the OOM killer)."""

    run_wide = False


class TooManyOpenFilesError(SystemResourceError):
    """The limit on open files (``ulimit -n``) was reached."""


@dataclass(frozen=True)
class RunFolder:
    """A folder a run reads or writes, with what to say about it.

    Args:
        path: the folder.
        role: how the user knows it (``"OUTPUT_DIR"``, ``"the work directory"``).
        alternative: what else to choose (``"another OUTPUT_DIR"``).
        writes: whether the run writes there (else it only reads it).
    """

    path: Path
    role: str
    alternative: str
    writes: bool = True


def run_folders(settings) -> tuple[RunFolder, ...]:
    """The folders of a run (most specific first, so the work dir wins over TMPDIR)."""
    run = settings.run
    folders = [RunFolder(Path(run.output_dir), "OUTPUT_DIR", "another OUTPUT_DIR")]
    if run.work_dir:
        folders.append(RunFolder(Path(run.work_dir), "the work directory",
                                 "another --work-dir"))
    folders.append(RunFolder(Path(tempfile.gettempdir()), "the temporary directory",
                             "another TMPDIR"))
    for path, role in ((run.bids_dir, "BIDS_DIR"), (run.labels, "the label dataset"),
                       (run.model, "the model directory")):
        if path:
            folders.append(RunFolder(Path(path), role, "", writes=False))
    return tuple(folders)


def system_error(exc: BaseException, *, folders: Sequence[RunFolder] = (),
                 where: str = "") -> SystemResourceError | None:
    """The one-sentence error for ``exc`` when the machine caused it, else ``None``.

    Args:
        exc: the exception met (an ``OSError`` or ``MemoryError``; others give None).
        folders: the run's folders (:func:`run_folders`), to name a folder's role
            and, when the error does not name a file, to find the full one.
        where: what was being done, as a phrase (``"while sub-01 ran register"``).
    """
    if isinstance(exc, SystemResourceError):
        return exc
    where = f" {where}" if where else ""
    if isinstance(exc, MemoryError):
        detail = f" ({_first_line(exc)})" if str(exc).strip() else ""
        return OutOfMemoryError(f"Out of memory{where}{detail}; lower {MEMORY_FLAGS}, or run "
                                "on a machine with more memory.")
    if not isinstance(exc, OSError) or exc.errno is None:
        return None
    # a copy or rename names its source first: the destination is where it failed
    path = exc.filename2 or exc.filename
    path = os.fsdecode(path) if isinstance(path, str | bytes) else None
    if exc.errno in _DISK_FULL:
        return _disk_full(exc, path, folders, where)
    if exc.errno in _NOT_WRITABLE:
        return _not_writable(exc, path, folders, where)
    if exc.errno in _TOO_MANY_FILES:
        return _too_many_files(exc, where)
    if exc.errno == errno.ENOMEM:
        return OutOfMemoryError(f"Out of memory{where} ({exc.strerror}); lower "
                                f"{MEMORY_FLAGS}, or run on a machine with more memory.")
    return None


def killed_by_signal(returncode: int, what: str) -> OutOfMemoryError:
    """The error for a process that ended with ``-signal`` (``what``: ``"sub-01's register"``).

    SIGKILL is what the Linux out-of-memory killer (and a scheduler over its
    memory limit) sends, so the sentence names the flags that lower memory.
    """
    return OutOfMemoryError(f"{what} was killed by {signal_phrase(returncode)}; if memory ran "
                            f"out, lower {MEMORY_FLAGS} and rerun: finished work is kept.")


def signal_phrase(returncode: int) -> str:
    """``-9`` -> ``"SIGKILL (signal 9, which the out-of-memory killer ... sends)"``."""
    number = -returncode
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    why = (", which the out-of-memory killer or a scheduler's memory limit sends"
           if number == signal.SIGKILL else "")
    return f"{name} (signal {number}{why})"


def error_from_text(type_name: str, message: str) -> BaseException | None:
    """Rebuild an ``OSError`` or ``MemoryError`` from its text (a crash file's last line)."""
    if type_name.endswith("MemoryError"):  # numpy raises its own _ArrayMemoryError
        return MemoryError(message)
    match = _OS_ERROR_TEXT.search(message.strip())
    if match is None or not (type_name.endswith("Error") and _is_os_error(type_name)):
        return None
    return OSError(int(match["errno"]), match["strerror"], match["f1"], None, match["f2"])


def _is_os_error(type_name: str) -> bool:
    import builtins

    kind = getattr(builtins, type_name, None)
    # nipype wraps some as its own types; their text still carries "[Errno N]"
    return kind is None or (isinstance(kind, type) and issubclass(kind, OSError))


def free_space(path: str | os.PathLike[str]) -> int | None:
    """Bytes free to this user on the file system of ``path`` (its nearest existing parent)."""
    folder = existing_parent(Path(path))
    try:
        stats = os.statvfs(folder)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def existing_parent(path: Path) -> Path:
    """``path`` if it exists, else its nearest existing parent."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def human_size(n_bytes: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    size = float(n_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover


def _disk_full(exc: OSError, path: str | None, folders: Sequence[RunFolder],
               where: str) -> DiskFullError:
    if path is None:
        # a write() on an open file says nothing about where: take the fullest run folder
        writable = [f for f in folders if f.writes]
        spaces = [(free_space(f.path), f) for f in writable]
        known = [(space, f) for space, f in spaces if space is not None]
        if known:
            path = str(min(known, key=lambda item: item[0])[1].path)
    folder = existing_parent(Path(path).parent if path and not Path(path).is_dir()
                             else Path(path or tempfile.gettempdir()))
    role = _role(folder, folders)
    free = free_space(folder)
    total = shutil.disk_usage(folder).total if folder.exists() else None
    space = (f"{human_size(free)} free of {human_size(total)}" if free is not None and total
             else "free space unknown")
    label = f"{role.role}, " if role else ""
    choose = f"choose {role.alternative}" if role and role.alternative else "write elsewhere"
    if exc.errno == errno.EDQUOT:
        return DiskFullError(f"Disk quota exceeded in {folder} ({label}{space} on the device)"
                             f"{where}; free space within your quota or {choose}, then rerun: "
                             "finished work is kept.")
    return DiskFullError(f"No space left on the device of {folder} ({label}{space}){where}; "
                         f"free space there or {choose}, then rerun: finished work is kept.")


def _not_writable(exc: OSError, path: str | None, folders: Sequence[RunFolder],
                  where: str) -> NotWritableError:
    target = Path(path) if path else None
    role = _role(target, folders) if target else None
    if role is not None and not role.writes:
        return NotWritableError(f"{target} cannot be read ({exc.strerror}; it is in "
                                f"{role.role}){where}; give this user read access to it.")
    folder = existing_parent(target.parent if target and not target.is_dir() else
                             target or Path.cwd())
    label = f" ({role.role})" if role else ""
    choose = f" or choose {role.alternative}" if role and role.alternative else ""
    if exc.errno == errno.EROFS:
        return NotWritableError(f"{folder}{label} is on a read-only file system{where}; "
                                f"mount it writable{choose}.")
    return NotWritableError(f"{folder}{label} is not writable by this user ({exc.strerror})"
                            f"{where}; give this user write access to it{choose}.")


def _too_many_files(exc: OSError, where: str) -> TooManyOpenFilesError:
    if exc.errno == errno.ENFILE:
        return TooManyOpenFilesError(f"The system's table of open files is full{where}; "
                                     "lower --nprocs, or ask the administrator to raise "
                                     "fs.file-max.")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= soft:
        fix = (f"the hard limit is {hard} too, so ask the administrator to raise it (or "
               "lower --nprocs)")
    else:
        raise_to = 4096 if hard == resource.RLIM_INFINITY else min(hard, 4096)
        fix = f"raise it before the run (`ulimit -n {raise_to}`) or lower --nprocs"
    return TooManyOpenFilesError(f"Too many open files{where} (this process may open {soft} "
                                 f"at once, see `ulimit -n`); {fix}.")


def _role(path: Path | None, folders: Sequence[RunFolder]) -> RunFolder | None:
    """The run folder holding ``path`` (the deepest, when they nest)."""
    if path is None:
        return None
    path = Path(os.path.abspath(path))
    holding = [f for f in folders
               if path == Path(os.path.abspath(f.path))
               or Path(os.path.abspath(f.path)) in path.parents]
    return max(holding, key=lambda f: len(Path(os.path.abspath(f.path)).parts), default=None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__
