"""The ``participant`` level: preprocess each selected T1w image (+ inference with --model).

Without ``--model`` this is exactly the preprocessing of DESIGN.md: per T1w
image, forward and inverse transforms to MNI152NLin2009aSym, the two medial
frontal crops and a registration QC record, written into OUTPUT_DIR.

With ``--model DIR`` the model is checked first (fine-tuned, same template,
crop geometry and classes, weights matching their SHA-256), before any
registration; after preprocessing, :func:`bids_pcs.inference.infer_images`
writes the PCS derivatives and each participant gets its HTML report.

Images that cannot be preprocessed (unreadable, not 3D, NaN voxels...) do not
stop the others: every other image is preprocessed (and inferred), then the
run ends with one error naming each failed image (exit 1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from bids_pcs.config import Settings
from bids_pcs.io.bids_input import collect_t1w
from bids_pcs.preprocess import PreprocessedImage, PreprocessingError, preprocess_images

if TYPE_CHECKING:
    from bids_pcs.inference.model import InferenceModel

LOGGER = logging.getLogger("bids_pcs.participant")


def run(settings: Settings) -> None:
    """Run the participant level; OUTPUT_DIR is initialised and logging set up by the CLI."""
    model = None
    if settings.run.model:
        from bids_pcs.inference import load_inference_model

        # fail before preprocessing, not after it; the same network serves every image
        model = load_inference_model(settings, settings.run.model)
    images = collect_t1w(Path(settings.run.bids_dir), settings.run.participant_label,
                         settings.run.session_label)
    LOGGER.info("participant level: %d T1w image(s)", len(images))
    try:
        preprocessed = preprocess_images(settings, images)
        unusable: PreprocessingError | None = None
    except PreprocessingError as exc:
        # one bad image must not cost the others their results: finish them, then fail
        preprocessed, unusable = exc.done, exc
    qc_failed = [item.image.prefix for item in preprocessed if not item.qc_passed]
    LOGGER.info("Preprocessed %d of %d image(s); %d failed registration QC%s%s",
                len(preprocessed), len(images), len(qc_failed),
                f" ({', '.join(qc_failed)})" if qc_failed else "",
                f"; {len(unusable.failed)} could not be preprocessed "
                f"({', '.join(unusable.failed)})" if unusable else "")
    if model is not None and preprocessed:
        infer(settings, preprocessed, model)
    _write_citation(settings, model)
    if unusable is not None:
        raise unusable


def _write_citation(settings: Settings, model: InferenceModel | None = None) -> None:
    """``logs/CITATION.md``: the methods boilerplate of this run (see reports.boilerplate)."""
    from bids_pcs.reports.boilerplate import methods_from_settings, write_citation

    card = model.card if model is not None else None
    provenance = model.provenance if model is not None else None
    path = write_citation(Path(settings.run.output_dir),
                          methods_from_settings(settings, provenance, card))
    LOGGER.info("Methods boilerplate for papers: %s", path)


def infer(settings: Settings, preprocessed: Sequence[PreprocessedImage],
          model: InferenceModel | None = None) -> None:
    """PCS masks, probabilities, classes and reports for images that passed QC (``--model``).

    ``model``: the loaded model (default: load ``settings.run.model``).

    Images that failed registration QC are recorded in their result table
    (``qc_passed`` false, values ``n/a``) and in the reports, never predicted.
    """
    from bids_pcs.inference import infer_images
    from bids_pcs.reports.subject import write_subject_report

    results = infer_images(settings, preprocessed, model=model)
    output_dir = Path(settings.run.output_dir)
    images = [result.image for result in results]
    for subject in sorted({image.subject for image in images}):
        write_subject_report(output_dir, subject, images, labels=settings.labels)
