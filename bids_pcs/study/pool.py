"""The study's pre-training pool: every crop that may pre-train, built once, selected per split.

Self-supervision needs no label, so the pool is larger than the labelled set:
every selected image of BIDS_DIR that passed QC, labelled or not, and every
image of the ``--pretrain-data`` datasets
(:func:`~bids_pcs.levels.training_inputs.collect_pretraining_crops`).  The
parent writes the crops once to ``WORK_DIR/study/pretraining_pool.safetensors``
(images only) with a JSON of one record per crop (its dataset, participant,
image, hemisphere); each pre-training job reads them back (SHA-256 checked)
and keeps, for its split (:func:`pretraining_indices`):

- ``[study] pretrain_pool = "all"`` (default): every crop but those of BIDS_DIR's
  validation, test and out-of-distribution (``[study] test_on``) participants,
  so held-out participants are never seen, not even without labels;
- ``"train"``: the crops of BIDS_DIR's training participants only (the
  labelled set's share, as when pre-training sees no extra image).

Extra datasets are taken to hold other participants: their participant
labels are not compared with BIDS_DIR's.

Usage::

    pool = cache_pretraining_pool(settings, collect_pretraining_crops(settings, context),
                                  work_dir / "study")
    crops, summary = selected_crops(pool, split, settings.study.pretrain_pool)  # in a job
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids_pcs.config import RecipeError, Settings
from bids_pcs.io.atomic import write_json
from bids_pcs.models.tensor_file import read_tensors, write_tensors
from bids_pcs.splits import StudySplit
from bids_pcs.study.crops import fingerprint_of, read_cache
from bids_pcs.training.data import CropSet, load_crop_set

if TYPE_CHECKING:
    from bids_pcs.levels.training_inputs import CropFile

LOGGER = logging.getLogger(__name__)
POOL_MODES: tuple[str, ...] = ("all", "train")
TENSORS_NAME = "pretraining_pool.safetensors"
INFO_NAME = "pretraining_pool.json"


@dataclass(frozen=True)
class PoolRecord:
    """One crop of the pool.

    Args:
        name: ``<prefix>_hemi-<H>``.
        dataset: absolute path of its BIDS dataset.
        subject: participant label (without ``sub-``).
        prefix: the image's BIDS stem.
        hemisphere: ``"L"`` or ``"R"``.
    """

    name: str
    dataset: str
    subject: str
    prefix: str
    hemisphere: str


@dataclass(frozen=True)
class PoolCache:
    """Where the pool's crops are, and what identifies them.

    Args:
        tensors: the safetensors file (``images``).
        sha256: its SHA-256, checked on every read.
        data_digest: digest of the crops and their records (part of pre-training keys).
        main_dataset: BIDS_DIR (its validation and test participants are left out).
        records: one per crop, in file order.
    """

    tensors: Path
    sha256: str
    data_digest: str
    main_dataset: str
    records: tuple[PoolRecord, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": str(self.tensors), "sha256": self.sha256,
                "data_digest": self.data_digest, "main_dataset": self.main_dataset,
                "records": [asdict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PoolCache:
        return cls(tensors=Path(data["tensors"]), sha256=data["sha256"],
                   data_digest=data["data_digest"], main_dataset=data["main_dataset"],
                   records=tuple(PoolRecord(**r) for r in data["records"]))


def check_pool_mode(settings: Settings) -> str:
    """``[study] pretrain_pool``, refused in one sentence when unknown."""
    mode = settings.study.pretrain_pool
    if mode not in POOL_MODES:
        raise RecipeError(f"[study] pretrain_pool {mode!r} is unknown; use one of "
                          f"{', '.join(POOL_MODES)}.")
    return mode


def cache_pretraining_pool(settings: Settings, crop_files: Sequence[CropFile],
                           folder: Path) -> PoolCache:
    """Write the pool of ``crop_files`` under ``folder`` (reused when its inputs are unchanged)."""
    folder = Path(folder)
    tensors_path, info_path = folder / TENSORS_NAME, folder / INFO_NAME
    main = str(Path(settings.run.bids_dir).absolute())
    records = tuple(PoolRecord(name=c.name, dataset=c.dataset or main, subject=c.image.subject,
                               prefix=c.image.prefix, hemisphere=c.hemisphere)
                    for c in crop_files)
    fingerprint = _fingerprint(settings, crop_files, records)
    cached = read_cache(PoolCache, info_path, tensors_path, fingerprint)
    if cached is not None:
        LOGGER.info("Reusing the study's pre-training pool in %s (%d crops).", tensors_path,
                    len(cached.records))
        return cached
    crops = load_crop_set([c.path for c in crop_files], settings.crop.shape_vox,
                          names=[r.name for r in records])
    sha256 = write_tensors(tensors_path, {"images": crops.images})
    digest = hashlib.sha256(crops.images.contiguous().numpy().tobytes())
    digest.update(json.dumps([asdict(r) for r in records]).encode())
    pool = PoolCache(tensors=tensors_path, sha256=sha256, data_digest=digest.hexdigest()[:16],
                     main_dataset=main, records=records)
    write_json(info_path, {"inputs_fingerprint": fingerprint, **pool.to_dict()})
    LOGGER.info("Pre-training pool written to %s: %s.", tensors_path, describe(records))
    return pool


def read_pool(pool: PoolCache) -> CropSet:
    """Every crop of ``pool`` (SHA-256 checked), in record order."""
    tensors = read_tensors(pool.tensors, pool.sha256)
    return CropSet(tensors["images"], names=[r.name for r in pool.records])


def pretraining_indices(pool: PoolCache, split: StudySplit, mode: str) -> list[int]:
    """Indices of the pool's crops that pre-train for ``split`` (see the module docstring)."""
    main = pool.main_dataset
    if mode == "train":
        wanted = set(split.train)
        return [i for i, r in enumerate(pool.records)
                if r.dataset == main and r.subject in wanted]
    held_out = set(split.validation) | set(split.test) | set(split.ood_test)
    return [i for i, r in enumerate(pool.records)
            if not (r.dataset == main and r.subject in held_out)]


