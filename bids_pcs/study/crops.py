"""The study's labelled crops, built once and shared with every job through one file.

Each configuration runs in its own process; rebuilding the targets there
(resampling every dseg onto the crop grids) would repeat the same work twenty
times and add it to the measured cost.  The parent builds the
:class:`~bids_pcs.finetuning.LabelledCrops` once, writes them to
``WORK_DIR/study/labelled_crops.safetensors`` (images, masks, classes) with a
JSON beside it (one record per crop, the file's SHA-256 and a digest of the
data), and each job reads them back, checking the SHA-256.

On rerun the cache is reused when its *inputs* are unchanged (the crop and
dseg files, their sizes and modification times, the classes and the settings
they depend on), so a resumed study does not resample anything again.

Usage::

    cache = cache_labelled_crops(settings, pairs, work_dir / "study")
    labelled = read_labelled_crops(cache)      # in a job
    cache.data_digest                          # part of every job's key
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from bids_pcs.config import Settings
from bids_pcs.finetuning.data import CropInfo, LabelledCrops, load_labelled_crops
from bids_pcs.io.atomic import write_json
from bids_pcs.models.tensor_file import read_tensors, write_tensors
from bids_pcs.training.data import CropSet

_Cache = TypeVar("_Cache")

if TYPE_CHECKING:
    from bids_pcs.io.labels import LabelRecord
    from bids_pcs.preprocess import PreprocessedImage

LOGGER = logging.getLogger(__name__)
TENSORS_NAME = "labelled_crops.safetensors"
INFO_NAME = "labelled_crops.json"
CACHE_FORMAT = 2  # 2: image sources for native-grid scoring; a cache of another format is rebuilt


@dataclass(frozen=True)
class CropCache:
    """Where the study's labelled crops are, and what identifies them.

    Args:
        tensors: the safetensors file (``images``, ``segmentation``, ``classification``).
        sha256: its SHA-256, checked on every read.
        data_digest: digest of the crops, targets and crop records (part of job keys).
        info: one record per crop, in file order.
        images: image prefix -> where its T1w and native label dseg are
            (:func:`image_source`), for scoring on the native grid.
    """

    tensors: Path
    sha256: str
    data_digest: str
    info: tuple[CropInfo, ...]
    images: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"tensors": str(self.tensors), "sha256": self.sha256,
                "data_digest": self.data_digest,
                "info": [dataclasses.asdict(item) for item in self.info],
                "images": self.images}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CropCache:
        return cls(tensors=Path(data["tensors"]), sha256=data["sha256"],
                   data_digest=data["data_digest"],
                   info=tuple(CropInfo(**item) for item in data["info"]),
                   images=dict(data.get("images") or {}))


def image_source(record: LabelRecord) -> dict[str, Any]:
    """Where one labelled image is: its T1w (rebuilds the ``T1wImage``) and native dseg."""
    image = record.image
    dseg = getattr(record, "dseg_path", None)
    return {"path": str(image.path), "subject": image.subject, "session": image.session,
            "entities": [list(pair) for pair in image.entities], "relpath": image.relpath,
            "dseg": str(dseg) if dseg else None}


def cache_labelled_crops(settings: Settings,
                         pairs: Sequence[tuple[PreprocessedImage, LabelRecord]],
                         folder: Path) -> CropCache:
    """Build (or reuse) the labelled crops of ``pairs`` under ``folder``."""
    folder = Path(folder)
    tensors_path, info_path = folder / TENSORS_NAME, folder / INFO_NAME
    fingerprint = inputs_fingerprint(settings, pairs)
    cached = read_cache(CropCache, info_path, tensors_path, fingerprint)
    if cached is not None:
        LOGGER.info("Reusing the study's labelled crops in %s (%d crops).", tensors_path,
                    len(cached.info))
        return cached
    labelled = load_labelled_crops(settings, pairs)
    crops = labelled.crops
    tensors = {"images": crops.images, "segmentation": crops.targets["segmentation"],
               "classification": crops.targets["classification"]}
    sha256 = write_tensors(tensors_path, tensors)
    cache = CropCache(tensors=tensors_path, sha256=sha256,
                      data_digest=data_digest(tensors, labelled.info),
                      info=tuple(labelled.info),
                      images={record.image.prefix: image_source(record) for _, record in pairs})
    write_json(info_path, {"inputs_fingerprint": fingerprint, **cache.to_dict()})
    LOGGER.info("Study crops written to %s (%d crops of %d participants).", tensors_path,
                len(labelled), len(labelled.participants))
    return cache


def read_labelled_crops(cache: CropCache) -> LabelledCrops:
    """The crops and targets of ``cache`` (SHA-256 checked)."""
    tensors = read_tensors(cache.tensors, cache.sha256)
    crops = CropSet(tensors["images"], {"segmentation": tensors["segmentation"],
                                        "classification": tensors["classification"]},
                    [item.name for item in cache.info])
    return LabelledCrops(crops, list(cache.info))


def data_digest(tensors: dict[str, torch.Tensor], info: Sequence[CropInfo]) -> str:
    """SHA-256 (16 hex digits) of the tensors' bytes and the crop records."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].contiguous().numpy().tobytes())
    digest.update(json.dumps([dataclasses.asdict(i) for i in info], sort_keys=True).encode())
    return digest.hexdigest()[:16]


def inputs_fingerprint(settings: Settings,
                       pairs: Sequence[tuple[PreprocessedImage, LabelRecord]]) -> str:
    """Digest of the files and settings the labelled crops are built from."""
    from bids_pcs.preprocess import preprocessing_settings

    items = []
    for preprocessed, record in pairs:
        files = [*preprocessed.crops.values(), preprocessed.forward_transform]
        files += [record.dseg_path] if record.dseg_path is not None else []
        items.append({
            "prefix": record.image.prefix,
            "files": [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in map(Path, files)],
            "classes": record.classes,
            "class_sources": record.class_sources,
            "lengths_mm": record.lengths_mm,
        })
    plain = {"format": CACHE_FORMAT, "images": items,
             "preprocessing": preprocessing_settings(settings),
             "labels": settings.to_dict()["labels"]}
    return fingerprint_of(plain)


def read_cache(kind: type[_Cache], info_path: Path, tensors_path: Path,
               fingerprint: str) -> _Cache | None:
    """A cache of ``kind`` (its ``from_dict``) if both files are there and its inputs match."""
    if not (info_path.is_file() and tensors_path.is_file()):
        return None
    try:
        data = json.loads(info_path.read_text())
        if data.get("inputs_fingerprint") != fingerprint:
            return None
        return kind.from_dict({**data, "tensors": str(tensors_path)})
    except (OSError, ValueError, KeyError, TypeError):
        return None  # unreadable: rebuilt


def fingerprint_of(plain: dict[str, Any]) -> str:
    """A cache's inputs as one digest (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()
