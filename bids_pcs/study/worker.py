"""One study job in its own process: ``python -m bids_pcs.study.worker JOB.json``.

The study level writes a job file (settings, the crop cache, the split, what
to run and where to write) and starts this entry point in a fresh
interpreter, so the job's peak memory and its time are its own and nothing of
an earlier job (allocator caches, imported modules, threads) is counted.

Two kinds of job:

- ``pretrain``: self-supervised training with one method on the split's share
  of the pre-training pool (:mod:`bids_pcs.study.pool`: never a validation or
  test participant's crop); writes the model directory and a record with
  time, memory and how many images pre-trained;
- ``finetune``: one configuration: fine-tunes from scratch or from a
  pre-trained model on its labelled training crops (its label fraction) with
  its training seed, keeps the best epoch on the validation crops, maps its
  test predictions (and, with ``[study] test_on``, the out-of-distribution
  participants') to the native T1w grid and scores them against the native
  labels (:mod:`bids_pcs.study.native`), and writes a record with time,
  memory, parameter counts and one row per test hemisphere.

The record is written atomically at the very end, so a crash leaves nothing
that could be mistaken for a result.  Exit status: 0 done, 1 failed (the
reason is in the job's log, ``OUTPUT_DIR/logs/study-<job>_<run id>.log``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bids_pcs import __version__
from bids_pcs.config import Settings, settings_from_dict
from bids_pcs.devices import set_threads
from bids_pcs.errors import BidsPcsError
from bids_pcs.splits import StudySplit
from bids_pcs.study.crops import CropCache, read_labelled_crops
from bids_pcs.study.jobs import write_failure
from bids_pcs.study.pool import PoolCache, selected_crops
from bids_pcs.study.records import write_record
from bids_pcs.system_errors import run_folders, system_error
from bids_pcs.training.memory import current_memory_mb, memory_kind, peak_memory_mb

LOGGER = logging.getLogger("bids_pcs.study.worker")


def main(argv: list[str] | None = None) -> int:
    """Run the job described by the JSON file given as the only argument."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m bids_pcs.study.worker JOB.json", file=sys.stderr)
        return 2
    job_file = Path(args[0])
    job = json.loads(job_file.read_text())
    settings = settings_from_dict(job["settings"])
    try:
        _start_logging(settings, job["name"])
        set_threads(settings.run.omp_nthreads)
        if job["kind"] == "pretrain":
            record = run_pretraining(job, settings)
        elif job["kind"] == "finetune":
            record = run_configuration(job, settings)
        else:
            raise ValueError(f"unknown study job kind {job['kind']!r}")
        write_record(Path(job["record"]), record)
    except BidsPcsError as exc:
        LOGGER.error("%s failed: %s", job["name"], exc)
        write_failure(job_file, exc)
        return exc.exit_code
    except (OSError, MemoryError) as exc:
        # a full disk, a read-only folder, memory or file handles: one sentence for the
        # study to show (and to stop on, when every later job would meet it too)
        error = system_error(exc, folders=run_folders(settings))
        if error is None:
            LOGGER.exception("%s failed with an internal error", job["name"])
            return 1
        LOGGER.debug("%s failed", job["name"], exc_info=True)
        LOGGER.error("%s failed: %s", job["name"], error)
        write_failure(job_file, error)
        return error.exit_code
    except Exception:  # a bug: keep the traceback in the job's log
        LOGGER.exception("%s failed with an internal error", job["name"])
        return 1
    return 0


