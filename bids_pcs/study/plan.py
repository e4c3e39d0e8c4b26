"""The grid of the study: which pre-trainings and which fine-tunings to run, and their keys.

A *configuration* is one (initialisation method, fine-tuning strategy, fold,
label fraction, training seed); ``scratch`` is the baseline without
pre-training.  Every pre-training method of the grid is trained once per fold
and shared by all of its strategies, label fractions and training seeds (it
uses no labels; the seeds vary the fine-tuning).  A *row* of the results is a
(method, strategy, label fraction): its folds and seeds pooled.

Each job has a *key*: a digest of everything its result depends on (the
crops and labels, the split, the recipe sections it reads, the seed, the app
version).  A finished job whose stored key matches is reused on rerun; a
changed recipe, seed or label set makes a new key, so stale results are
recomputed instead of silently mixed in.

Usage::

    grid = plan_grid(settings.study, folds=[0])
    grid.pretrainings         # [Pretraining("reconstruction", 0), ...]
    grid.configurations       # [Configuration("scratch", "top", 0, 1.0, None), ...]
    grid.rows                 # [("scratch", "top", 1.0), ...]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bids_pcs import __version__
from bids_pcs.config import RecipeError, Settings, StudySettings
from bids_pcs.splits import StudySplit, check_label_fractions
from bids_pcs.study.scoring import NATIVE_SCORING

SCRATCH = "scratch"


@dataclass(frozen=True)
class Pretraining:
    """One self-supervised pre-training of the study (``method`` on a fold's training crops)."""

    method: str
    fold: int = 0

    @property
    def name(self) -> str:
        return f"pretrain-{self.method}{_fold_suffix(self.fold)}"


@dataclass(frozen=True)
class Configuration:
    """One fine-tuning: ``method`` (or scratch) x ``strategy`` on a fold's labels.

    Args:
        method, strategy: the grid cell.
        fold: 0 for the single split, 1..k for the folds.
        label_fraction: share of the fold's training participants whose labels
            fine-tune (nested subsets, :func:`bids_pcs.splits.label_subsets`).
        seed: the training seed; ``None``: the study's ``--seed`` (no
            ``[study] seeds`` given).
    """

    method: str
    strategy: str
    fold: int = 0
    label_fraction: float = 1.0
    seed: int | None = None

    @property
    def name(self) -> str:
        return (f"{self.method}-{self.strategy}{_fold_suffix(self.fold)}"
                f"{fraction_suffix(self.label_fraction)}"
                f"{'' if self.seed is None else f'_seed-{self.seed}'}")

    @property
    def row(self) -> tuple[str, str, float]:
        """The row of study.tsv it belongs to (folds and seeds pooled)."""
        return (self.method, self.strategy, self.label_fraction)

    def training_seed(self, study_seed: int) -> int:
        return study_seed if self.seed is None else self.seed

    @property
    def cell(self) -> str:
        """The grid cell regardless of fold (a row of study.tsv)."""
        return f"{self.method}-{self.strategy}"

    @property
    def pretraining(self) -> Pretraining | None:
        return None if self.method == SCRATCH else Pretraining(self.method, self.fold)


@dataclass(frozen=True)
class Grid:
    """What the study runs, in order.

    Args:
        methods, strategies, folds: the grid and its folds.
        label_fractions: shares of the training labels (largest first in the runs).
        seeds: training seeds; ``(None,)``: the study's seed only.
    """

    methods: tuple[str, ...]
    strategies: tuple[str, ...]
    folds: tuple[int, ...]
    label_fractions: tuple[float, ...] = (1.0,)
    seeds: tuple[int | None, ...] = (None,)

    @property
    def pretrainings(self) -> list[Pretraining]:
        return [Pretraining(m, f) for f in self.folds for m in self.methods if m != SCRATCH]

    @property
    def configurations(self) -> list[Configuration]:
        # all labels first: the headline grid is complete before the curves' extra points
        fractions = sorted(self.label_fractions, reverse=True)
        return [Configuration(m, s, f, fraction, seed) for seed in self.seeds
                for fraction in fractions for f in self.folds for m in self.methods
                for s in self.strategies]

    @property
    def cells(self) -> list[tuple[str, str]]:
        return [(m, s) for m in self.methods for s in self.strategies]

    @property
    def rows(self) -> list[tuple[str, str, float]]:
        """(method, strategy, label fraction) of every row of study.tsv, in table order."""
        return [(m, s, fraction) for fraction in sorted(self.label_fractions, reverse=True)
                for m, s in self.cells]

    def jobs_of_row(self, row: tuple[str, str, float]) -> list[Configuration]:
        """The configurations (every fold and seed) pooled into one row."""
        method, strategy, fraction = row
        return [Configuration(method, strategy, f, fraction, seed) for seed in self.seeds
                for f in self.folds]


def plan_grid(study: StudySettings, folds: Sequence[int], study_seed: int | None = None,
              ) -> Grid:
    """The grid of ``study.methods`` x ``study.strategies`` (duplicates dropped, order kept).

    A training seed equal to ``study_seed`` (the study's ``--seed``) is the
    study's own: its jobs are named and keyed as without ``[study] seeds``,
    so adding seeds to a finished study reuses what already ran.

    Raises:
        RecipeError: an unknown method or strategy, or an empty grid.
    """
    from bids_pcs.finetuning import available_strategies
    from bids_pcs.pretraining import available_methods

    methods = tuple(dict.fromkeys(study.methods))
    strategies = tuple(dict.fromkeys(study.strategies))
    known_methods = [SCRATCH, *available_methods()]
    known_strategies = available_strategies()
    for value, known, what in ((methods, known_methods, "methods"),
                               (strategies, known_strategies, "strategies")):
        if not value:
            raise RecipeError(f"[study] {what} is empty; give at least one of "
                              f"{', '.join(known)}.")
        unknown = [v for v in value if v not in known]
        if unknown:
            raise RecipeError(f"[study] {what} has unknown value(s) {', '.join(unknown)}; use "
                              f"{', '.join(known)}.")
    seeds: tuple[int | None, ...] = tuple(dict.fromkeys(
        None if s == study_seed else s for s in study.seeds)) or (None,)
    return Grid(methods=methods, strategies=strategies, folds=tuple(folds),
                label_fractions=check_label_fractions(study.label_fractions), seeds=seeds)


def pretraining_key(settings: Settings, job: Pretraining, split: StudySplit,
                    data_digest: str, pool_digest: str | None = None) -> str:
    """Digest of what a pre-training depends on: its crops (pool and split), recipe, seed."""
    plain = settings.to_dict()
    return _digest({
        "version": __version__,
        "job": job.name,
        "data": data_digest,
        "pool": pool_digest,
        "pretrain_pool": settings.study.pretrain_pool,
        # the training participants choose the crops in "train" mode, the held-out
        # ones (validation or test alike) those left out in "all" mode
        "train": list(split.train),
        "held_out": sorted({*split.validation, *split.test, *split.ood_test}),
        "seed": settings.run.seed,
        "device": settings.run.device,
        **{key: plain[key] for key in ("template", "crop", "intensity", "labels", "model")},
        # the recipe's own method is replaced by the job's, and only its own options count
        "pretrain": {k: v for k, v in plain["pretrain"].items() if k not in ("method", "options")},
        "method": job.method,
        "options": (plain["pretrain"]["options"] or {}).get(job.method),
    })


def configuration_key(settings: Settings, job: Configuration, split: StudySplit,
                      data_digest: str, pretrain_key: str | None) -> str:
    """Digest of what a configuration depends on: its (labelled) split, recipe, init, seeds."""
    plain = settings.to_dict()
    return _digest({
        "version": __version__,
        "scoring": NATIVE_SCORING,
        "job": job.name,
        "data": data_digest,
        "split": split.to_dict(),
        "seed": settings.run.seed,
        "training_seed": job.training_seed(settings.run.seed),
        "label_fraction": job.label_fraction,
        "device": settings.run.device,
        "init": pretrain_key,
        **{key: plain[key] for key in ("template", "crop", "intensity", "labels", "model",
                                       "inference")},
        # the recipe's own strategy is replaced by the job's, and only its own rate counts
        "finetune": {k: v for k, v in plain["finetune"].items()
                     if k not in ("strategy", "learning_rates", "learning_rate")},
        "strategy": job.strategy,
        "learning_rate": settings.finetune.learning_rate_for(job.strategy),
    })


def _digest(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fold_suffix(fold: int) -> str:
    return f"_fold-{fold}" if fold else ""


def fraction_suffix(fraction: float) -> str:
    """``_labels-25pct`` for a label fraction of 0.25; empty for all labels."""
    return "" if fraction >= 1.0 else f"_labels-{100 * fraction:g}pct"
