"""What the training levels share: the selected images, preprocessed, that passed QC.

``pretrain`` learns from the crops of every selected image and of every image
of the ``--pretrain-data`` datasets (:func:`collect_pretraining_crops`; the
study's pre-trainings too), ``finetune`` and ``study`` fine-tune on those of
the labelled ones (:func:`collect_labelled`); all follow one skeleton:

1. the selected T1w images (:func:`selected_images`; none is an error);
2. preprocessing of those missing their crops, on the first process only
   under ``torchrun`` (the others wait, then read what it made);
3. images that failed registration QC are logged and set aside.

A ``--pretrain-data`` dataset is preprocessed into its own derivative dataset,
``OUTPUT_DIR/derivatives/<dataset folder name>/`` (BIDS keeps ``derivatives/``
out of the enclosing dataset), with Nipype's files under
``WORK_DIR/pretrain-data/<name>/``: its participant labels may repeat those of
BIDS_DIR without any name clash.  ``--participant-label`` and
``--session-label`` select in BIDS_DIR only; every T1w image of an extra
dataset is used.

Usage::

    images = selected_images(settings)
    passed, qc_failed = preprocessed_passing_qc(settings, images, context)
    passed[0].crops["L"]       # a PreprocessedImage of an image that passed QC
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bids_pcs.config import HEMISPHERES, Settings
from bids_pcs.errors import InputDataError
from bids_pcs.io.bids_input import T1wImage, collect_t1w
from bids_pcs.io.labels import LabelRecord, read_labels
from bids_pcs.training.distributed import DistContext, barrier

if TYPE_CHECKING:
    from bids_pcs.preprocess import PreprocessedImage

LOGGER = logging.getLogger("bids_pcs.levels")
EXTRA_DERIVATIVES = "derivatives"  # under OUTPUT_DIR: one derivative dataset per extra dataset


@dataclass(frozen=True)
class CropFile:
    """One crop on disk and where it comes from.

    Args:
        path: the crop NIfTI.
        image: its T1w image.
        hemisphere: ``"L"`` or ``"R"``.
        dataset: absolute path of the BIDS dataset the image belongs to.
    """

    path: Path
    image: T1wImage
    hemisphere: str
    dataset: str = ""

    @property
    def name(self) -> str:
        """``<prefix>_hemi-<H>`` (the same in two datasets: ``dataset`` tells them apart)."""
        return f"{self.image.prefix}_hemi-{self.hemisphere}"


def pretraining_datasets(settings: Settings) -> list[Path]:
    """BIDS_DIR, then every ``--pretrain-data`` dataset (absolute paths)."""
    return [Path(settings.run.bids_dir).absolute(),
            *(Path(d).absolute() for d in settings.run.pretrain_data)]


def extra_output_dir(settings: Settings, dataset: Path) -> Path:
    """The derivative dataset of an extra (``--pretrain-data``) dataset's preprocessing."""
    return Path(settings.run.output_dir) / EXTRA_DERIVATIVES / Path(dataset).name


def check_pretraining_datasets(settings: Settings) -> None:
    """Refuse, in one sentence, an extra dataset that is BIDS_DIR or shares another's name."""
    main = Path(settings.run.bids_dir).absolute().resolve()
    names: dict[str, Path] = {}
    for dataset in pretraining_datasets(settings)[1:]:
        if dataset.resolve() == main:
            raise InputDataError(f"--pretrain-data {dataset} is BIDS_DIR itself, whose images "
                                 "pre-train anyway; give other datasets only.")
        if dataset.name in names:
            raise InputDataError(
                f"--pretrain-data {dataset} and {names[dataset.name]} share the folder name "
                f"{dataset.name!r}, which names their derivatives under OUTPUT_DIR/"
                f"{EXTRA_DERIVATIVES}/; rename or link one of them.")
        names[dataset.name] = dataset


def collect_pretraining_crops(settings: Settings, context: DistContext) -> list[CropFile]:
    """The crops of every selected image of BIDS_DIR and every image of each extra dataset.

    Images are preprocessed when their crops are missing (first process only);
    those failing registration QC are set aside.

    Raises:
        InputDataError: an extra dataset holds no T1w image, or no crop passed QC.
    """
    from bids_pcs.io.derivatives import init_derivatives

    check_pretraining_datasets(settings)
    main, *extra = pretraining_datasets(settings)
    images = selected_images(settings)
    crops = _crop_files(images, preprocessed_passing_qc(settings, images, context)[0], main)
    work_root = Path(settings.run.work_dir or Path(settings.run.output_dir) / ".work")
    for dataset in extra:
        images = collect_t1w(dataset)
        if not images:
            raise InputDataError(f"--pretrain-data {dataset} holds no T1w image; give a BIDS "
                                 "dataset with anat/*_T1w.nii[.gz] files.")
        output_dir = extra_output_dir(settings, dataset)
        if context.is_main:
            init_derivatives(output_dir, dataset, settings.labels)
        results, _ = preprocessed_passing_qc(
            settings, images, context, output_dir=output_dir,
            work_dir=work_root / "pretrain-data" / dataset.name)
        crops += _crop_files(images, results, dataset)
        LOGGER.info("--pretrain-data %s: %d of %d T1w image(s) passed quality control.",
                    dataset, sum(r is not None for r in results), len(images))
    if not crops:
        raise InputDataError(
            f"No crops passed quality control under {settings.run.output_dir}; check the "
            "participant level's QC records and reports."
        )
    return crops


def _crop_files(images: Sequence[T1wImage], results: Sequence[PreprocessedImage | None],
                dataset: Path) -> list[CropFile]:
    return [CropFile(Path(result.crops[h]), image, h, str(dataset))
            for image, result in zip(images, results, strict=True) if result is not None
            for h in HEMISPHERES]


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
                            context: DistContext, *, output_dir: Path | None = None,
                            work_dir: Path | None = None,
                            ) -> tuple[list[PreprocessedImage | None], list[str]]:
    """Preprocess ``images`` (skipping those done) and set aside the ones failing QC.

    ``output_dir`` and ``work_dir`` default to the run's (an extra dataset has its own).

    Returns:
        One entry per image, in order: its :class:`PreprocessedImage`, or ``None``
        when registration failed QC; and the prefixes of those images.
    """
    from bids_pcs import preprocess  # Nipype and ANTs only when a level needs them

    if context.is_main:
        results = list(preprocess.preprocess_images(settings, list(images),
                                                    output_dir=output_dir, work_dir=work_dir))
    barrier(context)
    if not context.is_main:
        results = [preprocess.load_preprocessed(settings, image, output_dir)
                   for image in images]
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
    # images with neither a mask nor a class cannot be supervised: skipped (and logged)
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
