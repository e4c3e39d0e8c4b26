"""Per-job result files of the study: one JSON per pre-training and per configuration.

Each job's result is written atomically by the process that ran it, as soon
as it finishes, under ``OUTPUT_DIR/study/``:

- ``pretraining/<name>.json``: method, fold, time, memory, model directory;
- ``configurations/<name>.json``: strategy, init, time, memory, parameter
  counts, validation scores and one row per test crop (participant,
  hemisphere, true class, class probabilities, Dice, HD95), from which the
  table and its bootstrap intervals are computed.

A crash therefore loses at most the job that was running.  A record counts
as *done* only when its ``key`` matches the job's current key (see
:mod:`bids_pcs.study.plan`).

Usage::

    path = configuration_record_path(study_dir, job)
    record = read_done(path, key)          # None: run the job
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from bids_pcs.io.atomic import write_json
from bids_pcs.study.plan import Configuration, Pretraining

LOGGER = logging.getLogger(__name__)
PRETRAINING_DIR = "pretraining"
CONFIGURATION_DIR = "configurations"


def pretraining_record_path(study_dir: Path, job: Pretraining) -> Path:
    """``OUTPUT_DIR/study/pretraining/<name>.json``."""
    return Path(study_dir) / PRETRAINING_DIR / f"{job.name}.json"


def configuration_record_path(study_dir: Path, job: Configuration) -> Path:
    """``OUTPUT_DIR/study/configurations/<name>.json``."""
    return Path(study_dir) / CONFIGURATION_DIR / f"{job.name}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or ``None`` when missing or unreadable (then it is rerun)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        LOGGER.warning("Ignoring the unreadable study record %s; its job runs again.", path)
        return None
    return data if isinstance(data, dict) else None


def read_done(path: Path, key: str) -> dict[str, Any] | None:
    """The record at ``path`` if it is finished and made for ``key``; else ``None``."""
    record = read_record(path)
    if record is None:
        return None
    if record.get("key") != key:
        LOGGER.info("%s was made with other data or settings; %s runs again.", path.name,
                    path.stem)
        return None
    return record


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """Write a job's record atomically (whole or not at all), NaN written as ``null``."""
    return write_json(path, plain_json(record))


def plain_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by ``None`` (standard JSON has neither)."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain_json(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
