"""The Python API of the synthetic cohort: :func:`make_cohort`.

Usage::

    from bids_pcs.synth import SynthOptions, make_cohort

    summary = make_cohort("/tmp/synth", 20, seed=0,
                          options=SynthOptions(sessions_fraction=0.2))   # benchmark
    easy = make_cohort("/tmp/easy", 4, options=SynthOptions.from_preset("easy"))
    summary.class_counts["L"]  # {"absent": 8, "present": 5, "prominent": 7}
    draw_population(500, seed=0)  # who the participants are, without any image

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bids_pcs.config import HEMISPHERES, PCS_CLASSES
from bids_pcs.errors import BidsPcsError, OutputError
from bids_pcs.synth import anatomy, bids_writer, population, prevalence, synthesis
from bids_pcs.synth.contrast import FAMILY_RANGES
from bids_pcs.synth.options import SynthOptions


class SynthError(BidsPcsError):
    """The synthetic cohort cannot be made as asked."""


@dataclass
class CohortSummary:
    """What :func:`make_cohort` wrote."""

    bids_dir: Path
    labels_dir: Path
    participants: list[dict[str, Any]]
    n_images: int
    seconds: float
    figure: Path | None = None
    distractor_figure: Path | None = None

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
    sources = _sources(options)
    bids_dir = Path(bids_dir).absolute()
    _prepare_output(bids_dir, options.overwrite)

    labels = _labels(n_participants)
    jobs = [(i, labels[i], seed, bids_dir, sources, options) for i in range(n_participants)]
    start = time.perf_counter()
    if options.nprocs > 1 and n_participants > 1:
        with ProcessPoolExecutor(max_workers=min(options.nprocs, n_participants)) as pool:
            results = list(pool.map(_make_participant, jobs))
    else:
        results = [_make_participant(job) for job in jobs]
    rows = [row for row, _, _ in results]
    written = [item for _, items, _ in results for item in items]

    sulci = [item for _, _, items in results for item in items]
    labels_dir = bids_dir / bids_writer.LABELS_SUBDIR
    bids_writer.write_raw_dataset_files(bids_dir, rows, seed=seed, sources=sources,
                                        options=options)
    bids_writer.write_labels_dataset_files(labels_dir, rows, options.sites)
    figure = distractor_figure = None
    if options.figure:
        from bids_pcs.synth.figures import distractor_figure as draw_distractors_figure
        from bids_pcs.synth.figures import overview_figure

        figure = overview_figure(written[: options.figure_images],
                                 bids_dir / bids_writer.FIGURE_RELPATH)
        distractor_figure = draw_distractors_figure(
            sulci[: options.figure_images], bids_dir / bids_writer.DISTRACTOR_FIGURE_RELPATH)
    bids_writer.write_provenance(bids_dir, n_participants=n_participants, seed=seed,
                                 options=_plain(options))
    return CohortSummary(bids_dir, labels_dir, rows, len(written),
                         time.perf_counter() - start, figure, distractor_figure)


def draw_population(n_participants: int, seed: int = 0, options: SynthOptions | None = None
                    ) -> list[population.ParticipantSpec]:
    """Who the participants of ``make_cohort(..., n_participants, seed, options)`` are.

    The same draws as the cohort's (each participant's stream starts with
    them), without making any image: fast enough to check the population model
    over hundreds of participants.
    """
    options = options or SynthOptions()
    _check_options(n_participants, options)
    sources = _sources(options)
    labels = _labels(n_participants)
    return [_draw_spec(np.random.default_rng([seed, i]), i, labels[i], sources, options)
            for i in range(n_participants)]


def _labels(n_participants: int) -> list[str]:
    width = max(2, len(str(n_participants)))
    return [f"{i + 1:0{width}d}" for i in range(n_participants)]


def _draw_spec(rng: np.random.Generator, index: int, label: str, sources: tuple[str, ...],
               options: SynthOptions) -> population.ParticipantSpec:
    weights = tuple(options.colin_weight if s == anatomy.COLIN_NAME else 1.0 for s in sources)
    return population.draw_participant(
        rng, index=index, label=label, sources=sources, source_weights=weights,
        prevalence=options.prevalence, labels=options.labels,
        dimple_probability=options.dimple_probability,
        sessions_fraction=options.sessions_fraction, concordance=options.concordance,
        absent_sulcus_mm=options.absent_sulcus_mm,
        sites=tuple(s.name for s in options.sites),
        site_weights=tuple(s.weight for s in options.sites))


def _make_participant(job: tuple) -> tuple[dict[str, Any], list[tuple[Path, Path, dict]],
                                            list[tuple[Path, Any, dict]]]:
    index, label, seed, bids_dir, sources, options = job
    rng = np.random.default_rng([seed, index])
    spec = _draw_spec(rng, index, label, sources, options)
    keep_sulci = options.figure and index < options.figure_images
    result = synthesis.synthesize_participant(spec, options, rng, keep_sulci=keep_sulci)
    written, sulci = [], []
    for acq in result.acquisitions:
        t1w_path, dseg_path = bids_writer.write_acquisition(bids_dir, label, acq.session,
                                                            acq.t1w, acq.dseg, acq.truth)
        written.append((t1w_path, dseg_path, acq.truth))
        if acq.sulci is not None:
            sulci.append((t1w_path, acq.sulci, acq.truth))
    row = {
        "participant_id": f"sub-{label}",
        "age": spec.age,
        "sex": spec.sex,
        "group": spec.group,
        "anatomy_source": spec.source,
        "site": spec.site,
        "pcs_left": spec.classes["L"],
        "pcs_right": spec.classes["R"],
        "pcs_left_length_mm": round(result.length_mm["L"], 1),
        "pcs_right_length_mm": round(result.length_mm["R"], 1),
    }
    return row, written, sulci


def _plain(options: SynthOptions) -> dict[str, Any]:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(options), default=list))


def _sources(options: SynthOptions) -> tuple[str, ...]:
    sources = tuple(s for s in options.anatomy if s in anatomy.available_sources())
    if not sources:
        raise SynthError(f"None of the anatomy sources {', '.join(options.anatomy)} is "
                         "installed; use MNI152NLin2009aSym (shipped with nilearn).")
    return sources


def _check_options(n_participants: int, options: SynthOptions) -> None:
    if n_participants < 1:
        raise SynthError(f"--participants must be at least 1, not {n_participants}.")
    for name in ("sessions_fraction", "stripped_fraction"):
        value = getattr(options, name)
        if not 0.0 <= value <= 1.0:
            raise SynthError(f"{name} must lie between 0 and 1, not {value}.")
    for name in ("colin_weight", "dimple_probability"):
        if getattr(options, name) < 0:
            raise SynthError(f"{name} must not be negative, not {getattr(options, name)}.")
    for hemi in HEMISPHERES:
        p = options.prevalence.get(hemi)
        if p is None or len(p) != 3 or min(p) < 0 or sum(p) <= 0:
            raise SynthError(f"prevalence[{hemi!r}] must be three non-negative numbers "
                             f"(absent, present, prominent), not {p!r}.")
    if options.concordance is not None:
        try:
            prevalence.joint_table(options.prevalence, options.concordance)
        except ValueError as exc:
            raise SynthError(f"{exc} Set concordance to fit prevalence.") from exc
    _check_sites(options)
    _check_probabilities(options)
    if options.base_sulci not in anatomy.BASE_SULCI_RULES:
        raise SynthError(f"base_sulci must be one of {', '.join(anatomy.BASE_SULCI_RULES)}, "
                         f"not {options.base_sulci!r}.")
    if not options.voxel_sizes or any(len(v) != 3 or min(v) < 0.5 or max(v) > 4
                                       for v in options.voxel_sizes):
        raise SynthError("voxel sizes must be three numbers between 0.5 and 4 mm each.")
    valid = {"".join(c) for c in _all_axcodes()}
    bad = [o for o in options.orientations if o not in valid]
    if bad or not options.orientations:
        raise SynthError(f"orientation code(s) {', '.join(bad) or 'none'} are not valid; "
                         "use three letters, one of R/L, A/P, S/I each, e.g. RAS or LPS.")


def _check_sites(options: SynthOptions) -> None:
    names = [s.name for s in options.sites]
    if not names or len(set(names)) != len(names) or not all(
            n.isascii() and n.isalnum() for n in names):
        raise SynthError(f"sites need distinct names of letters and digits, not {names}.")
    for site in options.sites:
        if site.contrast not in FAMILY_RANGES:
            raise SynthError(f"site {site.name}: contrast {site.contrast!r} is not one of "
                             f"{', '.join(FAMILY_RANGES)}.")
        if site.voxel_mm is not None and (len(site.voxel_mm) != 3 or min(site.voxel_mm) < 0.5
                                          or max(site.voxel_mm) > 4):
            raise SynthError(f"site {site.name}: voxel_mm must be three sizes between 0.5 "
                             f"and 4 mm, not {site.voxel_mm}.")
        if site.weight <= 0:
            raise SynthError(f"site {site.name}: weight must be positive, not {site.weight}.")


def _check_probabilities(options: SynthOptions) -> None:
    import dataclasses

    values = {f"artefacts.{f.name}": getattr(options.artefacts, f.name)
              for f in dataclasses.fields(options.artefacts) if f.name.endswith("probability")}
    values.update({f"distractors.{f.name}": getattr(options.distractors, f.name)
                   for f in dataclasses.fields(options.distractors)
                   if f.name.endswith("probability")})
    values["dimple_probability"] = options.dimple_probability
    for name, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise SynthError(f"{name} must lie between 0 and 1, not {value}.")
    for name, shape in (("pcs", options.pcs),
                        ("distractors.cingulate_shape", options.distractors.cingulate_shape)):
        p = shape.segments
        if len(p) != 3 or min(p) < 0 or sum(p) <= 0:
            raise SynthError(f"{name}.segments must be three non-negative probabilities "
                             f"(one, two, three segments), not {p}.")


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
