"""Checks before the long work: folders writable, and enough free space for the images.

A registration takes seconds to minutes per image; a run that is bound to
fail on a full disk or a read-only work dir should fail in its first second,
not after the first registration. :func:`check_before_work` therefore probes
OUTPUT_DIR and the work directory (create, write, remove a file) and compares
their free space with an estimate of what the images still to preprocess will
write (:func:`disk_estimate`, from each image's header and the recipe):

- less than half the estimate free: refused, with the estimate;
- less than the estimate: a warning (the estimate errs on the large side);
- folders on one file system are counted together.

Usage::

    check_before_work(settings, images)     # raises DiskFullError / NotWritableError
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bids_pcs.config import Settings
from bids_pcs.io.bids_input import T1wImage
from bids_pcs.system_errors import (
    DiskFullError,
    NotWritableError,
    existing_parent,
    free_space,
    human_size,
)

LOGGER = logging.getLogger("bids_pcs.preflight")
# the template's field of view (MNI152NLin2009aSym, 1 mm: 197 x 233 x 189 voxels)
_TEMPLATE_FOV_MM = (197.0, 233.0, 189.0)
_SIDECARS_BYTES = 16 * 1024  # sidecars, QC record, Nipype's pickles and reports per node
_AFFINE_TRANSFORM_BYTES = 64 * 1024
_WORK_OVERHEAD_BYTES = 1024 * 1024  # Nipype's per-node result files, reports, crash files
REFUSE_BELOW = 0.5  # refuse when less than this share of the estimate is free


@dataclass(frozen=True)
class DiskEstimate:
    """Bytes one image writes: into OUTPUT_DIR and into the work directory."""

    output_bytes: int
    work_bytes: int


def disk_estimate(settings: Settings, voxels: int, *, with_model: bool) -> DiskEstimate:
    """What preprocessing (and inference, ``with_model``) of an image of ``voxels`` writes.

    Measured on the 128 x 128 x 62 real T1w of the tests (default recipe,
    affine): 1.4 MB into OUTPUT_DIR, 6.9 MB into the work dir; this estimate
    gives 1.7 and 8.1 MB (crops counted uncompressed).
    """
    reg = settings.registration
    crop_bytes = math.prod(settings.crop.shape_vox) * 4  # float32, counted uncompressed
    transform = _AFFINE_TRANSFORM_BYTES
    if reg.deformable:
        # a displacement field (3 float64 per voxel) on the template grid at fine_mm
        grid = math.prod(math.ceil(s / reg.fine_mm) for s in _TEMPLATE_FOV_MM)
        transform += grid * 3 * 8
    output = 2 * crop_bytes + 2 * transform + _SIDECARS_BYTES
    if with_model:
        # two float32 probability maps and a uint8 dseg on the T1w grid; mostly zero,
        # so gzip keeps about a quarter of them
        output += (2 * 4 + 1) * voxels // 4 + _SIDECARS_BYTES
    images = 2 if reg.n4 else 1  # the reoriented float32 copy, and N4's output
    work = images * voxels * 4 + 4 * crop_bytes + 2 * transform + _WORK_OVERHEAD_BYTES
    return DiskEstimate(output_bytes=output, work_bytes=work)


def check_writable(folder: Path, role: str, alternative: str) -> None:
    """Raise :class:`NotWritableError` unless ``folder`` can be written to.

    An existing folder is probed by writing a file in it. A folder that does not exist
    yet is neither created nor probed by writing: a run refused a moment later (a bad
    model, say) leaves no empty work directory behind, and nothing is ever written
    outside OUTPUT_DIR and the work directory. The folder it would be made in is asked
    instead (read-only file system, then access rights).
    """
    folder = Path(folder)
    if folder.is_dir():
        probe = folder / f".bids_pcs-write-test-{os.getpid()}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            reason = exc.strerror
        else:
            return
    else:
        parent = existing_parent(folder)
        if not parent.is_dir():
            reason = f"{parent} is a file, not a folder"
        elif os.statvfs(parent).f_flag & os.ST_RDONLY:
            reason = "Read-only file system"
        elif not os.access(parent, os.W_OK | os.X_OK):
            reason = f"Permission denied in {parent}"
        else:
            return
    raise NotWritableError(f"{role} {folder} is not writable ({reason}); choose "
                           f"{alternative} you can write to.")


def check_before_work(settings: Settings, images: Sequence[T1wImage]) -> None:
    """Refuse a run whose folders are not writable or clearly too full for ``images``.

    Images whose preprocessing outputs already exist are not counted.
    """
    from bids_pcs.errors import ImageError
    from bids_pcs.io.derivatives import registration_qc_path
    from bids_pcs.io.nifti import load_t1w

    run = settings.run
    output_dir, work_dir = Path(run.output_dir), Path(run.work_dir) if run.work_dir else None
    check_writable(output_dir, "OUTPUT_DIR", "another OUTPUT_DIR")
    if work_dir is not None:
        check_writable(work_dir, "Work directory", "another --work-dir")
    # an image with a QC record is (nearly always) done: checking every file of every
    # set here would cost more than the second this check may take
    todo = [image for image in images
            if not registration_qc_path(output_dir, image).is_file()]
    if not todo:
        return
    output_bytes = work_bytes = 0
    with_model = bool(run.model)
    for image in todo:
        try:
            shape = load_t1w(image.path, check_data=False).shape
        except ImageError:
            continue  # refused with its own sentence by preprocessing, costs nothing here
        estimate = disk_estimate(settings, math.prod(shape[:3]), with_model=with_model)
        output_bytes += estimate.output_bytes
        work_bytes += estimate.work_bytes
    needs = [(output_dir, "OUTPUT_DIR", "another OUTPUT_DIR", output_bytes)]
    if work_dir is not None:
        needs.append((work_dir, "the work directory", "another --work-dir", work_bytes))
    _check_space(needs, len(todo))


def _check_space(needs: list[tuple[Path, str, str, int]], n_images: int) -> None:
    by_device: dict[int, list[tuple[Path, str, str, int]]] = {}
    for need in needs:
        by_device.setdefault(os.stat(existing_parent(need[0])).st_dev, []).append(need)
    for group in by_device.values():
        folder, role, alternative, _ = group[0]
        needed = sum(item[3] for item in group)
        free = free_space(folder)
        if free is None or free >= needed:
            continue
        where = " and ".join(f"{r} {f}" for f, r, _a, _n in group)
        estimate = (f"about {human_size(needed)} for {n_images} image(s)"
                    f"{' together' if len(group) > 1 else ''}")
        if free < REFUSE_BELOW * needed:
            raise DiskFullError(
                f"{where[0].upper()}{where[1:]} {'have' if len(group) > 1 else 'has'} "
                f"{human_size(free)} free, but this run writes {estimate}; free space there "
                f"or choose {alternative} (or select fewer images with --participant-label).")
        LOGGER.warning("%s has %s free; this run may write %s (an estimate on the large "
                       "side): it may run out of space.", where, human_size(free), estimate)
