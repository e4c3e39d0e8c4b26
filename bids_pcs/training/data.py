"""Crops held in memory as one tensor, so no NIfTI is decoded during training.

A medial-frontal crop is 32x96x64 float32 voxels (768 KiB); a thousand fit in
well under a GiB, so the whole set is read once, stacked, and batches are
slices of that tensor (on the GPU itself when it fits there).

Usage::

    crops = load_crop_set(paths, expected_shape=settings.crop.shape_vox)
    crops = crops.to(device)             # once
    batch = crops.batch(torch.tensor([0, 5]))   # {"image": (2, 1, 32, 96, 64), "index": ...}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bids_pcs.errors import InputDataError


@dataclass
class CropSet:
    """A stack of crops and, for supervised training, their targets.

    Args:
        images: float32 tensor (N, 1, X, Y, Z).
        targets: optional per-crop tensors with N as first dimension, e.g.
            ``"segmentation"`` (N, X, Y, Z) and ``"classification"`` (N,).
        names: one name per crop (file name or BIDS prefix + hemisphere).

    Example::

        crops = CropSet(torch.rand(4, 1, 32, 96, 64), names=["a", "b", "c", "d"])
        len(crops)  # 4
    """

    images: torch.Tensor
    targets: dict[str, torch.Tensor] = field(default_factory=dict)
    names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.ndim != 5 or self.images.shape[1] != 1:
            raise ValueError(f"images must be (N, 1, X, Y, Z), not {tuple(self.images.shape)}")
        for key, value in self.targets.items():
            if value.shape[0] != self.images.shape[0]:
                raise ValueError(f"target {key!r} has {value.shape[0]} items, images "
                                 f"{self.images.shape[0]}")
        if not self.names:
            self.names = [f"crop-{i}" for i in range(len(self))]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[2:])  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        tensors = [self.images, *self.targets.values()]
        return sum(t.element_size() * t.numel() for t in tensors)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device: torch.device) -> CropSet:
        """A copy on ``device`` (or self when already there)."""
        if self.images.device == device:
            return self
        return CropSet(self.images.to(device),
                       {k: v.to(device) for k, v in self.targets.items()}, self.names)

    def pin_memory(self) -> CropSet:
        """A copy in page-locked memory, for asynchronous host-to-GPU copies."""
        return CropSet(self.images.pin_memory(),
                       {k: v.pin_memory() for k, v in self.targets.items()}, self.names)

    def subset(self, indices: Sequence[int]) -> CropSet:
        """The crops at ``indices`` (a train/validation split)."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return CropSet(self.images[index].clone(),
                       {k: v[index].clone() for k, v in self.targets.items()},
                       [self.names[i] for i in index.tolist()])

    def batch(self, indices: torch.Tensor,
              device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """The batch at ``indices``, moved to ``device`` without blocking when pinned."""
        index = indices.to(self.images.device)
        out = {"image": self.images.index_select(0, index), "index": indices}
        for key, value in self.targets.items():
            out[key] = value.index_select(0, index)
        if device is not None and device != self.images.device:
            out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        return out


def load_crop_set(
    paths: Sequence[str | Path],
    expected_shape: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> CropSet:
    """Read crop NIfTI files once into a :class:`CropSet`.

    Args:
        paths: crop files (``*_desc-medialfrontal_T1w.nii.gz``); right crops are
            already mirrored on disk, so they are used as they are.
        expected_shape: ``settings.crop.shape_vox``; a crop of another shape is
            refused (it was made with another recipe).
        names: one name per crop (default: the file names).

    Returns:
        The stacked crops, float32, on the CPU.
    """
    import nibabel as nib

    if not paths:
        raise InputDataError("No crops to train on; run the participant level first.")
    shape = tuple(int(s) for s in expected_shape) if expected_shape is not None else None
    images = None
    for i, path in enumerate(paths):
        try:
            array = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
        except Exception as exc:  # nibabel raises many types for unreadable files
            raise InputDataError(
                f"Crop {path} cannot be read ({exc}); delete it and rerun the participant level."
            ) from exc
        array = np.squeeze(array)
        if shape is None:
            shape = array.shape
        if array.shape != shape:
            raise InputDataError(
                f"Crop {path} has shape {array.shape}, not {shape} as the recipe's crop "
                "geometry says; preprocess again with this recipe."
            )
        if not np.isfinite(array).all():
            raise InputDataError(f"Crop {path} holds NaN or infinite values; preprocess it again.")
        if images is None:
            images = torch.empty((len(paths), 1, *shape), dtype=torch.float32)
        images[i, 0] = torch.from_numpy(array)
    crop_names = list(names) if names is not None else [Path(p).name for p in paths]
    return CropSet(images, names=crop_names)  # type: ignore[arg-type]
