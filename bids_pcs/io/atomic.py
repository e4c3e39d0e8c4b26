"""Files that appear whole or not at all.

Every output is written under a temporary name in its final directory and
renamed into place (``os.replace`` is atomic on POSIX within one file system),
so a run killed mid-way leaves no half-written derivative, and concurrent runs
(an HPC job array) never see each other's partial files.

A process killed by SIGKILL cannot remove its temporary file; the name of
each temporary file therefore says which process wrote it
(``.<name>.<pid>@<host>.<random>.tmp<suffixes>``, hidden, and ignored by BIDS
tools), and :func:`remove_stale_temporaries` removes those whose writer is
gone when the next run starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    The temporary name keeps the final suffixes (``.nii.gz``), so writers that
    choose a format by extension (nibabel, matplotlib) still work.

    Example::

        with atomic_path(out / "x.nii.gz") as tmp:
            nib.save(img, tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{_owner()}.", suffix=f".tmp{suffix}",
                                    dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o644 & ~_umask())
        os.replace(tmp, final)
    except OSError as exc:
        # a write() into an open file (gzip, nibabel, torch) names no file: name the
        # destination, so a full disk or a read-only folder can be reported by name
        if exc.filename is None:
            exc.filename = str(final)
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


# ".<name>.<pid>@<host>.<8 random chars from mkstemp>.tmp<suffixes>"
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)@(?P<host>[^/]+?)\.[A-Za-z0-9_]{8}\.tmp(\..*)?$")
# a temporary file of another host is stale after this long (no write takes a day)
FOREIGN_TEMPORARY_MAX_AGE_S = 24 * 3600


def _owner() -> str:
    return f"{os.getpid()}@{os.uname().nodename}"


def remove_stale_temporaries(root: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files under ``root`` left by writers killed before their rename.

    A file is stale when its writer ran on this host and is no longer alive,
    or ran on another host more than :data:`FOREIGN_TEMPORARY_MAX_AGE_S`
    ago; files of live writers (a concurrent run) are left alone.

    Returns:
        The files removed.
    """
    removed: list[Path] = []
    host = os.uname().nodename
    now = time.time()
    for folder, _dirs, files in os.walk(root):
        for name in files:
            match = _TEMPORARY.match(name)
            if match is None:
                continue
            path = Path(folder) / name
            if match["host"] == host:
                stale = not _alive(int(match["pid"]))
            else:
                try:
                    stale = now - path.stat().st_mtime > FOREIGN_TEMPORARY_MAX_AGE_S
                except OSError:
                    continue
            if stale:
                with contextlib.suppress(OSError):
                    path.unlink()
                    removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Write ``data`` as indented, key-sorted JSON to ``path`` atomically."""
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=_jsonable) + "\n")


def _jsonable(value: Any) -> Any:
    # numpy scalars and arrays, paths and tuples end up in sidecars
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
