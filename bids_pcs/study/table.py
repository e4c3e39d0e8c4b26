"""The study's results table: one row per method x strategy x label fraction (study.tsv).

A row pools its folds (each participant tested once) and its training seeds
(:mod:`bids_pcs.study.scoring`): test scores on the native T1w grid with 95 %
participant-bootstrap intervals, the number of hemispheres each rests on and
the spread over seeds; *paired* differences against scratch with the same
strategy and against full fine-tuning with the same method (same label
fraction), from the same participant resamples; means of the per-job times,
the largest peak memory, and the parameter counts of the strategy.

Columns of ``study.tsv`` (``n/a`` where a value does not exist):

- ``configuration`` (``<method>-<strategy>[_labels-<pct>pct]``), ``method``
  (``scratch`` or the pre-training method), ``strategy``, ``label_fraction``;
- ``n_labelled_participants`` (whose labels fine-tuned, per fold, mean),
  ``n_train_participants`` (the training part they are drawn from),
  ``pretrain_images`` (T1w images the shared pre-training learnt from, per
  fold, mean; 0 from scratch), ``finetune_images`` and ``finetune_labels``
  (labelled images and labelled hemispheres fine-tuning learnt from, per fold,
  mean): self-supervision pays off where the first exceeds the second;
  ``n_seeds``, ``n_folds``, ``n_test_participants``, ``n_test_hemispheres``;
- each score of :data:`~bids_pcs.study.scoring.METRICS` with
  ``<score>_ci_lower``, ``<score>_ci_upper``, ``<score>_n`` (hemispheres it
  rests on, mean over seeds) and ``<score>_seed_sd``;
- for each score of :data:`~bids_pcs.study.scoring.PAIRED_METRICS`:
  ``<score>_vs_scratch`` and ``<score>_vs_full`` (this row minus the
  reference row) with ``_ci_lower`` / ``_ci_upper`` (paired 95 % interval);
  ``n/a`` for the reference itself or where it did not finish;
- ``learning_rate`` (the strategy's base rate), ``finetune_seconds`` (wall
  time of the fine-tuning loop, validation included), ``seconds_per_epoch``,
  ``epochs``, ``best_epoch``; ``pretrain_seconds`` (the shared pre-training,
  0 from scratch) and ``total_seconds`` (both);
- with ``[study] test_on``: ``n_ood_test_participants``,
  ``n_ood_test_hemispheres`` and every score again as ``ood_<score>`` (with
  its interval) on the out-of-distribution participants, beside the
  in-distribution one (``n/a`` without ``test_on``);
- ``peak_memory_mb`` (fine-tuning process, see ``memory_kind``),
  ``baseline_memory_mb``, ``pretrain_peak_memory_mb``, ``memory_kind``
  (``cuda_max_allocated`` or ``cpu_peak_rss``), ``device``;
- ``trainable_parameters``, ``frozen_parameters`` (present while training,
  not learning), ``adapter_parameters`` (LoRA's, merged away at export),
  ``total_parameters`` (the saved network), ``trainable_fraction``.

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
from bids_pcs.metrics import BootstrapDraws
from bids_pcs.study.plan import SCRATCH, Configuration, Grid, Pretraining, fraction_suffix
from bids_pcs.study.scoring import LEVEL, METRICS, PAIRED_METRICS, ScoredRuns

REFERENCES = {"scratch": "same strategy from scratch", "full": "same method, full fine-tuning"}
IDENTITY_COLUMNS = ("configuration", "method", "strategy", "label_fraction",
                    "n_labelled_participants", "n_train_participants", "pretrain_images",
                    "finetune_images", "finetune_labels", "n_seeds", "n_folds",
                    "n_test_participants", "n_test_hemispheres")
COST_COLUMNS = ("learning_rate", "finetune_seconds", "seconds_per_epoch", "epochs",
                "best_epoch", "pretrain_seconds", "total_seconds", "peak_memory_mb",
                "baseline_memory_mb", "pretrain_peak_memory_mb", "memory_kind", "device",
                "trainable_parameters", "frozen_parameters", "adapter_parameters",
                "total_parameters", "trainable_fraction")
OOD_PREFIX = "ood_"
COLUMNS: tuple[str, ...] = (
    *IDENTITY_COLUMNS,
    *(f"{m}{suffix}" for m in METRICS
      for suffix in ("", "_ci_lower", "_ci_upper", "_n", "_seed_sd")),
    *(f"{m}_vs_{ref}{suffix}" for m in PAIRED_METRICS for ref in REFERENCES
      for suffix in ("", "_ci_lower", "_ci_upper")),
    "n_ood_test_participants", "n_ood_test_hemispheres",
    *(f"{OOD_PREFIX}{m}{suffix}" for m in METRICS for suffix in ("", "_ci_lower", "_ci_upper")),
    *COST_COLUMNS,
)


def results_table(grid: Grid, configurations: Mapping[Configuration, dict[str, Any]],
                  pretrainings: Mapping[Pretraining, dict[str, Any]], *,
                  n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per (method, strategy, label fraction) whose every fold and seed finished."""
    rows: list[dict[str, Any]] = []
    draws: dict[tuple[str, str, float], BootstrapDraws | dict[str, float]] = {}
    for key in grid.rows:
        jobs = grid.jobs_of_row(key)
        records = [configurations.get(job) for job in jobs]
        if any(r is None for r in records):
            continue
        by_seed: dict[int | None, list[dict[str, Any]]] = {}
        for job, record in zip(jobs, records, strict=True):
            by_seed.setdefault(job.seed, []).extend(record["test_rows"])
        runs = ScoredRuns.from_records(list(by_seed.values()))
        drawn = runs.draws(n_resamples, seed) if n_resamples > 0 else runs.scores()
        draws[key] = drawn
        pre = [pretrainings.get(job.pretraining) for job in jobs if job.pretraining]
        rows.append(_row(key, records, [p for p in pre if p], runs, drawn, len(grid.folds)))
        rows[-1].update(_ood_scores([job.seed for job in jobs], records, n_resamples, seed))
    for row in rows:
        key = (row["method"], row["strategy"], row["label_fraction"])
        references = {"scratch": (SCRATCH, row["strategy"], row["label_fraction"]),
                      "full": (row["method"], "full", row["label_fraction"])}
        for name, reference in references.items():
            if reference == key or reference not in draws:
                continue
            for metric in PAIRED_METRICS:
                row.update(_difference(draws[key], draws[reference], metric, f"_vs_{name}"))
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _row(key: tuple[str, str, float], records: list[dict[str, Any]],
         pretrainings: list[dict[str, Any]], runs: ScoredRuns,
         drawn: BootstrapDraws | dict[str, float], n_folds: int) -> dict[str, Any]:
    method, strategy, fraction = key
    first = records[0]
    pretrain_seconds = _mean([p["seconds"] for p in pretrainings]) if pretrainings else 0.0
    finetune_seconds = _mean([r["finetune_seconds"] for r in records])
    row: dict[str, Any] = {
        "configuration": f"{method}-{strategy}{fraction_suffix(fraction)}",
        "method": method, "strategy": strategy, "label_fraction": fraction,
        "n_labelled_participants": _mean([r.get("n_labelled_participants",
                                                r["n_train_participants"]) for r in records]),
        "n_train_participants": _mean([r["n_train_participants"] for r in records]),
        "pretrain_images": (_mean([p.get("n_images", float("nan")) for p in pretrainings])
                            if pretrainings else 0),
        "finetune_images": _mean([r.get("n_train_images", float("nan")) for r in records]),
        "finetune_labels": _mean([r.get("n_train_labels", float("nan")) for r in records]),
        "n_seeds": runs.n_seeds, "n_folds": n_folds,
        "n_test_participants": len(set(runs.participants)),
        "n_test_hemispheres": len(runs.crops),
    }
    estimate = drawn.estimate if isinstance(drawn, BootstrapDraws) else drawn
    spread = runs.seed_spread()
    for name in METRICS:
        low = high = float("nan")
        if isinstance(drawn, BootstrapDraws):
            interval = drawn.interval(name, LEVEL)
            low, high = interval.lower, interval.upper
        row.update({name: estimate[name], f"{name}_ci_lower": low, f"{name}_ci_upper": high,
                    f"{name}_n": estimate[f"{name}_n"], f"{name}_seed_sd": spread[name]})
    training = first["training_parameters"]
    row.update({
        "learning_rate": first.get("learning_rate"),
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


def _ood_scores(seeds: list[int | None], records: list[dict[str, Any]], n_resamples: int,
                seed: int) -> dict[str, Any]:
    """``ood_<score>`` of one row (``[study] test_on``; empty without it).

    Every fold's model predicts the same out-of-distribution participants; the
    rows of all folds are pooled per training seed, and the bootstrap
    resamples participants with all their rows.
    """
    if not records or not all(record.get("ood_test_rows") for record in records):
        return {}
    by_seed: dict[int | None, list[dict[str, Any]]] = {}
    for job_seed, record in zip(seeds, records, strict=True):
        by_seed.setdefault(job_seed, []).extend(record["ood_test_rows"])
    runs = ScoredRuns.from_records(list(by_seed.values()))
    drawn = runs.draws(n_resamples, seed) if n_resamples > 0 else runs.scores()
    estimate = drawn.estimate if isinstance(drawn, BootstrapDraws) else drawn
    out: dict[str, Any] = {"n_ood_test_participants": len(set(runs.participants)),
                           "n_ood_test_hemispheres": len(set(runs.crops))}
    for name in METRICS:
        low = high = float("nan")
        if isinstance(drawn, BootstrapDraws):
            interval = drawn.interval(name, LEVEL)
            low, high = interval.lower, interval.upper
        key = OOD_PREFIX + name
        out.update({key: estimate[name], f"{key}_ci_lower": low, f"{key}_ci_upper": high})
    return out


def _difference(mine: BootstrapDraws | dict[str, float],
                reference: BootstrapDraws | dict[str, float], metric: str,
                suffix: str) -> dict[str, float]:
    if isinstance(mine, BootstrapDraws) and isinstance(reference, BootstrapDraws):
        interval = mine.difference(reference, metric, LEVEL)
        values = (interval.estimate, interval.lower, interval.upper)
    else:  # no resampling asked for: the difference of the estimates only
        estimate = (mine.estimate if isinstance(mine, BootstrapDraws) else mine)[metric] - (
            reference.estimate if isinstance(reference, BootstrapDraws) else reference)[metric]
        values = (estimate, float("nan"), float("nan"))
    name = f"{metric}{suffix}"
    return dict(zip((name, f"{name}_ci_lower", f"{name}_ci_upper"), values, strict=True))


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
