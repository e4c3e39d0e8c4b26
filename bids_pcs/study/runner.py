"""The study's job runner: each pre-training and configuration in turn, finished ones skipped.

:class:`JobRunner` turns a planned job (:mod:`bids_pcs.study.plan`) into a job
file, runs it in its own process (:mod:`bids_pcs.study.jobs`), and reads back
its record (:mod:`bids_pcs.study.records`); a job whose record was made with
the same key (data, split, settings, initial model) is skipped.  A failed
pre-training fails the configurations that start from it; every failure is
listed in ``failed`` and the others go on.

Usage::

    runner = JobRunner(settings, cache, {s.fold: s for s in splits}, study_dir, work_dir,
                       total=len(grid.pretrainings) + len(grid.configurations))
    for job in grid.pretrainings:
        runner.pretraining(job)
    for job in grid.configurations:
        runner.configuration(job)
    runner.configurations, runner.failed
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_pcs.config import Settings
from bids_pcs.errors import BidsPcsError
from bids_pcs.models.model_io import read_model_card
from bids_pcs.splits import StudySplit, labelled_split
from bids_pcs.study.crops import CropCache
from bids_pcs.study.jobs import run_job, write_job
from bids_pcs.study.plan import (
    SCRATCH,
    Configuration,
    Pretraining,
    configuration_key,
    pretraining_key,
)
from bids_pcs.study.pool import PoolCache
from bids_pcs.study.records import (
    configuration_record_path,
    pretraining_record_path,
    read_done,
)
from bids_pcs.system_errors import SystemResourceError

LOGGER = logging.getLogger("bids_pcs.levels.study")
MODEL_PREFIX = "study-"


@dataclass
class JobRunner:
    """Runs the jobs one by one, skipping finished ones, with progress and time estimates.

    Args:
        settings: the study's settings (passed whole to every job).
        cache: the labelled crops every job reads.
        splits: fold -> split.
        study_dir: ``OUTPUT_DIR/study`` (job records).
        work_dir: where job files go.
        total: jobs in the grid (for the ``[n/total]`` progress).
        pool: the pre-training pool (``None``: pre-trainings read the labelled
            training crops).
        strata: participant -> stratum, for the label fractions' subsets.
    """

    settings: Settings
    cache: CropCache
    splits: dict[int, StudySplit]
    study_dir: Path
    work_dir: Path
    total: int
    pool: PoolCache | None = None
    strata: dict[str, int] = field(default_factory=dict)
    pretrainings: dict[Pretraining, dict[str, Any]] = field(default_factory=dict)
    configurations: dict[Configuration, dict[str, Any]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"pretrain": [],
                                                                      "finetune": []})
    position: int = 0
    started: float = field(default_factory=time.perf_counter)

    def pretraining(self, job: Pretraining) -> None:
        split = self.splits[job.fold]
        key = pretraining_key(self.settings, job, split, self.cache.data_digest,
                              self.pool.data_digest if self.pool is not None else None)
        path = pretraining_record_path(self.study_dir, job)
        model_dir = self._model_dir(job.name)
        record = read_done(path, key)
        if record is not None and _model_intact(model_dir, record.get("model_sha256")):
            self._skip(job.name, record)
            self.pretrainings[job] = record
            return
        spec = {"kind": "pretrain", "method": job.method, "fold": job.fold,
                "pool": self.pool.to_dict() if self.pool is not None else None}
        record = self._run(job.name, key, path, model_dir, split, spec)
        if record is not None:
            self.pretrainings[job] = record

    def configuration(self, job: Configuration) -> None:
        training_seed = job.training_seed(self.settings.run.seed)
        full = self.splits[job.fold]
        # the labelled subset depends on the training seed: the spread over seeds includes
        # which participants happened to be labelled
        split = labelled_split(full, self.strata, job.label_fraction, seed=training_seed)
        pretrained = self.pretrainings.get(job.pretraining) if job.pretraining else None
        if job.pretraining is not None and pretrained is None:
            self.position += 1
            LOGGER.warning("[%d/%d] %s skipped: its pre-training %s failed.", self.position,
                           self.total, job.name, job.pretraining.name)
            self.failed.append(job.name)
            return
        init_digest = pretrained["model_sha256"] if pretrained else None
        key = configuration_key(self.settings, job, split, self.cache.data_digest, init_digest)
        path = configuration_record_path(self.study_dir, job)
        record = read_done(path, key)
        if record is not None:
            self._skip(job.name, record)
            self.configurations[job] = record
            return
        spec = {"kind": "finetune", "method": job.method, "strategy": job.strategy,
                "fold": job.fold, "label_fraction": job.label_fraction, "seed": training_seed,
                "n_train_participants": len(full.train),
                "init": pretrained["model_dir"] if pretrained else SCRATCH,
                "pretraining": ({"name": job.pretraining.name, "seconds": pretrained["seconds"],
                                 "peak_memory_mb": pretrained["peak_memory_mb"]}
                                if pretrained else None)}
        record = self._run(job.name, key, path, self._model_dir(job.name), split, spec)
        if record is not None:
            self.configurations[job] = record

    def _run(self, name: str, key: str, record_path: Path, model_dir: Path,
             split: StudySplit, spec: dict[str, Any]) -> dict[str, Any] | None:
        self.position += 1
        LOGGER.info("[%d/%d] %s: starting.", self.position, self.total, name)
        job_file = write_job(self.work_dir, name, {
            **spec, "key": key, "record": str(record_path), "model_dir": str(model_dir),
            "settings": self.settings.to_dict(), "crops": self.cache.to_dict(),
            "split": split.to_dict()})
        record_path.unlink(missing_ok=True)  # a stale record must not pass for this run's
        outcome = run_job(job_file)
        record = read_done(record_path, key) if outcome.ok else None
        if record is None:
            if outcome.run_wide:
                # a full disk or a read-only folder: every later job would fail the same way
                raise SystemResourceError(outcome.error)
            reason = f": {outcome.error}" if outcome.error else ""
            LOGGER.error("[%d/%d] %s failed (exit status %d after %.0f s)%s; see its log in "
                         "OUTPUT_DIR/logs/study-%s_*.log.", self.position, self.total, name,
                         outcome.returncode, outcome.seconds, reason, name)
            self.failed.append(name)
            return None
        self.seconds[spec["kind"]].append(outcome.seconds)
        LOGGER.info("[%d/%d] %s: done in %.0f s%s%s.", self.position, self.total, name,
                    outcome.seconds, _result_text(record), self._eta())
        return record

    def _skip(self, name: str, record: dict[str, Any]) -> None:
        self.position += 1
        LOGGER.info("[%d/%d] %s: already done (finished %s), skipped.", self.position,
                    self.total, name, record.get("finished", "earlier"))

    def _eta(self) -> str:
        # what is left, at the mean duration of each kind of job seen in this run
        remaining = self.total - self.position
        if remaining <= 0:
            return ""
        observed = [s for values in self.seconds.values() for s in values]
        mean = sum(observed) / len(observed)
        return f"; about {remaining * mean / 60:.0f} min left for {remaining} job(s)"

    def _model_dir(self, name: str) -> Path:
        return Path(self.settings.run.output_dir) / "models" / f"{MODEL_PREFIX}{name}"


def _model_intact(model_dir: Path, sha256: str | None) -> bool:
    try:
        card = read_model_card(model_dir)
    except BidsPcsError:
        return False
    return sha256 is not None and (card.get("weights") or {}).get("sha256") == sha256


def _result_text(record: dict[str, Any]) -> str:
    scores = record.get("test_scores")
    if not scores:
        return f" (peak memory {record['peak_memory_mb']:.0f} MiB)"
    return (f" (native test Dice {scores['dice']:.3f} over {scores['dice_n']:.0f} sulci, "
            f"presence balanced accuracy {scores['presence_balanced_accuracy']:.3f}, "
            f"fine-tuning {record['finetune_seconds']:.0f} s, peak memory "
            f"{record['peak_memory_mb']:.0f} MiB)")


