"""Preprocessing as a service for every level: crops and transforms per T1w image.

:func:`preprocess_images` makes sure each image has its derivatives in
OUTPUT_DIR (registration to MNI152NLin2009aSym, two medial frontal crops, QC),
running the Nipype workflow only for images that lack them or whose outputs
were made with other settings, and returns one :class:`PreprocessedImage` per
image.  Levels then read the network's input with
:func:`bids_pcs.io.nifti.load_crop`, and inference brings predictions back to
the T1w grid with :func:`bids_pcs.inference.native.crop_to_native`.

A failed registration QC is never hidden: the image is returned with
``qc_passed == False`` (and logged), and callers must skip it. An image that
cannot be preprocessed at all (unreadable, not 3D, NaN voxels, a field of view
without a head...) does not stop the others: every other image is
preprocessed and written, then :class:`PreprocessingError` names each failed
image and why (like fMRIPrep, the run ends non-zero once all work is done).

Usage::

    done = preprocess_images(settings, collect_t1w(bids_dir))
    for item in (d for d in done if d.qc_passed):
        x = load_crop(item.crops["L"])               # bids_pcs.io.nifti
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bids_pcs.config import HEMISPHERES, TEMPLATE_NAME, Settings
from bids_pcs.errors import BidsPcsError, ImageError
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.io.derivatives import crop_path, registration_qc_path, sidecar_path, xfm_path
from bids_pcs.io.manifest import set_problem
from bids_pcs.io.nifti import QFORM_SFORM_TOLERANCE_MM, load_t1w, qform_sform_mismatch_mm
from bids_pcs.resources import PreprocPlan, physical_memory_bytes, plan_preprocessing

LOGGER = logging.getLogger("bids_pcs.preprocess")
TRANSFORM_EXTENSION = ".h5"  # ANTs composite: affine, or affine + warp when deformable


class PreprocessingError(BidsPcsError):
    """Some images could not be preprocessed; every other image's outputs are written.

    Args:
        message: one sentence naming each failed image and why.
        done: the images that were preprocessed, in the order asked (callers
            such as the participant level's inference go on with them).
        failed: BIDS prefix -> reason, for each image that was not.
    """

    def __init__(self, message: str, done: Sequence[PreprocessedImage] = (),
                 failed: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.done = list(done)
        self.failed = dict(failed or {})


@dataclass(frozen=True)
class PreprocessedImage:
    """The preprocessing derivatives of one T1w image.

    Args:
        image: the raw T1w image.
        crops: hemisphere (``"L"``, ``"R"``) -> crop NIfTI path.
        forward_transform: T1w -> template transform (ANTs composite ``.h5``).
        inverse_transform: template -> T1w transform.
        qc_file: the QC record (JSON).
        qc: its content (``Correlation`` per hemisphere, ``Threshold``, ``Passed``...).
    """

    image: T1wImage
    crops: dict[str, Path]
    forward_transform: Path
    inverse_transform: Path
    qc_file: Path
    qc: dict[str, Any]

    @property
    def qc_passed(self) -> bool:
        """True when registration QC passed; images that fail must not be used."""
        return bool(self.qc.get("Passed", False))


@dataclass(frozen=True)
class _Destinations:
    crops: dict[str, Path]
    forward_transform: Path
    inverse_transform: Path
    qc_file: Path

    def all(self) -> list[Path]:
        return [*self.crops.values(), self.forward_transform, self.inverse_transform,
                self.qc_file]

    def members(self) -> list[Path]:
        """Every file of the set but the QC record (which lists them, written last)."""
        files = [*self.crops.values(), self.forward_transform, self.inverse_transform]
        return files + [sidecar_path(path) for path in files]


def output_paths(output_dir: Path, image: T1wImage) -> _Destinations:
    """Where the preprocessing derivatives of ``image`` live under ``output_dir``."""
    return _Destinations(
        crops={h: crop_path(output_dir, image, h) for h in HEMISPHERES},
        forward_transform=xfm_path(output_dir, image, extension=TRANSFORM_EXTENSION),
        inverse_transform=xfm_path(output_dir, image, inverse=True,
                                   extension=TRANSFORM_EXTENSION),
        qc_file=registration_qc_path(output_dir, image),
    )


def preprocessing_settings(settings: Settings) -> dict[str, Any]:
    """The settings preprocessing outputs depend on (recorded in, and checked against, QC)."""
    full = settings.to_dict()
    return {key: full[key] for key in ("template", "crop", "registration", "intensity")}


def load_preprocessed(settings: Settings, image: T1wImage,
                      output_dir: Path | None = None) -> PreprocessedImage | None:
    """The existing derivatives of ``image``, or None if incomplete, absent or made otherwise."""
    return preprocessed_state(settings, image, output_dir)[0]


def preprocessed_state(settings: Settings, image: T1wImage, output_dir: Path | None = None,
                       ) -> tuple[PreprocessedImage | None, str | None]:
    """The derivatives of ``image`` if complete, else why not (``None``: nothing there).

    Complete means the QC record, written last, lists every file of the set
    as it is on disk (:mod:`bids_pcs.io.manifest`), and was made with this
    run's preprocessing settings.
    """
    output_dir = Path(output_dir or settings.run.output_dir)
    where = output_paths(output_dir, image)
    problem = set_problem(where.qc_file, where.members())
    if problem is not None:
        return None, f"its preprocessing outputs are incomplete ({problem})"
    if not where.qc_file.is_file():
        return None, None
    try:
        qc = json.loads(where.qc_file.read_text())
    except (OSError, ValueError):
        return None, f"{where.qc_file.name} is unreadable"
    if qc.get("Settings") != preprocessing_settings(settings):
        return None, "its preprocessing outputs were made with other settings"
    return PreprocessedImage(image=image, crops=dict(where.crops),
                             forward_transform=where.forward_transform,
                             inverse_transform=where.inverse_transform,
                             qc_file=where.qc_file, qc=qc), None


def preprocess_images(
    settings: Settings,
    images: Sequence[T1wImage],
    *,
    output_dir: Path | None = None,
    work_dir: Path | None = None,
) -> list[PreprocessedImage]:
    """Preprocess every image lacking up-to-date derivatives; return all of them, in order.

    Args:
        settings: run settings (``run.nprocs`` and ``run.mem_gb``, which
            :mod:`bids_pcs.resources` turns into the images preprocessed in
            parallel, and the template, crop, registration and intensity sections).
        images: the T1w images (see :func:`bids_pcs.io.bids_input.collect_t1w`).
        output_dir: the derivative dataset (default ``settings.run.output_dir``),
            which must already exist (``init_derivatives``).
        work_dir: Nipype's working directory (default ``settings.run.work_dir``);
            reusing it makes a rerun recompute nothing already done.

    Raises:
        PreprocessingError: when some images could not be preprocessed (an
            unusable file, or a crash in the workflow: the reason is read from
            its crash file); raised after every other image is done, and
            carrying their results (``done``).
    """
    output_dir = Path(output_dir or settings.run.output_dir).absolute()
    done: dict[T1wImage, PreprocessedImage] = {}
    todo: list[T1wImage] = []
    failed: dict[T1wImage, str] = {}
    for image in images:
        existing, why_not = preprocessed_state(settings, image, output_dir)
        if existing is not None:
            LOGGER.info("%s: preprocessing outputs exist, skipped", image.prefix)
            done[image] = existing
            continue
        if why_not is not None:
            LOGGER.warning("%s: %s; preprocessing it again.", image.prefix, why_not)
        try:
            # the header only: a clear error at once, and no voxel read twice (the
            # workflow's first node checks the data, in parallel)
            _check_header(image)
        except ImageError as exc:
            LOGGER.error("%s: %s", image.prefix, exc)
            failed[image] = exc.reason
            continue
        todo.append(image)
    error: Exception | None = None
    crash_dir: Path | None = None
    if todo:
        work = _work_dir(settings, work_dir)
        crash_dir = work / "crash"
        error = _preprocess_locked(settings, todo, output_dir, work, done, failed)
    results = [done[image] for image in images if image in done]
    for item in results:
        if not item.qc_passed:
            LOGGER.warning(
                "%s: registration QC FAILED (correlation %s < %s); its crops are marked "
                "failed in %s and are not used.", item.image.prefix,
                item.qc.get("MinCorrelation"), item.qc.get("Threshold"), item.qc_file.name)
    if failed:
        in_order = {image: failed[image] for image in images if image in failed}
        raise PreprocessingError(
            _failure_summary(images, in_order, crash_dir), done=results,
            failed={image.prefix: reason for image, reason in in_order.items()},
        ) from error
    return results


def _preprocess_locked(settings: Settings, todo: list[T1wImage], output_dir: Path, work: Path,
                       done: dict[T1wImage, PreprocessedImage],
                       failed: dict[T1wImage, str]) -> Exception | None:
    """Run the workflow on ``todo``, one run per image at a time; fill ``done`` and ``failed``.

    Two runs on the same OUTPUT_DIR share its default work dir, where two
    Nipype runs of one image would overwrite each other's node folders. Each
    image is therefore locked (``flock`` on ``WORK/locks/<prefix>.lock``,
    released by the kernel even on SIGKILL): a run preprocesses the images it
    can lock, then waits for the others and takes over any that the other run
    did not finish. No lock is held while waiting, so runs cannot deadlock.
    """
    error: Exception | None = None
    pending = list(todo)
    while pending:
        with _ImageLocks(work / "locks") as locks:
            mine = [image for image in pending if locks.try_lock(image.prefix)]
            if mine:
                LOGGER.info("Preprocessing %d image(s) (work dir %s)", len(mine), work)
                error = _preprocess_batch(settings, mine, output_dir, work, done, failed) or error
        waiting = [image for image in pending if image not in mine]
        pending = []
        for image in waiting:
            LOGGER.info("%s: another run is preprocessing it; waiting for it", image.prefix)
            with _ImageLocks(work / "locks") as locks:
                locks.wait_lock(image.prefix)
                result = load_preprocessed(settings, image, output_dir)
            if result is not None:
                done[image] = result
            else:  # that run died or failed on it: try it here, in the next round
                pending.append(image)
    return error


def _preprocess_batch(settings: Settings, images: list[T1wImage], output_dir: Path, work: Path,
                      done: dict[T1wImage, PreprocessedImage],
                      failed: dict[T1wImage, str]) -> Exception | None:
    """One Nipype run over ``images``; each ends in ``done`` or, with its reason, ``failed``.

    Raises:
        SystemResourceError: a crash came from the machine and would stop every
            other image too (a full disk, a read-only folder, too many open
            files): one sentence naming the folder, after the batch is over.
    """
    from bids_pcs.crashes import crash_reasons, machine_error
    from bids_pcs.system_errors import run_folders
    from bids_pcs.workflows.execution import ImageProgress

    crash_dir = work / "crash"
    plan = _plan(settings, images)
    workflow = init_preproc_meta_wf(settings, images, output_dir, work, plan=plan)
    progress = ImageProgress({_workflow_name(image): image.prefix for image in images},
                             crash_dir)
    started = time.time()
    error = _run(workflow, settings, plan, progress)
    crashes = crash_reasons(crash_dir, since=started)
    folders = run_folders(settings)
    stopping: list[BidsPcsError] = []
    for image in images:
        result = load_preprocessed(settings, image, output_dir)
        if result is not None:
            done[image] = result
            continue
        crash = crashes.get(_workflow_name(image))
        machine = machine_error(crash, image, folders)
        if isinstance(machine, BidsPcsError):
            # the run ends with this sentence: the run log keeps it per image too
            LOGGER.debug("%s: preprocessing failed: %s", image.prefix, machine)
            stopping.append(machine)
            continue
        if machine is not None:
            reason = machine
        elif crash is not None:
            reason = crash.reason
        else:
            reason = "failed in the preprocessing workflow (no crash file found)"
        failed[image] = _short_reason(reason, image)
        # one console line per failed image: the progress callback said it already
        level = logging.DEBUG if image.prefix in progress.failed else logging.ERROR
        LOGGER.log(level, "%s: preprocessing failed: %s (crash file in %s)", image.prefix,
                   reason, crash_dir)
    if stopping:
        raise stopping[0]
    return error


class _ImageLocks:
    """Exclusive per-image ``flock`` locks in one folder, all released on exit."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._held: list[int] = []

    def __enter__(self) -> _ImageLocks:
        self.folder.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: object) -> None:
        for fd in self._held:
            os.close(fd)  # closing the file releases its lock
        self._held.clear()

    def try_lock(self, name: str) -> bool:
        return self._lock(name, blocking=False)

    def wait_lock(self, name: str) -> None:
        self._lock(name, blocking=True)

    def _lock(self, name: str, blocking: bool) -> bool:
        fd = os.open(self.folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._held.append(fd)
        return True


def _check_header(image: T1wImage) -> None:
    """Refuse an unusable image (:class:`ImageError`); warn about a qform/sform mismatch."""
    img = load_t1w(image.path, check_data=False)
    mismatch = qform_sform_mismatch_mm(img)
    if mismatch > QFORM_SFORM_TOLERANCE_MM:
        LOGGER.warning(
            "%s: the qform and sform of %s disagree by up to %.0f mm; the sform is used "
            "throughout, as nibabel does (check the image in a viewer if in doubt).",
            image.prefix, image.path.name, mismatch)


def _short_reason(reason: str, image: T1wImage) -> str:
    """``"Image /x/sub-01_T1w.nii.gz is constant (0); replace it."`` -> ``"is constant (0)"``."""
    head = f"Image {image.path} "
    if reason.startswith(head):
        return reason[len(head):].rsplit("; ", 1)[0]
    return reason


def _failure_summary(images: Sequence[T1wImage], failed: dict[T1wImage, str],
                     crash_dir: Path | None) -> str:
    """One sentence for a run where ``failed`` images could not be preprocessed."""
    from bids_pcs.crashes import MEMORY_REASONS
    from bids_pcs.system_errors import MEMORY_FLAGS

    memory = [image for image, reason in failed.items() if reason.startswith(MEMORY_REASONS)]
    if len(images) == 1:
        where = f" (crash file in {crash_dir})" if crash_dir is not None else ""
        (image, reason), = failed.items()
        fix = (f"if memory ran out, lower {MEMORY_FLAGS}, then rerun" if memory
               else "fix or replace it and rerun")
        return f"Image {image.path} {reason}; {fix}{where}."
    listed = "; ".join(f"{image.prefix} {reason}" for image, reason in failed.items())
    crash = f"; crash files are in {crash_dir}" if crash_dir is not None else ""
    if len(memory) == len(failed):
        fix = f"if memory ran out, lower {MEMORY_FLAGS}, then rerun"
    elif memory:
        fix = (f"fix or remove the others; for {', '.join(i.prefix for i in memory)} lower "
               f"{MEMORY_FLAGS}; then rerun")
    else:
        fix = "fix or remove these images and rerun"
    return (f"{len(failed)} of {len(images)} T1w images could not be preprocessed ({listed}); "
            f"the other images' outputs are written: {fix} (the log names each file{crash}).")


def _plan(settings: Settings, images: Sequence[T1wImage]) -> PreprocPlan:
    """Images in parallel within the run's CPUs and memory, logged."""
    run = settings.run
    voxels = max(math.prod(load_t1w(image.path, check_data=False).shape[:3]) for image in images)
    # library callers without a memory bound: as much as the machine has
    memory_gb = run.mem_gb or physical_memory_bytes() / 2**30
    plan = plan_preprocessing(n_images=len(images), largest_voxels=voxels, cpus=run.nprocs,
                              memory_gb=memory_gb, deformable=settings.registration.deformable)
    where = f" ({run.resources_from})" if run.resources_from else ""
    LOGGER.info("Resources: %d CPU(s), %.1f GB%s; preprocessing plan for %d image(s): %s",
                run.nprocs, memory_gb, where, len(images), plan.describe())
    if plan.warning:
        LOGGER.warning("%s", plan.warning)
    return plan


def init_preproc_meta_wf(settings: Settings, images: Sequence[T1wImage], output_dir: Path,
                         work_dir: Path, plan: PreprocPlan | None = None):
    """One workflow holding a preprocessing workflow and a derivatives sink per image.

    ``plan`` (default: one image at a time with ``settings.run.omp_nthreads``
    threads) sets each image's threads and its heavy nodes' ``mem_gb``.
    """
    from nipype.pipeline import engine as pe

    from bids_pcs.interfaces.derivatives import PreprocDerivativesSink
    from bids_pcs.workflows.preprocess import init_pcs_preproc_wf

    workflow = pe.Workflow(name="bids_pcs_preproc_wf", base_dir=str(work_dir))
    workflow.config["execution"].update({
        "crashdump_dir": str(work_dir / "crash"),
        "crashfile_format": "txt",
        "stop_on_first_crash": False,
        "remove_unnecessary_outputs": False,
        # the scheduler's default 2 s pause between polls adds ~15 s per image to a
        # chain of seven short nodes
        "poll_sleep_duration": 0.1,
    })
    metadata = _metadata(settings)
    for image in images:
        name = _workflow_name(image)
        preproc = init_pcs_preproc_wf(settings=settings,
                                      image_gb=plan.image_gb if plan else None, name=name)
        preproc.inputs.inputnode.t1w = str(image.path)
        where = output_paths(output_dir, image)
        sink = pe.Node(
            PreprocDerivativesSink(
                out_crops=[str(where.crops[h]) for h in HEMISPHERES],
                out_forward_transform=str(where.forward_transform),
                out_inverse_transform=str(where.inverse_transform),
                out_qc=str(where.qc_file), source_uri=image.bids_uri,
                dataset_root=str(output_dir), **metadata,
            ),
            name=f"ds_{name}", run_without_submitting=True, mem_gb=0.1,
        )
        workflow.connect([
            (preproc, sink, [("outputnode.crops", "in_crops"),
                             ("outputnode.forward_transform", "forward_transform"),
                             ("outputnode.inverse_transform", "inverse_transform"),
                             ("outputnode.qc_file", "qc_file")]),
        ])
    return workflow


def _metadata(settings: Settings) -> dict[str, Any]:
    from importlib.metadata import version

    crop, reg, intensity = settings.crop, settings.registration, settings.intensity
    return {
        "crop_metadata": {
            "Template": TEMPLATE_NAME,
            "SizeMm": list(crop.size_mm),
            "VoxelSizeMm": crop.voxel_mm,
            "LeftBoxMinMm": list(crop.left_min_mm),
            "MirrorRight": crop.mirror_right,
            "IntensityNormalisation": {
                "Method": intensity.method,
                "LowerPercentile": intensity.lower_percentile,
                "UpperPercentile": intensity.upper_percentile,
            },
        },
        "transform_metadata": {
            "Software": f"antspyx {version('antspyx')} (antsRegistration)",
            "TransformType": "affine+SyN" if reg.deformable else "affine",
            "Registration": {
                "N4": reg.n4, "CoarseMm": reg.coarse_mm, "FineMm": reg.fine_mm,
                "RefineOnRegion": reg.refine_on_region, "Deformable": reg.deformable,
                "RandomSeed": reg.random_seed,
            },
        },
        "preprocessing_settings": preprocessing_settings(settings),
    }


def _workflow_name(image: T1wImage) -> str:
    # Nipype names must be identifiers; BIDS prefixes are unique per image
    return re.sub(r"[^A-Za-z0-9]", "_", image.prefix) + "_wf"


def _work_dir(settings: Settings, work_dir: Path | None) -> Path:
    chosen = work_dir or settings.run.work_dir
    if chosen:
        path = Path(chosen).absolute()
    else:
        path = Path(tempfile.mkdtemp(prefix="bids_pcs_work_"))
        LOGGER.warning("No work directory given; using %s (a rerun will start over)", path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run(workflow, settings: Settings, plan: PreprocPlan,
         progress=None) -> Exception | None:
    """Run ``workflow``; return the exception of a partial failure (outputs tell which).

    Nipype's node chatter and crash tracebacks go to the run log only (see
    :mod:`bids_pcs.workflows.execution`); ``progress`` is its status callback.
    """
    from bids_pcs.runlog import current_log
    from bids_pcs.workflows.execution import quiet_multiproc, quiet_nipype

    quiet_nipype()
    plugin = settings.nipype.plugin
    args = dict(settings.nipype.plugin_args)
    if plugin == "auto":
        plugin = plan.plugin
        args = {**plan.plugin_args, **args}
    if progress is not None:
        args.setdefault("status_callback", progress)
    if plugin == "MultiProc":
        args.setdefault("n_procs", settings.run.nprocs)
        args.setdefault("raise_insufficient", False)
        # fresh worker processes: ITK thread pools do not survive a fork
        args.setdefault("mp_context", "forkserver")
    try:
        if plugin == "MultiProc":
            workflow.run(plugin=quiet_multiproc(args, current_log()))
        else:
            workflow.run(plugin=plugin, plugin_args=args)
    except RuntimeError as exc:  # Nipype's "Workflow did not execute cleanly"
        # the failed images and their reasons are reported one by one; Nipype's full
        # tracebacks stay in the log file and the crash files
        LOGGER.debug("Preprocessing workflow reported errors: %s", exc)
        return exc
    return None
