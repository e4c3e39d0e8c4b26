"""Labelled crops: the network's inputs with their PCS masks and classes on the crop grid.

A label dataset gives, per T1w image, a dseg on the *native* T1w grid (0
background, ``labels.dseg_left`` left PCS, ``labels.dseg_right`` right PCS).
The network sees two crops per image, each a box in template space resampled
from the native image through the registration's forward transform (the right
one mirrored).  The targets are made the same way:

1. the native dseg is split into the hemisphere's binary PCS mask (left label
   for the ``L`` crop, right label for the ``R`` crop);
2. that mask is resampled onto the hemisphere's crop grid with
   :func:`bids_pcs.spatial.crops.resample_to_crop` and the image's forward
   transform, with nearest-neighbour interpolation: the same transform, grid
   and mirroring as the crop itself, so mask and crop align voxel for voxel;
3. the hemisphere's class (``absent`` / ``present`` / ``prominent``, or the
   binary scheme, from the label source) becomes its index in
   ``settings.labels.classes``.

Masks are optional (:mod:`bids_pcs.io.labels`): an image without one gets an
empty target and ``has_mask`` 0, so the objective switches the segmentation
loss off for its crops and they train the classification only; a hemisphere
without a class gets the class index :data:`NO_CLASS` and trains no
classification.

Usage::

    crops = load_labelled_crops(settings, pairs)         # pairs: (PreprocessedImage, LabelRecord)
    train, validation = split_by_participant(crops, 0.2, seed=0)
    train.crops.targets["segmentation"].shape            # (N, 32, 96, 64), uint8
    train.crops.targets["has_mask"]                       # (N,) uint8, 1 where a mask exists
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch

from bids_pcs.config import HEMISPHERES, Settings
from bids_pcs.errors import InputDataError
from bids_pcs.io.labels import LabelRecord, load_dseg
from bids_pcs.splits import participant_strata, split_participants
from bids_pcs.training.data import CropSet

if TYPE_CHECKING:
    from bids_pcs.preprocess import PreprocessedImage

LOGGER = logging.getLogger(__name__)
NO_CLASS = -1  # classification target of a hemisphere whose class is not known


@dataclass(frozen=True)
class CropInfo:
    """Where one labelled crop comes from.

    Args:
        name: ``<prefix>_hemi-<L|R>``.
        subject: participant label (the unit of the train/validation split).
        session: session label or ``None``.
        prefix: the T1w image's BIDS prefix.
        hemisphere: ``"L"`` or ``"R"``.
        pcs_class: the hemisphere's class name (``None``: not known).
        class_source: where it came from (see :class:`bids_pcs.io.labels.LabelRecord`).
        pcs_voxels: PCS voxels of the target on the crop grid.
        has_mask: whether the image has a PCS mask (else the segmentation
            target is empty and unused).
        length_mm: the length a label table gives, ``None`` when not given.
    """

    name: str
    subject: str
    session: str | None
    prefix: str
    hemisphere: str
    pcs_class: str | None
    class_source: str | None
    pcs_voxels: int
    has_mask: bool = True
    length_mm: float | None = None


@dataclass
class LabelledCrops:
    """Crops with their ``"segmentation"`` and ``"classification"`` targets, and provenance.

    Args:
        crops: images (N, 1, X, Y, Z) float32 and targets ``segmentation``
            (N, X, Y, Z) uint8 and ``classification`` (N,) int64
            (:data:`NO_CLASS` where unknown); ``has_mask`` (N,) uint8 is set
            here from ``info``.
        info: one :class:`CropInfo` per crop, in the same order.

    Example::

        labelled = load_labelled_crops(settings, pairs)
        labelled.participants            # ["01", "02", ...]
        part = labelled.select(["01"])   # the crops of participant 01
    """

    crops: CropSet
    info: list[CropInfo]

    def __post_init__(self) -> None:
        if len(self.info) != len(self.crops):
            raise ValueError(f"{len(self.info)} crop records for {len(self.crops)} crops")
        for key in ("segmentation", "classification"):
            if key not in self.crops.targets:
                raise ValueError(f"labelled crops need a {key!r} target")
        # one source for which crops have a mask: their records
        self.crops.targets["has_mask"] = torch.tensor(
            [bool(item.has_mask) for item in self.info], dtype=torch.uint8)

    def __len__(self) -> int:
        return len(self.crops)

    @property
    def participants(self) -> list[str]:
        return sorted({item.subject for item in self.info})

    def subset(self, indices: Sequence[int]) -> LabelledCrops:
        """The crops at ``indices``."""
        return LabelledCrops(self.crops.subset(indices), [self.info[i] for i in indices])

    def select(self, subjects: Sequence[str]) -> LabelledCrops:
        """Every crop (both hemispheres, all sessions) of the given participants."""
        wanted = {s.removeprefix("sub-") for s in subjects}
        return self.subset([i for i, item in enumerate(self.info) if item.subject in wanted])

    def summary(self) -> dict[str, Any]:
        """What model.json records about the crops a model learnt from (or was scored on)."""
        return {
            "n_crops": len(self),
            "n_images": len({item.prefix for item in self.info}),
            "n_participants": len(self.participants),
            "participants": self.participants,
            "hemispheres": dict(sorted(Counter(item.hemisphere for item in self.info).items())),
            "classes": dict(sorted(Counter(item.pcs_class or "n/a"
                                           for item in self.info).items())),
            "class_sources": dict(sorted(Counter(i.class_source or "n/a"
                                                 for i in self.info).items())),
            "n_crops_with_mask": sum(1 for item in self.info if item.has_mask),
            "n_crops_with_class": sum(1 for item in self.info if item.pcs_class is not None),
            "crops_without_pcs_voxels": sum(1 for item in self.info
                                            if item.has_mask and item.pcs_voxels == 0),
        }


def crop_targets(settings: Settings, preprocessed: PreprocessedImage,
                 record: LabelRecord) -> dict[str, np.ndarray]:
    """The PCS mask of each hemisphere on its crop grid (uint8, 0/1), mirrored like the crop.

    Args:
        settings: the run's settings (crop geometry, label map).
        preprocessed: the image's preprocessing outputs (forward transform, crops).
        record: the image's labels (native dseg path).

    Returns:
        ``{"L": mask, "R": mask}``, each of shape ``settings.crop.shape_vox``;
        all zeros for an image without a mask.
    """
    from bids_pcs.spatial.crops import resample_to_crop

    if record.dseg_path is None:
        return {h: np.zeros(settings.crop.shape_vox, dtype=np.uint8) for h in HEMISPHERES}
    dseg = load_dseg(record.dseg_path, labels=settings.labels)
    data = np.asanyarray(dseg.dataobj)
    values = {"L": settings.labels.dseg_left, "R": settings.labels.dseg_right}
    out = {}
    for hemisphere in HEMISPHERES:
        native = data == values[hemisphere]
        mask_img = nib.Nifti1Image(native.astype(np.float32), dseg.affine)
        resampled = resample_to_crop(mask_img, [preprocessed.forward_transform], settings.crop,
                                     hemisphere, kind="label")
        mask = (np.asarray(resampled.dataobj) > 0.5).astype(np.uint8)
        if mask.shape != tuple(settings.crop.shape_vox):
            raise InputDataError(f"The label of {record.image.prefix} resampled to shape "
                                 f"{mask.shape}, not the crop's {settings.crop.shape_vox}.")
        if native.any() and not mask.any():
            LOGGER.warning("%s: the %s PCS of %s lies outside the crop box; the crop is trained "
                           "as having no PCS voxel.", record.image.prefix, hemisphere,
                           record.dseg_path.name)
        out[hemisphere] = mask
    return out


def load_labelled_crops(settings: Settings,
                        pairs: Sequence[tuple[PreprocessedImage, LabelRecord]]
                        ) -> LabelledCrops:
    """Read both crops of every image and build their targets.

    Args:
        settings: the run's settings.
        pairs: (preprocessing outputs, labels) of images that passed QC, in order.

    Raises:
        InputDataError: nothing to load, or a crop of another shape than the recipe's.
    """
    from bids_pcs.io.nifti import load_crop

    if not pairs:
        raise InputDataError("No labelled image passed preprocessing; nothing to fine-tune on.")
    shape = tuple(settings.crop.shape_vox)
    n = 2 * len(pairs)
    images = torch.empty((n, 1, *shape), dtype=torch.float32)
    masks = torch.empty((n, *shape), dtype=torch.uint8)
    classes = torch.empty(n, dtype=torch.long)
    info: list[CropInfo] = []
    for i, (preprocessed, record) in enumerate(pairs):
        targets = crop_targets(settings, preprocessed, record)
        for j, hemisphere in enumerate(HEMISPHERES):
            k = 2 * i + j
            crop = load_crop(preprocessed.crops[hemisphere])
            if crop.shape != shape:
                raise InputDataError(
                    f"Crop {preprocessed.crops[hemisphere]} has shape {crop.shape}, not "
                    f"{shape} as the recipe says; preprocess again with this recipe.")
            images[k, 0] = torch.from_numpy(crop)
            masks[k] = torch.from_numpy(targets[hemisphere])
            name = record.classes[hemisphere]
            classes[k] = settings.labels.classes.index(name) if name is not None else NO_CLASS
            image = record.image
            info.append(CropInfo(
                name=f"{image.prefix}_hemi-{hemisphere}", subject=image.subject,
                session=image.session, prefix=image.prefix, hemisphere=hemisphere,
                pcs_class=name, class_source=record.class_sources[hemisphere],
                pcs_voxels=int(targets[hemisphere].sum()), has_mask=record.has_mask,
                length_mm=record.lengths_mm.get(hemisphere)))
    crops = CropSet(images, {"segmentation": masks, "classification": classes},
                    [item.name for item in info])
    return LabelledCrops(crops, info)


def split_by_participant(crops: LabelledCrops, validation_fraction: float, seed: int = 0,
                         ) -> tuple[LabelledCrops, LabelledCrops | None]:
    """A seeded train/validation split in which every participant is on one side only.

    The split of :mod:`bids_pcs.splits` (the study's and the demo's too):
    stratified by how many hemispheres of a participant have a PCS, both
    hemispheres and every session of a participant in the same part.

    Args:
        crops: every labelled crop.
        validation_fraction: share of *participants* held out, rounded, at
            least one and never all when above 0; 0 gives no validation part.
        seed: the same seed and participants give the same split.

    Returns:
        (train, validation); validation is ``None`` when nobody is held out.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise InputDataError(f"[finetune] validation_fraction must be in [0, 1), "
                             f"not {validation_fraction}.")
    if validation_fraction == 0 or len(crops.participants) < 2:
        return crops, None
    split = split_participants(participant_strata(crops.info),
                               (1.0 - validation_fraction, validation_fraction, 0.0), seed=seed)
    return crops.select(split.train), crops.select(split.validation)