def pool_summary(records: Sequence[PoolRecord], main_dataset: str) -> dict[str, Any]:
    """Counts of crops, images and participants, overall and per dataset."""
    datasets = {}
    for dataset in dict.fromkeys(r.dataset for r in records):
        mine = [r for r in records if r.dataset == dataset]
        datasets[Path(dataset).name] = {
            "path": dataset, "bids_dir": dataset == main_dataset, "n_crops": len(mine),
            "n_images": len({r.prefix for r in mine}),
            "n_participants": len({r.subject for r in mine})}
    return {"n_crops": len(records),
            "n_images": sum(d["n_images"] for d in datasets.values()),
            "n_participants": sum(d["n_participants"] for d in datasets.values()),
            # BIDS_DIR's participants among them: never a validation or test one
            "participants": sorted({r.subject for r in records if r.dataset == main_dataset}),
            "hemispheres": dict(sorted(Counter(r.hemisphere for r in records).items())),
            "datasets": datasets}


def describe(records: Sequence[PoolRecord]) -> str:
    """``"240 crops of 120 T1w images from 2 dataset(s)"``."""
    images = {(r.dataset, r.prefix) for r in records}
    return (f"{len(records)} crops of {len(images)} T1w images from "
            f"{len({r.dataset for r in records})} dataset(s)")


def _fingerprint(settings: Settings, crop_files: Sequence[CropFile],
                 records: Sequence[PoolRecord]) -> str:
    from bids_pcs.preprocess import preprocessing_settings

    files = []
    for crop in crop_files:
        stat = Path(crop.path).stat()
        files.append((str(crop.path), stat.st_size, stat.st_mtime_ns))
    plain = {"records": [asdict(r) for r in records], "files": files,
             "preprocessing": preprocessing_settings(settings)}
    return fingerprint_of(plain)


def selected_crops(pool: PoolCache, split: StudySplit, mode: str) -> tuple[CropSet,
                                                                           dict[str, Any]]:
    """The crops that pre-train for ``split`` and what model.json says about them."""
    indices = pretraining_indices(pool, split, mode)
    if not indices:
        raise RecipeError(f"No crop of the pre-training pool is left for fold {split.fold} "
                          f"with [study] pretrain_pool = {mode!r}.")
    crops = read_pool(pool)
    chosen = crops.subset(indices)
    records = [pool.records[i] for i in indices]
    return chosen, {**pool_summary(records, pool.main_dataset), "pretrain_pool": mode}

