"""Inference over preprocessed images: predict, map to the T1w grid, measure, write.

The participant level (``--model``) calls :func:`infer_images` with the model
directory; the demo and the study may pass an already loaded
:class:`~bids_pcs.inference.model.InferenceModel` instead. Per image:

1. registration QC failed: the result table records it (``qc_passed`` false,
   ``n/a`` values) and the image is logged, never predicted;
2. otherwise both crops run through the network as one batch
   (:func:`~bids_pcs.inference.predict.predict_hemispheres`, optional flip TTA),
   P(PCS) is mapped to the native grid and thresholded into the dseg
   (:mod:`~bids_pcs.inference.native`), length and volume are measured on it,
   and the derivatives are written (:mod:`~bids_pcs.inference.writer`).

Usage::

    results = infer_images(settings, preprocessed)                 # model: settings.run.model
    results = infer_images(settings, preprocessed, model=loaded)   # an InferenceModel
    results[0].hemispheres["L"].pcs_class
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from bids_pcs.config import HEMISPHERES, Settings
from bids_pcs.devices import resolve_device
from bids_pcs.errors import ModelFileError
from bids_pcs.inference.calls import RULE_LENGTH, class_rule, segmentation_trained
from bids_pcs.inference.model import InferenceModel, load_inference_model
from bids_pcs.inference.native import to_native
from bids_pcs.inference.predict import predict_hemispheres
from bids_pcs.inference.writer import WriteContext, write_image_results, write_qc_failed
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.io.nifti import load_crop
from bids_pcs.preprocess import PreprocessedImage
from bids_pcs.runlog import progress

LOGGER = logging.getLogger("bids_pcs.inference")


@dataclass(frozen=True)
class HemisphereSummary:
    """One hemisphere's result as written to the table (``None``: not computed)."""

    pcs_class: str | None
    probabilities: dict[str, float] = field(default_factory=dict)
    length_mm: float | None = None
    volume_mm3: float | None = None
    classes_agree: bool = True


@dataclass(frozen=True)
class ImageInference:
    """What inference did for one T1w image.

    Args:
        image: the T1w image.
        qc_passed: whether its registration passed QC (else nothing was predicted).
        hemispheres: per hemisphere class, probabilities, length and volume.
        files: the derivative files written.
        seconds: wall time of prediction, mapping and writing.
    """

    image: T1wImage
    qc_passed: bool
    hemispheres: dict[str, HemisphereSummary]
    files: list[Path]
    seconds: float


def infer_images(settings: Settings, preprocessed: Sequence[PreprocessedImage], *,
                 model: InferenceModel | None = None, device: torch.device | None = None,
                 output_dir: Path | None = None) -> list[ImageInference]:
    """Predict and write the PCS derivatives of every image (QC failures recorded only).

    Args:
        settings: the run's settings (``inference``, ``labels``, ``run.device``,
            ``run.model`` when ``model`` is not given).
        preprocessed: the images' preprocessing outputs.
        model: a loaded model; default: load ``settings.run.model``.
        device: where to run the network (default: ``settings.run.device``).
        output_dir: the derivative dataset (default ``settings.run.output_dir``).

    Raises:
        ModelFileError: no model given, or one that does not fit the run.
    """
    output_dir = Path(output_dir or settings.run.output_dir).absolute()
    device = device or resolve_device(settings.run.device)
    if model is None:
        if not settings.run.model:
            raise ModelFileError("Inference needs a model; pass --model MODEL_DIR (a "
                                 "fine-tuned model directory).")
        model = load_inference_model(settings, settings.run.model, device)
    network = model.network.to(device).eval()
    context = WriteContext(model=model.provenance, threshold=settings.inference.threshold,
                           flip_tta=settings.inference.flip_tta, labels=settings.labels,
                           class_rule=class_rule(settings.inference.class_rule, model.card),
                           class_rule_setting=settings.inference.class_rule,
                           segmentation_trained=segmentation_trained(model.card))
    LOGGER.info("Inferring the PCS of %d image(s) with %s on %s%s; reported class from the %s",
                len(preprocessed), context.model["name"], device,
                " (flip TTA)" if context.flip_tta else "",
                "mask's length" if context.class_rule == RULE_LENGTH else
                "classification head" + ("" if context.segmentation_trained else
                                         " (the model learnt no segmentation)"))
    results = []
    for item in progress(preprocessed, desc="inference", unit="image"):
        start = time.perf_counter()
        if not item.qc_passed:
            LOGGER.warning("%s: registration QC failed (correlation %s < %s); no PCS inferred, "
                           "recorded as qc_passed false.", item.image.prefix,
                           item.qc.get("MinCorrelation"), item.qc.get("Threshold"))
            files = write_qc_failed(output_dir, item, context)
            results.append(ImageInference(item.image, False,
                                          {h: HemisphereSummary(None) for h in HEMISPHERES},
                                          files, time.perf_counter() - start))
            continue
        results.append(infer_image(settings, item, network, context, output_dir, device,
                                   start))
    return results


def infer_image(settings: Settings, item: PreprocessedImage, network: torch.nn.Module,
                context: WriteContext, output_dir: Path, device: torch.device,
                start: float | None = None) -> ImageInference:
    """Predict, map, measure and write one image that passed QC."""
    start = time.perf_counter() if start is None else start
    crops = {h: load_crop(item.crops[h]) for h in HEMISPHERES}
    predictions = predict_hemispheres(network, crops, device=device,
                                      flip_tta=settings.inference.flip_tta,
                                      mixed_precision=settings.inference.mixed_precision,
                                      threshold=settings.inference.threshold)
    native = to_native(predictions, item, threshold=settings.inference.threshold,
                       labels=settings.labels)
    files, rows = write_image_results(output_dir, item, native, predictions, context)
    classes = settings.labels.classes
    summary = {h: HemisphereSummary(
        pcs_class=rows[h]["pcs_class"],
        probabilities={c: float(p) for c, p in
                       zip(classes, predictions[h].class_probabilities, strict=True)},
        length_mm=_float(rows[h]["pcs_length_mm"]),
        volume_mm3=_float(rows[h]["pcs_volume_mm3"]),
        classes_agree=rows[h]["class_agreement"] != "false") for h in HEMISPHERES}
    seconds = time.perf_counter() - start
    LOGGER.info("%s: left %s (%s mm), right %s (%s mm) [%.1f s]", item.image.prefix,
                summary["L"].pcs_class, rows["L"]["pcs_length_mm"], summary["R"].pcs_class,
                rows["R"]["pcs_length_mm"], seconds)
    for hemisphere in HEMISPHERES:
        if not summary[hemisphere].classes_agree:
            LOGGER.warning("%s: the %s PCS is %s by its length (%s mm) but %s by the "
                           "classification head; reported %s, flagged for review.",
                           item.image.prefix, hemisphere, rows[hemisphere]["pcs_class_length"],
                           rows[hemisphere]["pcs_length_mm"],
                           rows[hemisphere]["pcs_class_network"], summary[hemisphere].pcs_class)
    return ImageInference(item.image, True, summary, files, seconds)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
