"""Small labelled crops for the fine-tuning tests (no files, no registration).

Each crop is a smooth random volume with a dark, thin, elongated band (a
"sulcus") where the target mask is; every other crop has none (class absent).
"""

from __future__ import annotations

import torch
from training_helpers import TINY_SHAPE, smooth_crops

from bids_pcs.config import PCS_CLASSES, ModelSettings, Settings, load_settings
from bids_pcs.finetuning.data import CropInfo, LabelledCrops
from bids_pcs.models.network import PcsNetwork, build_network
from bids_pcs.training.data import CropSet


def labelled_crops(n: int = 4, shape: tuple[int, int, int] = TINY_SHAPE, seed: int = 0,
                   subjects: list[str] | None = None) -> LabelledCrops:
    """``n`` crops; odd ones hold a band (class present), even ones none (class absent)."""
    images = smooth_crops(n, shape, seed)
    masks = torch.zeros((n, *shape), dtype=torch.uint8)
    classes = torch.zeros(n, dtype=torch.long)
    x, y, z = shape
    for k in range(1, n, 2):
        masks[k, x // 2 - 1: x // 2 + 1, y // 4: 3 * y // 4, z // 2 - 1: z // 2 + 1] = 1
        classes[k] = 1
    images[:, 0][masks.bool()] = 0.0
    subjects = subjects or [f"{k // 2 + 1:02d}" for k in range(n)]
    info = [CropInfo(name=f"sub-{s}_hemi-{'LR'[k % 2]}", subject=s, session=None,
                     prefix=f"sub-{s}", hemisphere="LR"[k % 2],
                     pcs_class=PCS_CLASSES[int(classes[k])], class_source="participants.tsv",
                     pcs_voxels=int(masks[k].sum()))
            for k, s in enumerate(subjects)]
    return LabelledCrops(CropSet(images, {"segmentation": masks, "classification": classes},
                                 [i.name for i in info]), info)


def tiny_settings(**finetune) -> Settings:
    """Default settings with the tiny CNN on tiny crops (what :func:`tiny_network` builds)."""
    return load_settings("default", overrides={
        "crop": {"size_mm": list(TINY_SHAPE)},
        "model": {"architecture": "cnn", "feature_size": 4},
        "run": {"device": "cpu"},
        "finetune": {"epochs": 1, "batch_size": 2, "learning_rate": 1e-2, **finetune},
    })


def tiny_network(seed: int = 0, dropout: float = 0.0) -> PcsNetwork:
    torch.manual_seed(seed)
    return build_network(ModelSettings(architecture="cnn", feature_size=4, dropout=dropout),
                         TINY_SHAPE)
