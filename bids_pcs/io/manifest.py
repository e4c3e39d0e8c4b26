"""A derivative set written as a unit: its record, written last, lists every other file.

Each file is atomic (:mod:`bids_pcs.io.atomic`), but an image's set is several
files: the crops, transforms and their sidecars of preprocessing, or the maps
and table of inference. A run stopped between two of them (a full disk, a
kill) would leave a set that looks finished to a later level. So each set has
one *record* (the registration QC JSON; the PCS table's JSON) that

1. is removed before any file of the set is rewritten, and
2. is written last, listing every other file with its size and SHA-256
   (``"Files"``).

A set is complete only when its record exists and every file it lists is
there as recorded (:func:`set_problem`); every level treats anything else as
not done, and a rerun rewrites it.

Usage::

    record["Files"] = describe_files(written, folder=qc_path.parent)
    problem = set_problem(qc_path, members)   # None, or "… is missing"
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FILES_KEY = "Files"


def describe_files(paths: Iterable[str | Path], folder: Path) -> dict[str, dict[str, Any]]:
    """``{name relative to folder: {"Size": bytes, "SHA256": hex}}`` for each file."""
    folder = Path(folder)
    return {Path(path).relative_to(folder).as_posix():
            {"Size": Path(path).stat().st_size, "SHA256": sha256_of(Path(path))}
            for path in paths}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def files_problem(record: Mapping[str, Any], folder: Path) -> str | None:
    """None when every file of ``record["Files"]`` is in ``folder`` as recorded, else why not."""
    listed = record.get(FILES_KEY)
    if not isinstance(listed, Mapping) or not listed:
        return "the record lists no files"
    for name, expected in listed.items():
        path = Path(folder) / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if not isinstance(expected, Mapping) or size != expected.get("Size"):
            return f"{name} has {size} bytes, not the {expected.get('Size')} recorded"
        if sha256_of(path) != expected.get("SHA256"):
            return f"{name} differs from the file recorded (SHA-256)"
    return None


def set_problem(record_path: Path, members: Sequence[Path], *,
                require_files: bool = True) -> str | None:
    """Why the set of ``record_path`` is incomplete (None: complete, or nothing of it exists).

    Args:
        record_path: the set's record (JSON, written last); its ``"Files"`` say
            what the set holds.
        members: the files a set may hold besides the record: any of them
            without the record is an interrupted set.
        require_files: refuse a record without ``"Files"`` (else a record
            written before manifests existed is taken as complete).
    """
    if not record_path.is_file():
        if not set_exists(record_path, members):
            return None
        return f"{record_path.name}, written last, is missing"
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return f"{record_path.name} is not readable JSON"
    if not isinstance(record, dict):
        return f"{record_path.name} is not a JSON object"
    if FILES_KEY not in record:
        return None if not require_files else (
            f"{record_path.name} lists no files (an older version of bids_pcs wrote it)")
    return files_problem(record, record_path.parent)


def set_exists(record_path: Path, members: Sequence[Path]) -> bool:
    """Whether any file of the set is on disk."""
    return record_path.is_file() or any(p.is_file() for p in members)
