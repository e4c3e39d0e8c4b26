"""The ``study`` analysis level: every initialisation x fine-tuning strategy, compared.

``bids_pcs BIDS_DIR OUTPUT_DIR study --labels LABELS_DIR [--methods ...]
[--strategies ...] [--recipe NAME]`` reproduces the experiment of the source
paper (arXiv 2405.19204) on a labelled dataset:

1. the labelled images are preprocessed once (images already done are
   reused), and their crops and targets are built once into a cache under
   ``WORK_DIR/study/`` (:mod:`bids_pcs.study.crops`);
2. the participants are split, seeded and stratified, into train /
   validation / test (``[study]`` fractions, 60/20/20 by default) or into
   ``[study] folds`` folds (:mod:`bids_pcs.splits`); ``split.tsv``
   records it;
3. each pre-training method of the grid is trained once per split, on the
   *training* participants' crops only (validation and test crops are never
   seen, not even without labels), and its model is shared by every strategy;
4. each configuration (scratch or a pre-trained model x a strategy) is
   fine-tuned on the training participants, its best epoch chosen on the
   validation participants, and scored on the test participants;
5. the table, JSON, figures and page are written under ``OUTPUT_DIR/study/``
   (:mod:`bids_pcs.study.outputs`).

Every pre-training and configuration runs alone in its own process
(:mod:`bids_pcs.study.worker`) so that its time and peak memory are its own,
and writes its result atomically as soon as it finishes
(``OUTPUT_DIR/study/pretraining/`` and ``configurations/``).  A rerun skips
every job whose result was made with the same data, split and settings (a
crash loses at most the running job; ``--resume`` changes nothing more), and
reruns jobs whose inputs changed.  Models are kept under
``OUTPUT_DIR/models/study-*``.

Usage::

    run(settings.replace(run={"labels": "/data/derivatives/pcs-labels"},
                         study={"methods": ["scratch", "reconstruction"],
                                "strategies": ["top", "full"]}))
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bids_pcs.config import Settings
from bids_pcs.errors import BidsPcsError, InputDataError
from bids_pcs.models.model_io import read_model_card
from bids_pcs.splits import StudySplit, check_fractions, make_splits, participant_strata
from bids_pcs.study.crops import CropCache, cache_labelled_crops
from bids_pcs.study.jobs import run_job, write_job
from bids_pcs.study.outputs import SPLIT_NAME, write_outputs, write_split_table
from bids_pcs.study.plan import (
    SCRATCH,
    Configuration,
    Grid,
    Pretraining,
    configuration_key,
    plan_grid,
    pretraining_key,
)
from bids_pcs.study.records import (
    configuration_record_path,
    pretraining_record_path,
    read_done,
)
from bids_pcs.training.distributed import DistContext

LOGGER = logging.getLogger(__name__)
STUDY_DIR = "study"
MODEL_PREFIX = "study-"


class StudyError(BidsPcsError):
    """Some jobs of the study failed (the others' results are kept and tabulated)."""


def run(settings: Settings) -> None:
    """Run the study grid of ``settings.study`` and write ``OUTPUT_DIR/study/``."""
    from bids_pcs.levels.finetune import collect_labelled

    if not settings.run.labels:
        raise InputDataError("study needs --labels LABELS_DIR (a PCS label dataset).")
    check_fractions(settings.study)
    plan_grid(settings.study, [0])  # refuse unknown methods or strategies before any work
    study_dir = Path(settings.run.output_dir) / STUDY_DIR
    work_dir = Path(settings.run.work_dir) / STUDY_DIR if settings.run.work_dir else (
        study_dir / ".work")

    pairs, skipped = collect_labelled(settings, DistContext())
    cache = cache_labelled_crops(settings, pairs, work_dir)
    strata = participant_strata(cache.info)
    splits = make_splits(strata, settings.study, seed=settings.run.seed)
    grid = plan_grid(settings.study, [split.fold for split in splits])
    write_split_table(study_dir / SPLIT_NAME, splits, cache, strata)
    _log_plan(grid, splits)

    runner = _Runner(settings, cache, {s.fold: s for s in splits}, study_dir, work_dir,
                     total=len(grid.pretrainings) + len(grid.configurations))
    for job in grid.pretrainings:
        runner.pretraining(job)
    for job in grid.configurations:
        runner.configuration(job)

    table = write_outputs(study_dir, settings, grid, splits, cache, runner.configurations,
                          runner.pretrainings, runner.failed, skipped)
    LOGGER.info("Study written to %s: %d of %d configurations in study.tsv, study.html.",
                study_dir, len(table), len(grid.cells))
    if runner.failed:
        raise StudyError(
            f"{len(runner.failed)} study job(s) failed ({', '.join(runner.failed[:5])}"
            f"{' ...' if len(runner.failed) > 5 else ''}); their logs are in "
            f"{Path(settings.run.output_dir) / 'logs'}; rerun the same command to retry them "
            "(finished ones are kept).")


@dataclass
class _Runner:
    """Runs the jobs one by one, skipping finished ones, with progress and time estimates."""

    settings: Settings
    cache: CropCache
    splits: dict[int, StudySplit]
    study_dir: Path
    work_dir: Path
    total: int
    pretrainings: dict[Pretraining, dict[str, Any]] = field(default_factory=dict)
    configurations: dict[Configuration, dict[str, Any]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    seconds: dict[str, list[float]] = field(default_factory=lambda: {"pretrain": [],
                                                                      "finetune": []})
    position: int = 0
    started: float = field(default_factory=time.perf_counter)

    def pretraining(self, job: Pretraining) -> None:
        split = self.splits[job.fold]
        key = pretraining_key(self.settings, job, split, self.cache.data_digest)
        path = pretraining_record_path(self.study_dir, job)
        model_dir = self._model_dir(job.name)
        record = read_done(path, key)
        if record is not None and _model_intact(model_dir, record.get("model_sha256")):
            self._skip(job.name, record)
            self.pretrainings[job] = record
            return
        spec = {"kind": "pretrain", "method": job.method, "fold": job.fold}
        record = self._run(job.name, key, path, model_dir, split, spec)
        if record is not None:
            self.pretrainings[job] = record

    def configuration(self, job: Configuration) -> None:
        split = self.splits[job.fold]
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
                "fold": job.fold,
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
            LOGGER.error("[%d/%d] %s failed (exit status %d after %.0f s); see its log in "
                         "OUTPUT_DIR/logs/study-%s_*.log.", self.position, self.total, name,
                         outcome.returncode, outcome.seconds, name)
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
    return (f" (test Dice {scores['test_dice']:.3f}, presence accuracy "
            f"{scores['test_presence_accuracy']:.3f}, fine-tuning "
            f"{record['finetune_seconds']:.0f} s, peak memory {record['peak_memory_mb']:.0f} MiB)")


def _log_plan(grid: Grid, splits: list[StudySplit]) -> None:
    first = splits[0]
    LOGGER.info(
        "Study grid: %d initialisation(s) (%s) x %d strategies (%s), %s; %d pre-training(s), "
        "%d configuration(s); participants train/validation/test %d/%d/%d%s.",
        len(grid.methods), ", ".join(grid.methods), len(grid.strategies),
        ", ".join(grid.strategies),
        f"{len(splits)} folds" if first.fold else "one split", len(grid.pretrainings),
        len(grid.configurations), len(first.train), len(first.validation), len(first.test),
        " per fold" if first.fold else "")
