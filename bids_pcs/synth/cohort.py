"""The Python API of the synthetic cohort: :func:`make_cohort`.

Usage::

    from bids_pcs.synth import SynthOptions, make_cohort

    summary = make_cohort("/tmp/synth", 20, seed=0,
                          options=SynthOptions(sessions_fraction=0.2))
    summary.class_counts["L"]  # {"absent": 5, "present": 9, "prominent": 6}

A participant's images depend only on (seed, participant index), so the first
ten participants of a cohort of 100 are those of a cohort of 10, and work can
be spread over processes without changing a byte.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bids_pcs.config import HEMISPHERES, PCS_CLASSES, LabelSettings
from bids_pcs.errors import BidsPcsError, OutputError
from bids_pcs.synth import anatomy, bids_writer, population, synthesis

DEFAULT_VOXEL_SIZES: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.2), (1.2, 1.2, 1.2), (1.0, 1.0, 1.4),
    (1.3, 1.0, 1.0),
)
# RAS (nibabel), LAS (FSL radiological), LPS (DICOM/ITK), PIR and ASL (sagittal
# acquisitions stored slice-first), RPI
DEFAULT_ORIENTATIONS = ("RAS", "LAS", "LPS", "RPI", "PIR", "ASL")


class SynthError(BidsPcsError):
    """The synthetic cohort cannot be made as asked."""


@dataclass(frozen=True)
class SynthOptions:
    """How the cohort varies (every field has a sensible default).

    Args:
        sessions_fraction: with > 0, every participant has ``ses-1`` and this
            fraction also ``ses-2`` (same brain, new acquisition).
        stripped_fraction: fraction of images skull-stripped (0: all keep
            skull and neck, 1: all stripped).
        anatomy: sources to draw from (those not installed are skipped).
        colin_weight: relative frequency of Colin27 among sources.
        voxel_sizes, orientations: drawn uniformly per image.
        prevalence: per hemisphere P(absent), P(present), P(prominent).
        dimple_probability: chance that an absent PCS is a short (< 20 mm) fold.
        deformation_mm: spread of the smooth deformation's control points.
        max_rotation_deg, max_shift_mm: head pose in the scanner.
        noise_range: noise s.d. relative to white matter, drawn per image.
        bias_strength: spread of log-bias coefficients.
        tissue_blend: range of the weight of the tissue-map rendering (MNI).
        labels: class thresholds and label values.
        figure: write ``code/pcs_overview.png`` (sagittal slices with labels).
        figure_images: how many images the figure shows.
        nprocs: worker processes.
        overwrite: replace an earlier synthetic cohort in BIDS_DIR.
    """

    sessions_fraction: float = 0.0
    stripped_fraction: float = 0.0
    anatomy: tuple[str, ...] = (anatomy.MNI_NAME, anatomy.COLIN_NAME)
    colin_weight: float = 0.3
    voxel_sizes: tuple[tuple[float, float, float], ...] = DEFAULT_VOXEL_SIZES
    orientations: tuple[str, ...] = DEFAULT_ORIENTATIONS
    prevalence: dict[str, tuple[float, float, float]] = field(
        default_factory=lambda: dict(population.DEFAULT_PREVALENCE))
    dimple_probability: float = 0.5
    deformation_mm: float = 1.5
    max_rotation_deg: float = 10.0
    max_shift_mm: float = 10.0
    noise_range: tuple[float, float] = (0.01, 0.04)
    bias_strength: float = 0.12
    tissue_blend: tuple[float, float] = (0.0, 0.4)
    labels: LabelSettings = field(default_factory=LabelSettings)
    figure: bool = True
    figure_images: int = 4
    nprocs: int = 1
    overwrite: bool = False


@dataclass
class CohortSummary:
    """What :func:`make_cohort` wrote."""

    bids_dir: Path
    labels_dir: Path
    participants: list[dict[str, Any]]
    n_images: int
    seconds: float
    figure: Path | None = None

    @property
    def class_counts(self) -> dict[str, dict[str, int]]:
        """Per hemisphere ("L", "R"), the number of participants of each class."""
        out = {}
        for hemi, column in (("L", "pcs_left"), ("R", "pcs_right")):
            counts = Counter(row[column] for row in self.participants)
            out[hemi] = {c: counts.get(c, 0) for c in PCS_CLASSES}
        return out

    @property
    def seconds_per_participant(self) -> float:
        return self.seconds / max(1, len(self.participants))


def make_cohort(bids_dir: str | Path, n_participants: int, seed: int = 0,
                options: SynthOptions | None = None) -> CohortSummary:
    """Write a synthetic labelled BIDS cohort to ``bids_dir`` and say what it holds.

    Args:
        bids_dir: new (or empty) directory; an earlier synthetic cohort there is
            replaced only with ``options.overwrite``.
        n_participants: number of participants (>= 1).
        seed: everything written is a function of the seed.
        options: variations; defaults when ``None``.
    """
    options = options or SynthOptions()
    _check_options(n_participants, options)
    bids_dir = Path(bids_dir).absolute()
    _prepare_output(bids_dir, options.overwrite)
    sources = tuple(s for s in options.anatomy if s in anatomy.available_sources())
    if not sources:
        raise SynthError(f"None of the anatomy sources {', '.join(options.anatomy)} is "
                         "installed; use MNI152NLin2009aSym (shipped with nilearn).")

    width = max(2, len(str(n_participants)))
    labels = [f"{i + 1:0{width}d}" for i in range(n_participants)]
    jobs = [(i, labels[i], seed, bids_dir, sources, options) for i in range(n_participants)]
    start = time.perf_counter()
    if options.nprocs > 1 and n_participants > 1:
        with ProcessPoolExecutor(max_workers=min(options.nprocs, n_participants)) as pool:
            results = list(pool.map(_make_participant, jobs))
    else:
        results = [_make_participant(job) for job in jobs]
    rows = [row for row, _ in results]
    written = [item for _, items in results for item in items]

    labels_dir = bids_dir / bids_writer.LABELS_SUBDIR
    bids_writer.write_raw_dataset_files(bids_dir, rows, seed=seed, sources=sources)
    bids_writer.write_labels_dataset_files(labels_dir, rows)
    figure = None
    if options.figure:
        from bids_pcs.synth.figures import overview_figure

        figure = overview_figure(written[: options.figure_images],
                                 bids_dir / bids_writer.FIGURE_RELPATH)
    bids_writer.write_provenance(bids_dir, n_participants=n_participants, seed=seed,
                                 options=_plain(options))
    return CohortSummary(bids_dir, labels_dir, rows, len(written),
                         time.perf_counter() - start, figure)


def _make_participant(job: tuple) -> tuple[dict[str, Any], list[tuple[Path, Path, dict]]]:
    index, label, seed, bids_dir, sources, options = job
    rng = np.random.default_rng([seed, index])
    weights = tuple(options.colin_weight if s == anatomy.COLIN_NAME else 1.0 for s in sources)
    spec = population.draw_participant(
        rng, index=index, label=label, sources=sources, source_weights=weights,
        prevalence=options.prevalence, labels=options.labels,
        dimple_probability=options.dimple_probability,
        sessions_fraction=options.sessions_fraction)
    result = synthesis.synthesize_participant(spec, _acquisition_options(options),
                                              options.labels, rng)
    written = []
    for acq in result.acquisitions:
        t1w_path, dseg_path = bids_writer.write_acquisition(bids_dir, label, acq.session,
                                                            acq.t1w, acq.dseg, acq.truth)
        written.append((t1w_path, dseg_path, acq.truth))
    row = {
        "participant_id": f"sub-{label}",
        "age": spec.age,
        "sex": spec.sex,
        "group": spec.group,
        "anatomy_source": spec.source,
        "pcs_left": spec.classes["L"],
        "pcs_right": spec.classes["R"],
        "pcs_left_length_mm": round(result.length_mm["L"], 1),
        "pcs_right_length_mm": round(result.length_mm["R"], 1),
    }
    return row, written


def _plain(options: SynthOptions) -> dict[str, Any]:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(options), default=list))


def _acquisition_options(options: SynthOptions) -> synthesis.AcquisitionOptions:
    return synthesis.AcquisitionOptions(
        voxel_sizes=options.voxel_sizes, orientations=options.orientations,
        stripped_fraction=options.stripped_fraction, deformation_mm=options.deformation_mm,
        max_rotation_deg=options.max_rotation_deg, max_shift_mm=options.max_shift_mm,
        noise_range=options.noise_range, bias_strength=options.bias_strength,
        tissue_blend=options.tissue_blend)


def _check_options(n_participants: int, options: SynthOptions) -> None:
    if n_participants < 1:
        raise SynthError(f"--participants must be at least 1, not {n_participants}.")
    for name in ("sessions_fraction", "stripped_fraction"):
        value = getattr(options, name)
        if not 0.0 <= value <= 1.0:
            raise SynthError(f"{name} must lie between 0 and 1, not {value}.")
    for hemi in HEMISPHERES:
        p = options.prevalence.get(hemi)
        if p is None or len(p) != 3 or min(p) < 0 or sum(p) <= 0:
            raise SynthError(f"prevalence[{hemi!r}] must be three non-negative numbers "
                             f"(absent, present, prominent), not {p!r}.")
    if not options.voxel_sizes or any(len(v) != 3 or min(v) < 0.5 or max(v) > 4
                                       for v in options.voxel_sizes):
        raise SynthError("voxel sizes must be three numbers between 0.5 and 4 mm each.")
    valid = {"".join(c) for c in _all_axcodes()}
    bad = [o for o in options.orientations if o not in valid]
    if bad or not options.orientations:
        raise SynthError(f"orientation code(s) {', '.join(bad) or 'none'} are not valid; "
                         "use three letters, one of R/L, A/P, S/I each, e.g. RAS or LPS.")


def _all_axcodes() -> list[tuple[str, str, str]]:
    from itertools import permutations, product

    out = []
    for axes in permutations(range(3)):
        for signs in product((0, 1), repeat=3):
            out.append(tuple(("RL", "AP", "SI")[a][s] for a, s in zip(axes, signs,
                                                                   strict=True)))
    return out  # type: ignore[return-value]


def _prepare_output(bids_dir: Path, overwrite: bool) -> None:
    if bids_dir.exists() and not bids_dir.is_dir():
        raise OutputError(f"BIDS_DIR {bids_dir} is a file; give a directory path.")
    if bids_dir.is_dir() and any(bids_dir.iterdir()):
        if not overwrite:
            raise OutputError(f"BIDS_DIR {bids_dir} is not empty; choose a new directory "
                              "or pass --overwrite to replace an earlier synthetic cohort.")
        if not _is_synthetic(bids_dir):
            raise OutputError(f"BIDS_DIR {bids_dir} holds data not written by "
                              f"{bids_writer.GENERATOR}; refusing to overwrite it.")
        for child in bids_dir.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
    try:
        bids_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"BIDS_DIR {bids_dir} cannot be created ({exc.strerror}); "
                          "choose a directory you can write to.") from exc


def _is_synthetic(bids_dir: Path) -> bool:
    try:
        description = json.loads((bids_dir / "dataset_description.json").read_text())
    except (OSError, ValueError):
        return False
    names = [g.get("Name") for g in description.get("GeneratedBy", []) if isinstance(g, dict)]
    return bids_writer.GENERATOR in names