def run_pretraining(job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Pre-train ``job["method"]`` on the split's share of the pool; return the record."""
    from bids_pcs.devices import resolve_device
    from bids_pcs.pretraining.train import pretrain

    split = StudySplit.from_dict(job["split"])
    if job.get("pool"):
        crops, data = selected_crops(PoolCache.from_dict(job["pool"]), split,
                                     settings.study.pretrain_pool)
    else:  # no pool: the labelled training crops
        train = read_labelled_crops(CropCache.from_dict(job["crops"])).select(split.train)
        crops, data = train.crops, train.summary()
    device = resolve_device(settings.run.device)
    settings = settings.replace(pretrain={"method": job["method"]}, run={"resume": False})
    baseline = current_memory_mb(device)
    result = pretrain(settings, crops, model_dir=job["model_dir"], device=device,
                      progress=sys.stderr.isatty(),
                      training_data={**data, "study_fold": split.fold})
    history = result.train.history
    record = _common(job, device) | {
        "method": job["method"],
        "seconds": result.train.seconds,
        "seconds_per_epoch": _mean([row["seconds"] for row in history]),
        "epochs": result.train.epochs_completed,
        "baseline_memory_mb": baseline,
        "peak_memory_mb": peak_memory_mb(device),
        "final_loss": history[-1]["loss"] if history else None,
        "n_crops": data["n_crops"],
        "n_images": data["n_images"],
        "n_participants": data["n_participants"],
        "datasets": data.get("datasets"),
        "pretrain_pool": data.get("pretrain_pool", "train"),
        "model_dir": job["model_dir"],
        "model_sha256": result.card.get("weights", {}).get("sha256"),
    }
    LOGGER.info("%s done in %.1f s on %d crops of %d images (peak memory %.0f MiB).",
                job["name"], record["seconds"], record["n_crops"], record["n_images"],
                record["peak_memory_mb"])
    return record


def run_configuration(job: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Fine-tune one configuration, score its test images on the native grid; return the record.

    The job's split holds the labelled training participants of its label
    fraction; its training seed replaces ``--seed`` for fine-tuning only (the
    split and the pre-training were made with the study's seed).
    """
    import time

    from bids_pcs.devices import resolve_device
    from bids_pcs.finetuning import finetune, predict_crops
    from bids_pcs.inference.calls import class_rule
    from bids_pcs.study.native import native_rows
    from bids_pcs.study.scoring import ScoredRuns

    split = StudySplit.from_dict(job["split"])
    cache = CropCache.from_dict(job["crops"])
    labelled = read_labelled_crops(cache)
    train = labelled.select(split.train)
    validation = labelled.select(split.validation) if split.validation else None
    test = labelled.select(split.test)
    device = resolve_device(settings.run.device)
    training_seed = int(job.get("seed", settings.run.seed))
    settings = settings.replace(finetune={"strategy": job["strategy"]},
                                run={"resume": False, "model_name": "", "seed": training_seed})
    ft = settings.finetune
    baseline = current_memory_mb(device)
    result = finetune(settings, train, validation, job["init"], model_dir=job["model_dir"],
                      device=device, progress=sys.stderr.isatty(),
                      data_summary={"study": {"fold": split.fold, "split": split.to_dict(),
                                              "label_fraction": job.get("label_fraction", 1.0),
                                              "training_seed": training_seed}})
    peak = peak_memory_mb(device)  # before prediction: the training's own peak
    started = time.perf_counter()
    network = result.network.to(device)
    predictions = predict_crops(network, test.crops, batch_size=ft.batch_size, device=device,
                                threshold=settings.inference.threshold, keep_probability=True)
    # scored as the participant level would report it (the class rule of the model's card)
    rule = class_rule(settings.inference.class_rule, result.card)
    rows = native_rows(settings, predictions, test, cache.images, rule=rule)
    scoring_seconds = time.perf_counter() - started
    history = result.train.history
    strategy = result.strategy
    record = _common(job, device) | {
        "method": job["method"],
        "strategy": job["strategy"],
        "label_fraction": job.get("label_fraction", 1.0),
        "seed": training_seed,
        "learning_rate": ft.learning_rate_for(job["strategy"]),
        "init": job["init"],
        "pretraining": job.get("pretraining"),
        "finetune_seconds": result.train.seconds,
        "seconds_per_epoch": _mean([row["seconds"] for row in history]),
        "epochs": result.train.epochs_completed,
        "best_epoch": (result.train.best_epoch + 1 if result.train.best_epoch is not None
                       else None),
        "baseline_memory_mb": baseline,
        "peak_memory_mb": peak,
        "trainable_parameters": strategy["trainable_parameters"],
        "training_parameters": strategy["total_parameters"],
        "total_parameters": strategy["base_parameters"],
        "trainable_fraction": strategy["trainable_fraction"],
        "validation": result.metrics,
        # the labels fine-tuning learnt from: labelled images and hemispheres
        "n_train_images": len({item.prefix for item in train.info}),
        "n_train_labels": len(train),
        "test_scores": ScoredRuns.from_records([rows]).scores(),
        "test_rows": rows,
        "test_grid": "native T1w",
        "native_scoring_seconds": scoring_seconds,
        "n_labelled_participants": len(split.train),
        "n_train_participants": int(job.get("n_train_participants", len(split.train))),
        "n_validation_participants": len(split.validation),
        "n_test_participants": len(split.test),
        "model_dir": job["model_dir"],
    }
    if split.ood_test:  # [study] test_on: the same model on the held-out distribution
        ood = labelled.select(split.ood_test)
        ood_predictions = predict_crops(network, ood.crops, batch_size=ft.batch_size,
                                        device=device, threshold=settings.inference.threshold,
                                        keep_probability=True)
        record["ood_test_rows"] = native_rows(settings, ood_predictions, ood, cache.images,
                                              rule=rule)
        record["n_ood_test_participants"] = len(split.ood_test)
    LOGGER.info("%s done: fine-tuning %.1f s, peak memory %.0f MiB, native test Dice %.3f "
                "(%d hemispheres with a sulcus), presence balanced accuracy %.3f; scoring %.1f s.",
                job["name"], record["finetune_seconds"], peak, record["test_scores"]["dice"],
                record["test_scores"]["dice_n"],
                record["test_scores"]["presence_balanced_accuracy"], scoring_seconds)
    return record


def _common(job: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        "name": job["name"], "kind": job["kind"], "key": job["key"], "fold": job["fold"],
        "device": str(device), "memory_kind": memory_kind(device),
        "threads": torch.get_num_threads(), "app_version": __version__,
        "finished": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _start_logging(settings: Settings, name: str) -> None:
    from bids_pcs.runlog import setup_console_logging, start_run_log

    setup_console_logging(settings.run.verbose)
    if settings.run.output_dir:
        start_run_log(Path(settings.run.output_dir), f"study-{name}", settings.run.run_id)


if __name__ == "__main__":  # pragma: no cover - the entry point of a job's process
    sys.exit(main())
