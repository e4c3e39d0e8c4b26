"""Test scores on the native T1w grid, against the native labels: what a user gets.

The network predicts on template-space crops; a user receives the dseg on
the T1w grid of the scan (:mod:`bids_pcs.inference.native`).  Scoring on the
crop grid would judge the labels *resampled into template space* (a
nearest-neighbour copy that shifts and thins a 1-2 voxel thick sulcus) and
would miss what the mapping back loses.  So each test image is treated as
inference treats it:

1. both hemispheres' P(PCS) are mapped to the native grid through the
   inverse registration and thresholded into one dseg
   (:func:`bids_pcs.inference.native.to_native`, the participant level's own
   function);
2. each hemisphere's mask is compared with the native label dseg of the
   label dataset: Dice and HD95 in millimetres with the image's own voxel
   spacing (:func:`bids_pcs.metrics.mask_metrics`);
3. each hemisphere gets the class it would be *reported* with
   (``predicted_class``), by the participant level's class rule
   (:func:`bids_pcs.inference.calls.hemisphere_call`: for a model that learnt
   masks, the class of the measured length under the protocol's thresholds),
   with the head's own class (``network_class``) and probabilities beside it,
   and ``presence_score``, what ranks presence for the AUC (the measured
   length in mm under the length rule, ``p_present + p_prominent`` under the
   network rule).

A hemisphere whose image has no dseg (class-only labels) gets a row without
mask scores (``has_mask`` false), so that segmentation scores rest only on
images with a mask; :func:`bids_pcs.metrics.hemisphere_scores` counts them.

Usage::

    rows = native_rows(settings, predictions, test, cache.images, rule="length")
    rows[0]["dice"], rows[0]["hd95_mm"], rows[0]["predicted_class"], rows[0]["network_class"]
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from bids_pcs.config import HEMISPHERES, Settings
from bids_pcs.errors import InputDataError
from bids_pcs.finetuning.data import LabelledCrops
from bids_pcs.finetuning.evaluation import CropPredictions


def native_rows(settings: Settings, predictions: CropPredictions, test: LabelledCrops,
                images: Mapping[str, Mapping[str, Any]], *, rule: str
                ) -> list[dict[str, Any]]:
    """One row per test hemisphere, scored on the native T1w grid.

    Args:
        settings: the study's settings (output directory with the preprocessing
            derivatives, inference threshold, label map).
        predictions: :func:`~bids_pcs.finetuning.predict_crops` of ``test.crops``
            with ``keep_probability=True``.
        test: the test crops (both hemispheres of every image).
        images: prefix -> the image's source record (see
            :func:`bids_pcs.study.crops.image_source`).
        rule: the class rule in force for the model (``"length"`` or
            ``"network"``, :func:`bids_pcs.inference.calls.class_rule`).

    Raises:
        InputDataError: an image's preprocessing outputs are gone, or its
            label dseg is not on its T1w grid.
    """
    from bids_pcs import metrics
    from bids_pcs.inference.calls import RULE_LENGTH, hemisphere_call
    from bids_pcs.inference.native import to_native
    from bids_pcs.inference.predict import HemispherePrediction
    from bids_pcs.io.labels import load_dseg
    from bids_pcs.morphometry import split_hemispheres

    if predictions.pcs_probability is None:
        raise ValueError("native scoring needs the voxel probabilities (keep_probability=True)")
    by_image: dict[str, dict[str, int]] = {}
    for k, item in enumerate(test.info):
        by_image.setdefault(item.prefix, {})[item.hemisphere] = k
    rows = []
    for prefix, index in by_image.items():
        if set(index) != set(HEMISPHERES):
            raise ValueError(f"{prefix}: native scoring needs both hemispheres' crops")
        source = images[prefix]
        preprocessed = _preprocessed(settings, source)
        hemispheres = {h: HemispherePrediction(
            pcs_probability=predictions.pcs_probability[k].astype(np.float32),
            class_probabilities=predictions.probabilities[k].astype(np.float64))
            for h, k in index.items()}
        native = to_native(hemispheres, preprocessed, threshold=settings.inference.threshold,
                           labels=settings.labels)
        predicted = split_hemispheres(native.dseg, settings.labels)
        truth, spacing = None, _spacing(native.affine)
        if source.get("dseg"):
            reference = nib.Nifti1Image(np.zeros(native.dseg.shape, np.uint8), native.affine)
            dseg = load_dseg(Path(source["dseg"]), reference=reference, labels=settings.labels)
            truth = split_hemispheres(np.asanyarray(dseg.dataobj), settings.labels)
        for hemisphere, k in index.items():
            item = test.info[k]
            mine = predicted[hemisphere]
            probabilities = predictions.probabilities[k]
            length_mm = native.morphometry[hemisphere].length_mm
            call = hemisphere_call(rule, probabilities, length_mm, settings.labels)
            row = {
                "crop": item.name, "participant": item.subject, "session": item.session,
                "image": prefix, "hemisphere": hemisphere, "true_class": item.pcs_class,
                "probabilities": [float(p) for p in probabilities],
                "predicted_class": call.pcs_class, "network_class": call.network_class,
                "class_rule": call.rule,
                "presence_score": (float(length_mm) if call.rule == RULE_LENGTH else
                                   float(metrics.presence_probability(probabilities[None])[0])),
                "has_mask": truth is not None, "predicted_voxels": int(mine.sum()),
                "predicted_length_mm": length_mm,
                "spacing_mm": list(spacing), "grid": "native T1w",
            }
            if truth is None:
                row.update(true_voxels=None, dice=None, hd95_mm=None)
            else:
                scores = metrics.mask_metrics(mine, truth[hemisphere], spacing=spacing)
                row.update(true_voxels=scores.true_voxels, dice=scores.dice,
                           hd95_mm=scores.hd95_mm)
            rows.append(row)
    return rows


def _preprocessed(settings: Settings, source: Mapping[str, Any]):
    from bids_pcs.io.bids_input import T1wImage
    from bids_pcs.preprocess import load_preprocessed

    image = T1wImage(path=Path(source["path"]), subject=source["subject"],
                     session=source.get("session"),
                     entities=tuple(tuple(pair) for pair in source.get("entities", ())),
                     relpath=source.get("relpath", ""))
    preprocessed = load_preprocessed(settings, image)
    if preprocessed is None:
        raise InputDataError(
            f"The preprocessing outputs of {image.prefix} are missing or were made with other "
            f"settings in {settings.run.output_dir}; rerun the study (it preprocesses again).")
    return preprocessed


def _spacing(affine: np.ndarray) -> tuple[float, float, float]:
    # voxel sizes along the array axes, whatever the orientation
    return tuple(float(v) for v in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)))
