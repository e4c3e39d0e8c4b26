"""The study's results table: one row per configuration, written as study.tsv and study.json.

A row pools the configuration's folds (one fold without ``[study] folds``):
test scores with bootstrap intervals over the pooled test participants
(:mod:`bids_pcs.study.scoring`), means of the per-fold times, the largest
per-fold peak memory, and the parameter counts of its strategy.

Columns of ``study.tsv`` (``n/a`` where a value does not exist):

- ``configuration``, ``method`` (``scratch`` or the pre-training method), ``strategy``;
- ``n_folds``, ``n_train_participants`` (per fold, mean), ``n_test_participants``,
  ``n_test_crops`` (pooled);
- ``pretrain_images`` (T1w images the shared pre-training learnt from, per
  fold, mean; 0 from scratch), ``finetune_images`` and ``finetune_labels``
  (labelled images and labelled hemispheres fine-tuning learnt from, per fold,
  mean): self-supervision pays off where the first exceeds the second;
- each score of :data:`bids_pcs.study.scoring.METRICS` with ``<score>_ci_lower``
  and ``<score>_ci_upper`` (95 % bootstrap over participants);
- ``finetune_seconds`` (wall time of the fine-tuning loop, validation
  included), ``seconds_per_epoch`` (training part of an epoch), ``epochs``,
  ``best_epoch``; ``pretrain_seconds`` (the shared pre-training, 0 from
  scratch) and ``total_seconds`` (both);
- ``peak_memory_mb`` (fine-tuning process, see ``memory_kind``),
  ``baseline_memory_mb`` (held before training began),
  ``pretrain_peak_memory_mb``, ``memory_kind`` (``cuda_max_allocated`` or
  ``cpu_peak_rss``), ``device``;
- ``trainable_parameters``, ``frozen_parameters`` (parameters present while
  training that do not learn), ``adapter_parameters`` (LoRA's, merged away at
  export), ``total_parameters`` (the saved network), ``trainable_fraction``.

Usage::

    table = results_table(grid, configuration_records, pretraining_records,
                          n_resamples=1000, seed=0)
    write_table(study_dir / "study.tsv", table)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bids_pcs.io.atomic import write_text
from bids_pcs.study.plan import Configuration, Grid, Pretraining
from bids_pcs.study.scoring import METRICS, score_rows

IDENTITY_COLUMNS = ("configuration", "method", "strategy", "n_folds", "n_train_participants",
                    "n_test_participants", "n_test_crops", "pretrain_images", "finetune_images",
                    "finetune_labels")
COST_COLUMNS = ("finetune_seconds", "seconds_per_epoch", "epochs", "best_epoch",
                "pretrain_seconds", "total_seconds", "peak_memory_mb", "baseline_memory_mb",
                "pretrain_peak_memory_mb", "memory_kind", "device", "trainable_parameters",
                "frozen_parameters", "adapter_parameters", "total_parameters",
                "trainable_fraction")
COLUMNS: tuple[str, ...] = (
    *IDENTITY_COLUMNS,
    *(f"{m}{suffix}" for m in METRICS for suffix in ("", "_ci_lower", "_ci_upper")),
    *COST_COLUMNS,
)


def results_table(grid: Grid, configurations: Mapping[Configuration, dict[str, Any]],
                  pretrainings: Mapping[Pretraining, dict[str, Any]], *,
                  n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per grid cell whose every fold finished, in grid order."""
    rows = []
    for method, strategy in grid.cells:
        folds = [Configuration(method, strategy, f) for f in grid.folds]
        records = [configurations.get(job) for job in folds]
        if any(r is None for r in records):
            continue
        pre = [pretrainings.get(job.pretraining) for job in folds if job.pretraining]
        rows.append(_row(method, strategy, records, [p for p in pre if p], n_resamples, seed))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _row(method: str, strategy: str, records: list[dict[str, Any]],
         pretrainings: list[dict[str, Any]], n_resamples: int, seed: int) -> dict[str, Any]:
    test_rows = [row for record in records for row in record["test_rows"]]
    cis = score_rows(test_rows, n_resamples=n_resamples, seed=seed)
    first = records[0]
    pretrain_seconds = _mean([p["seconds"] for p in pretrainings]) if pretrainings else 0.0
    finetune_seconds = _mean([r["finetune_seconds"] for r in records])
    row: dict[str, Any] = {
        "configuration": f"{method}-{strategy}",
        "method": method,
        "strategy": strategy,
        "n_folds": len(records),
        "n_train_participants": _mean([r["n_train_participants"] for r in records]),
        "n_test_participants": len({row["participant"] for row in test_rows}),
        "n_test_crops": len(test_rows),
        "pretrain_images": (_mean([p.get("n_images", float("nan")) for p in pretrainings])
                            if pretrainings else 0),
        "finetune_images": _mean([r.get("n_train_images", float("nan")) for r in records]),
        "finetune_labels": _mean([r.get("n_train_labels", float("nan")) for r in records]),
    }
    for name, ci in cis.items():
        row[name], row[f"{name}_ci_lower"], row[f"{name}_ci_upper"] = (
            ci.estimate, ci.lower, ci.upper)
    training = first["training_parameters"]
    row.update({
        "finetune_seconds": finetune_seconds,
        "seconds_per_epoch": _mean([r["seconds_per_epoch"] for r in records]),
        "epochs": _mean([r["epochs"] for r in records]),
        "best_epoch": _mean([r["best_epoch"] for r in records]),
        "pretrain_seconds": pretrain_seconds,
        "total_seconds": pretrain_seconds + finetune_seconds,
        "peak_memory_mb": max(r["peak_memory_mb"] for r in records),
        "baseline_memory_mb": max(r["baseline_memory_mb"] for r in records),
        "pretrain_peak_memory_mb": (max(p["peak_memory_mb"] for p in pretrainings)
                                    if pretrainings else float("nan")),
        "memory_kind": first["memory_kind"],
        "device": first["device"],
        "trainable_parameters": first["trainable_parameters"],
        "frozen_parameters": training - first["trainable_parameters"],
        "adapter_parameters": training - first["total_parameters"],
        "total_parameters": first["total_parameters"],
        "trainable_fraction": first["trainable_fraction"],
    })
    return row


def table_to_tsv(table: pd.DataFrame) -> str:
    """study.tsv text: tab-separated, ``n/a`` for missing values, 6 significant digits."""
    lines = ["\t".join(table.columns)]
    for record in table.to_dict("records"):
        lines.append("\t".join(_cell(record[c]) for c in table.columns))
    return "\n".join(lines) + "\n"


def write_table(path: Path, table: pd.DataFrame) -> Path:
    """Write study.tsv atomically."""
    return write_text(path, table_to_tsv(table))


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float | np.floating):
        if float(value).is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{float(value):.6g}"
    return str(value)


def _mean(values: list[Any]) -> float:
    numbers = [float(v) for v in values if v is not None]
    return float(np.mean(numbers)) if numbers else float("nan")
