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
   pre-training pool (:mod:`bids_pcs.study.pool`): every selected image of
   BIDS_DIR, labelled or not, and every image of the ``--pretrain-data``
   datasets, *but* the validation and test participants' (never seen, not
   even without labels); ``[study] pretrain_pool = "train"`` restricts it to
   the training participants.  Its model is shared by every strategy;
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
from pathlib import Path

from bids_pcs.config import Settings
from bids_pcs.errors import BidsPcsError, InputDataError
from bids_pcs.levels.training_inputs import collect_labelled, collect_pretraining_crops
from bids_pcs.splits import StudySplit, check_fractions, make_splits, participant_strata
from bids_pcs.study.crops import cache_labelled_crops
from bids_pcs.study.outputs import SPLIT_NAME, write_outputs, write_split_table
from bids_pcs.study.plan import Grid, plan_grid
from bids_pcs.study.pool import cache_pretraining_pool, check_pool_mode
from bids_pcs.study.runner import JobRunner
from bids_pcs.training.distributed import DistContext

LOGGER = logging.getLogger(__name__)
STUDY_DIR = "study"


class StudyError(BidsPcsError):
    """Some jobs of the study failed (the others' results are kept and tabulated)."""


def run(settings: Settings) -> None:
    """Run the study grid of ``settings.study`` and write ``OUTPUT_DIR/study/``."""
    if not settings.run.labels:
        raise InputDataError("study needs --labels LABELS_DIR (a PCS label dataset).")
    check_fractions(settings.study)
    check_pool_mode(settings)
    plan_grid(settings.study, [0])  # refuse unknown methods or strategies before any work
    study_dir = Path(settings.run.output_dir) / STUDY_DIR
    work_dir = Path(settings.run.work_dir) / STUDY_DIR if settings.run.work_dir else (
        study_dir / ".work")

    pairs, skipped = collect_labelled(settings, DistContext())
    cache = cache_labelled_crops(settings, pairs, work_dir)
    strata = participant_strata(cache.info)
    splits = make_splits(strata, settings.study, seed=settings.run.seed)
    grid = plan_grid(settings.study, [split.fold for split in splits], settings.run.seed)
    write_split_table(study_dir / SPLIT_NAME, splits, cache, strata)
    _log_plan(grid, splits)
    # the pool is preprocessed (unlabelled and extra images too) only when a method pre-trains
    pool = (cache_pretraining_pool(settings, collect_pretraining_crops(settings, DistContext()),
                                   work_dir) if grid.pretrainings else None)

    runner = JobRunner(settings, cache, {s.fold: s for s in splits}, study_dir, work_dir,
                       total=len(grid.pretrainings) + len(grid.configurations), pool=pool,
                       strata=strata)
    for job in grid.pretrainings:
        runner.pretraining(job)
    for job in grid.configurations:
        runner.configuration(job)

    table = write_outputs(study_dir, settings, grid, splits, cache, runner.configurations,
                          runner.pretrainings, runner.failed, skipped, strata, pool=pool)
    LOGGER.info("Study written to %s: %d of %d rows in study.tsv, study.html.",
                study_dir, len(table), len(grid.rows))
    if runner.failed:
        raise StudyError(
            f"{len(runner.failed)} study job(s) failed ({', '.join(runner.failed[:5])}"
            f"{' ...' if len(runner.failed) > 5 else ''}); their logs are in "
            f"{Path(settings.run.output_dir) / 'logs'}; rerun the same command to retry them "
            "(finished ones are kept).")


def _log_plan(grid: Grid, splits: list[StudySplit]) -> None:
    first = splits[0]
    seeds = [s for s in grid.seeds if s is not None]
    LOGGER.info(
        "Study grid: %d initialisation(s) (%s) x %d strategies (%s), %s, label fraction(s) %s, "
        "%s; %d pre-training(s), %d fine-tuning(s); participants train/validation/test "
        "%d/%d/%d%s.",
        len(grid.methods), ", ".join(grid.methods), len(grid.strategies),
        ", ".join(grid.strategies),
        f"{len(splits)} folds" if first.fold else "one split",
        ", ".join(f"{f:g}" for f in grid.label_fractions),
        f"training seeds {', '.join(map(str, seeds))}" if seeds else "one training seed",
        len(grid.pretrainings), len(grid.configurations), len(first.train),
        len(first.validation), len(first.test), " per fold" if first.fold else "")
