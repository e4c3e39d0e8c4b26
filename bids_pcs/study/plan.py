"""The grid of the study: which pre-trainings and which fine-tunings to run, and their keys.

A *configuration* is one (initialisation method, fine-tuning strategy, fold);
``scratch`` is the baseline without pre-training.  Every pre-training method
of the grid is trained once per fold and shared by all of its strategies.

Each job has a *key*: a digest of everything its result depends on (the
crops and labels, the split, the recipe sections it reads, the seed, the app
version).  A finished job whose stored key matches is reused on rerun; a
changed recipe, seed or label set makes a new key, so stale results are
recomputed instead of silently mixed in.

Usage::

    grid = plan_grid(settings.study, folds=[0])
    grid.pretrainings         # [Pretraining("reconstruction", 0), ...]
    grid.configurations       # [Configuration("scratch", "top", 0), ...]
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bids_pcs import __version__
from bids_pcs.config import RecipeError, Settings, StudySettings
from bids_pcs.splits import StudySplit

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
    """One cell of the grid: initialisation ``method`` (or scratch) x ``strategy``, on a fold."""

    method: str
    strategy: str
    fold: int = 0

    @property
    def name(self) -> str:
        return f"{self.method}-{self.strategy}{_fold_suffix(self.fold)}"

    @property
    def cell(self) -> str:
        """The grid cell regardless of fold (a row of study.tsv)."""
        return f"{self.method}-{self.strategy}"

    @property
    def pretraining(self) -> Pretraining | None:
        return None if self.method == SCRATCH else Pretraining(self.method, self.fold)


@dataclass(frozen=True)
class Grid:
    """What the study runs, in order."""

    methods: tuple[str, ...]
    strategies: tuple[str, ...]
    folds: tuple[int, ...]

    @property
    def pretrainings(self) -> list[Pretraining]:
        return [Pretraining(m, f) for f in self.folds for m in self.methods if m != SCRATCH]

    @property
    def configurations(self) -> list[Configuration]:
        return [Configuration(m, s, f) for f in self.folds for m in self.methods
                for s in self.strategies]

    @property
    def cells(self) -> list[tuple[str, str]]:
        return [(m, s) for m in self.methods for s in self.strategies]


def plan_grid(study: StudySettings, folds: Sequence[int]) -> Grid:
    """The grid of ``study.methods`` x ``study.strategies`` (duplicates dropped, order kept).

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
    return Grid(methods=methods, strategies=strategies, folds=tuple(folds))


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
        "held_out": sorted({*split.validation, *split.test}),
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
    """Digest of what a configuration depends on: its split, recipe, init and seed."""
    plain = settings.to_dict()
    return _digest({
        "version": __version__,
        "job": job.name,
        "data": data_digest,
        "split": split.to_dict(),
        "seed": settings.run.seed,
        "device": settings.run.device,
        "init": pretrain_key,
        **{key: plain[key] for key in ("template", "crop", "intensity", "labels", "model",
                                       "inference")},
        # the recipe's own strategy is replaced by the job's
        "finetune": {k: v for k, v in plain["finetune"].items() if k != "strategy"},
        "strategy": job.strategy,
    })


def _digest(data: dict[str, Any]) -> str:
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _fold_suffix(fold: int) -> str:
    return f"_fold-{fold}" if fold else ""
