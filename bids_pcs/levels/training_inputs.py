"""What the training levels share: the selected images, preprocessed, that passed QC.

``pretrain`` learns from the crops of every selected image, ``finetune`` and
``study`` from those of the labelled ones (:func:`collect_labelled`); all
three follow one skeleton:

1. the selected T1w images (:func:`selected_images`; none is an error);
2. preprocessing of those missing their crops, on the first process only
   under ``torchrun`` (the others wait, then read what it made);
3. images that failed registration QC are logged and set aside.

Usage::

    images = selected_images(settings)
    passed, qc_failed = preprocessed_passing_qc(settings, images, context)
    passed[0].crops["L"]       # a PreprocessedImage of an image that passed QC
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids_pcs.config import Settings
from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import T1wImage, collect_t1w
from bids_pcs.io.labels import LabelRecord, read_labels
from bids_pcs.training.distributed import DistContext, barrier

if TYPE_CHECKING:
    from bids_pcs.preprocess import PreprocessedImage

LOGGER = logging.getLogger("bids_pcs.levels")


def selected_images(settings: Settings) -> list[T1wImage]:
    """The T1w images chosen by ``--participant-label`` and ``--session-label``.

    Raises:
        InputDataError: the selection is empty.
    """
    run = settings.run
    images = collect_t1w(Path(run.bids_dir), run.participant_label, run.session_label)
    if not images:
        raise InputDataError(f"No T1w images selected in {run.bids_dir}; check "
                             "--participant-label and --session-label.")
    return images


def preprocessed_passing_qc(settings: Settings, images: Sequence[T1wImage],
                            context: DistContext,
                            ) -> tuple[list[PreprocessedImage | None], list[str]]:
    """Preprocess ``images`` (skipping those done) and set aside the ones failing QC.

    Returns:
        One entry per image, in order: its :class:`PreprocessedImage`, or ``None``
        when registration failed QC; and the prefixes of those images.
    """
    from bids_pcs import preprocess  # Nipype and ANTs only when a level needs them

    if context.is_main:
        results = list(preprocess.preprocess_images(settings, list(images)))
    barrier(context)
    if not context.is_main:
        results = [preprocess.load_preprocessed(settings, image) for image in images]
    kept: list[PreprocessedImage | None] = []
    qc_failed: list[str] = []
    for image, result in zip(images, results, strict=True):
        if result is None or not result.qc_passed:
            LOGGER.warning("Skipping %s: registration failed quality control.", image.prefix)
            qc_failed.append(image.prefix)
            kept.append(None)
        else:
            kept.append(result)
    return kept, qc_failed


def collect_labelled(settings: Settings, context: DistContext,
                     ) -> tuple[list[tuple[PreprocessedImage, LabelRecord]], dict[str, Any]]:
    """(preprocessing outputs, labels) of every selected, labelled image that passed QC.

    Returns:
        The pairs, and what was skipped (``unlabelled`` and ``qc_failed`` prefixes).
    """
    run_settings = settings.run
    images = selected_images(settings)
    # images without a dseg cannot be supervised: skipped (and logged) by read_labels
    records = read_labels(run_settings.labels, images, settings.labels,
                          bids_dir=run_settings.bids_dir, require_all=False)
    labelled_images = [record.image for record in records]
    unlabelled = sorted({im.prefix for im in images} - {im.prefix for im in labelled_images})
    results, qc_failed = preprocessed_passing_qc(settings, labelled_images, context)
    pairs = [(result, record) for record, result in zip(records, results, strict=True)
             if result is not None]
    if not pairs:
        raise InputDataError(
            f"No labelled T1w image passed registration quality control under "
            f"{run_settings.output_dir}; check the participant level's QC records and reports."
        )
    return pairs, {"unlabelled": unlabelled, "qc_failed": qc_failed}
