"""What the training levels share: the selected images, preprocessed, that passed QC.

``pretrain`` learns from the crops of every selected image, ``finetune`` and
``study`` from those of the labelled ones; all three follow one skeleton:

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
from typing import TYPE_CHECKING

from bids_pcs.config import Settings
from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import T1wImage, collect_t1w
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
