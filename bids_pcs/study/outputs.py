"""Everything the study writes under ``OUTPUT_DIR/study/`` from its job records.

- ``split.tsv``: one row per participant and fold (``participant_id``,
  ``fold``, ``part``, ``n_images``, ``pcs_hemispheres``);
- ``study.tsv``: one row per method x strategy x label fraction
  (:mod:`bids_pcs.study.table`);
- ``study.json``: the grid, the split(s), the labelled subsets, the settings
  that matter, every row with its intervals and paired differences, the
  pre-training records and the failed jobs;
- ``figures/*.png``: accuracy against time and memory, a heatmap per score,
  label efficiency;
- ``study.html``: the page (:mod:`bids_pcs.study.page`).

Each file is written atomically; all of them are rewritten from the records
after every run, so they always agree with each other.
"""

from __future__ import annotations

import datetime as _dt
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from bids_pcs import APP_NAME, __version__
from bids_pcs.config import Settings
from bids_pcs.io.atomic import write_text
from bids_pcs.splits import PARTS, StudySplit, participant_strata
from bids_pcs.study.crops import CropCache
from bids_pcs.study.figures import FIGURES_DIR, write_figures
from bids_pcs.study.page import write_study_page
from bids_pcs.study.plan import Configuration, Grid, Pretraining
from bids_pcs.study.pool import PoolCache, pool_summary
from bids_pcs.study.records import plain_json, write_record
from bids_pcs.study.table import results_table, write_table

TABLE_NAME = "study.tsv"
JSON_NAME = "study.json"
PAGE_NAME = "study.html"
SPLIT_NAME = "split.tsv"


def write_split_table(path: Path, splits: Sequence[StudySplit], cache: CropCache,
                      strata: Mapping[str, int]) -> Path:
    """split.tsv: which part every participant is in, per fold."""
    images = Counter(subject for _, subject in {(i.prefix, i.subject) for i in cache.info})
    lines = ["participant_id\tfold\tpart\tn_images\tpcs_hemispheres"]
    for split in splits:
        for part in PARTS:
            for subject in getattr(split, part):
                lines.append(f"sub-{subject}\t{split.fold}\t{part}\t{images[subject]}\t"
                             f"{strata[subject]}")
    return write_text(path, "\n".join(lines) + "\n")


def pretraining_data_text(settings: Settings, pool: PoolCache | None) -> str:
    """What each split's pre-training learnt from, in words (study.json's design)."""
    if pool is None or settings.study.pretrain_pool == "train":
        return ("the training participants' crops of each split only (no validation or test "
                "crops)")
    extra = len({r.dataset for r in pool.records} - {pool.main_dataset})
    return ("every image of BIDS_DIR that passed QC, labelled or not, except the validation "
            "and test participants' of each split" + (
                " and every participant with " + settings.study.test_on
                if settings.study.test_on else "") + (
                f", and every image of {extra} --pretrain-data dataset(s)" if extra else ""))


def write_outputs(study_dir: Path, settings: Settings, grid: Grid,
                  splits: Sequence[StudySplit], cache: CropCache,
                  configurations: Mapping[Configuration, dict[str, Any]],
                  pretrainings: Mapping[Pretraining, dict[str, Any]],
                  failed: Sequence[str], skipped: Mapping[str, Any],
                  strata: Mapping[str, int] | None = None,
                  pool: PoolCache | None = None) -> pd.DataFrame:
    """Write study.tsv, study.json, the figures and study.html; return the table."""
    from bids_pcs.finetuning.evaluation import SCORE_DEFINITION
    from bids_pcs.splits import label_subsets

    study = settings.study
    strata = strata if strata is not None else participant_strata(cache.info)
    subsets = {
        f"fold-{split.fold}": {
            f"seed-{seed}": {f"{f:g}": list(v) for f, v in label_subsets(
                strata, split.train, grid.label_fractions, seed=seed).items()}
            for seed in dict.fromkeys(s if s is not None else settings.run.seed
                                      for s in grid.seeds)}
        for split in splits}
    table = results_table(grid, configurations, pretrainings,
                          n_resamples=study.bootstrap_samples, seed=settings.run.seed)
    write_table(study_dir / TABLE_NAME, table)
    figures = write_figures(table, list(grid.methods), list(grid.strategies),
                            study_dir / FIGURES_DIR)
    devices = sorted({r["device"] for r in configurations.values()})
    summary = {
        "n_participants": len({i.subject for i in cache.info}),
        "n_cells": len(grid.rows),
        "recipe": settings.run.recipe,
        "seed": settings.run.seed,
        "device": ", ".join(devices) if devices else settings.run.device,
        "pretraining_data": pretraining_data_text(settings, pool),
        "test_on": study.test_on,
    }
    write_record(study_dir / JSON_NAME, {
        "app": {"name": APP_NAME, "version": __version__},
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "recipe": settings.run.recipe,
        "seed": settings.run.seed,
        "grid": {"methods": list(grid.methods), "strategies": list(grid.strategies),
                 "folds": list(grid.folds), "label_fractions": list(grid.label_fractions),
                 "training_seeds": [s if s is not None else settings.run.seed
                                    for s in grid.seeds]},
        "design": {
            "split_unit": "participant (both hemispheres and all sessions together)",
            "fractions": {"train": study.train_fraction,
                          "validation": study.validation_fraction,
                          "test": study.test_fraction},
            "folds": study.folds,
            "out_of_distribution": ({"test_on": study.test_on,
                                     "participants": list(splits[0].ood_test)}
                                    if study.test_on else None),
            "pretraining_data": pretraining_data_text(settings, pool),
            "pretraining_shared": "once per split, by every strategy, label fraction and seed",
            "label_fractions": "nested, stratified subsets of each split's training "
                               "participants, drawn per training seed (label_subsets); "
                               "validation and test parts unchanged",
            "training_seeds": "fine-tuning only (network initialisation, batch order); the "
                              "split and the pre-training use --seed",
            "model_selection": f"best validation epoch by val_score: {SCORE_DEFINITION}",
            "test_scores": "native T1w grid against the native labels; Dice over hemispheres "
                           "whose true mask has a sulcus, HD95 (mm, image spacing) where both "
                           "masks exist, presence and class scores over all hemispheres",
            "bootstrap": {"unit": "participant", "resamples": study.bootstrap_samples,
                          "level": 0.95, "seed": settings.run.seed,
                          "differences": "paired: the same participant resamples for a row "
                                         "and its reference (scratch with the same strategy, "
                                         "full with the same method, same label fraction)"},
            "isolation": "each pre-training and configuration in its own process",
        },
        "settings": {key: settings.to_dict()[key]
                     for key in ("crop", "model", "pretrain", "finetune", "inference")},
        "data": {"n_participants": summary["n_participants"], "n_crops": len(cache.info),
                 "data_digest": cache.data_digest, "skipped": dict(skipped),
                 "pretraining_pool": (pool_summary(pool.records, pool.main_dataset)
                                      if pool is not None else None)},
        "splits": [s.to_dict() for s in splits],
        "label_subsets": subsets,
        "configurations": [plain_json(row) for row in table.to_dict("records")],
        "pretrainings": list(pretrainings.values()),
        "failed": list(failed),
        "files": {"table": TABLE_NAME, "split": SPLIT_NAME, "page": PAGE_NAME,
                  "figures": {name: str(path.relative_to(study_dir))
                              for name, path in figures.items()}},
    })
    write_study_page(study_dir / PAGE_NAME, table, figures=figures, splits=splits,
                     summary=summary, failed=failed)
    return table
