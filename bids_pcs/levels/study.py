"""The ``study`` analysis level: every initialisation x fine-tuning strategy, compared.

``bids_pcs BIDS_DIR OUTPUT_DIR study --labels LABELS_DIR [--methods ...]
[--strategies ...] [--recipe NAME]`` reproduces the experiment of the source
paper (arXiv 2405.19204) on a labelled dataset:

1. the labelled images are preprocessed once (images already done are
   reused), and their crops and targets are built once into a cache under
   ``WORK_DIR/study/`` (:mod:`bids_pcs.study.crops`);
2. the participants are split, seeded and stratified, into train /
   validation / test (``[study]`` fractions, 60/20/20 by default) or into
   ``[study] folds`` folds (:mod:`bids_pcs.splits`); with ``[study] test_on =
   "COLUMN=VALUE"`` the participants with that value in participants.tsv are
   held out of all of it as an out-of-distribution test set; ``split.tsv``
   records it;
3. each pre-training method of the grid is trained once per split, on the
   pre-training pool (:mod:`bids_pcs.study.pool`): every selected image of
   BIDS_DIR, labelled or not, and every image of the ``--pretrain-data``
   datasets, *but* the validation, test and out-of-distribution participants'
   (never seen, not even without labels; with ``test_on``, every BIDS_DIR
   participant with its value); ``[study] pretrain_pool = "train"`` restricts it to
   the training participants.  Its model is shared by every strategy;
4. each configuration (scratch or a pre-trained model x a strategy) is
   fine-tuned on the training participants, its best epoch chosen on the
   validation participants, and scored on the test participants (and on the
   out-of-distribution ones, side by side);
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

import pandas as pd

from bids_pcs.config import Settings
from bids_pcs.errors import BidsPcsError, InputDataError
from bids_pcs.levels.training_inputs import collect_labelled, collect_pretraining_crops
from bids_pcs.splits import (
    StudySplit,
    check_fractions,
    held_out_by_value,
    make_splits,
    parse_test_on,
    participant_strata,
)
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
    if settings.study.test_on:
        parse_test_on(settings.study.test_on)  # refuse a malformed one before any work
    plan_grid(settings.study, [0])  # refuse unknown methods or strategies before any work
    study_dir = Path(settings.run.output_dir) / STUDY_DIR
    work_dir = Path(settings.run.work_dir) / STUDY_DIR if settings.run.work_dir else (
        study_dir / ".work")

    pairs, skipped = collect_labelled(settings, DistContext())
    cache = cache_labelled_crops(settings, pairs, work_dir)
    strata = participant_strata(cache.info)
    splits = make_splits(strata, settings.study, seed=settings.run.seed,
                         ood=out_of_distribution(settings, strata))
    grid = plan_grid(settings.study, [split.fold for split in splits], settings.run.seed)
    write_split_table(study_dir / SPLIT_NAME, splits, cache, strata)
    _log_plan(grid, splits)
    # the pool is preprocessed (unlabelled and extra images too) only when a method pre-trains
    pool = (cache_pretraining_pool(settings, without_test_on_value(
        settings, collect_pretraining_crops(settings, DistContext())), work_dir)
        if grid.pretrainings else None)

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


def out_of_distribution(settings: Settings, participants) -> set[str]:
    """The ``[study] test_on`` participants among ``participants`` (none without it).

    The column is read from participants.tsv of the raw dataset, or of the
    label dataset where the raw one lacks it.

    Raises:
        InputDataError: no participants.tsv has the column, or the value
            marks none or all of the participants.
    """
    if not settings.study.test_on:
        return set()
    column, value = parse_test_on(settings.study.test_on)
    values = _test_on_column(settings, column)
    held = held_out_by_value(values, value, column=column, participants=participants)
    LOGGER.info("Out-of-distribution test set (%s): %d participant(s): %s.",
                settings.study.test_on, len(held), " ".join(sorted(held)))
    return held


def without_test_on_value(settings: Settings, crops: list) -> list:
    """The pre-training crops but those of BIDS_DIR participants with the ``test_on`` value.

    Unlabelled participants with that value are left out too: the
    out-of-distribution value never reaches the weights, not even without
    labels. ``--pretrain-data`` datasets hold other participants and are kept.
    """
    if not settings.study.test_on:
        return crops
    column, value = parse_test_on(settings.study.test_on)
    marked = {s for s, cell in _test_on_column(settings, column).items() if cell == value}
    main = str(Path(settings.run.bids_dir).absolute())
    kept = [c for c in crops if not ((c.dataset or main) == main and c.image.subject in marked)]
    LOGGER.info("Pre-training leaves out the %d crop(s) of participants with %s.",
                len(crops) - len(kept), settings.study.test_on)
    return kept


def _test_on_column(settings: Settings, column: str) -> dict[str, str]:
    """Participant label -> value of ``column`` (raw participants.tsv first, then the labels')."""
    values: dict[str, str] = {}
    tables = [Path(settings.run.bids_dir) / "participants.tsv",
              Path(settings.run.labels) / "participants.tsv"]
    for table in tables:
        if not table.is_file():
            continue
        frame = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
        if column in frame.columns and "participant_id" in frame.columns:
            for subject, cell in zip(frame["participant_id"], frame[column], strict=True):
                values.setdefault(subject.removeprefix("sub-"), cell)
    if not values:
        raise InputDataError(f"[study] test_on = {settings.study.test_on!r}: no column "
                             f"{column!r} in {' or '.join(str(t) for t in tables)}; name a "
                             "participants.tsv column (e.g. site, anatomy_source).")
    return values


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
    if first.ood_test:
        LOGGER.info("Every configuration is also tested on %d out-of-distribution "
                    "participant(s).", len(first.ood_test))
