"""``bids_pcs-synth BIDS_DIR --participants N --seed S``: write a synthetic cohort.

``--preset benchmark`` (default) or ``easy`` picks the options
(:mod:`bids_pcs.synth.options`); the other flags and ``--set NAME=VALUE``
(any option, dotted for nested ones: ``--set distractors.dimples=[0,5]``)
change single values of the preset. Exit 0 on success, 2 on a usage error
(click), 1 with one sentence when the cohort cannot be written (traceback
with ``-v``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from bids_pcs import __version__
from bids_pcs.errors import BidsPcsError

_ANATOMY_CHOICES = {
    "all": ("MNI152NLin2009aSym", "Colin27"),
    "mni": ("MNI152NLin2009aSym",),
    "colin": ("Colin27",),
}


def _voxel_sizes(ctx: click.Context, param: click.Parameter, value: str
                 ) -> tuple[tuple[float, float, float], ...] | None:
    if value is None:
        return None
    sizes = []
    for item in value.split(","):
        parts = item.strip().lower().split("x")
        try:
            numbers = tuple(float(p) for p in parts)
        except ValueError:
            numbers = ()
        if len(numbers) == 1:
            numbers = numbers * 3
        if len(numbers) != 3 or min(numbers) < 0.5 or max(numbers) > 4:
            raise click.BadParameter(
                f"{item!r} is not a voxel size; write e.g. 1x1x1.2 (three sizes in mm "
                "between 0.5 and 4), several separated by commas.")
        sizes.append(numbers)
    return tuple(sizes)


def _orientations(ctx: click.Context, param: click.Parameter, value: str
                  ) -> tuple[str, ...] | None:
    if value is None:
        return None
    codes = tuple(v.strip().upper() for v in value.split(",") if v.strip())
    for code in codes:
        # one letter per axis: R or L, A or P, S or I, in any order
        axes = sorted(next((k for k, pair in enumerate(("RL", "AP", "SI")) if c in pair), -1)
                      for c in code)
        if len(code) != 3 or axes != [0, 1, 2]:
            raise click.BadParameter(f"{code!r} is not an orientation code; use three "
                                     "letters such as RAS, LPS or PIR.")
    return codes


def _settings(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
              ) -> dict[str, Any]:
    import tomllib

    out: dict[str, Any] = {}
    for item in value:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r}: expected NAME=VALUE, e.g. "
                                     "--set artefacts.ringing_probability=0.5.")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare word is a string
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.option("-n", "--participants", type=click.IntRange(min=1), default=10,
              show_default=True, help="Number of participants.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed; the same seed writes the same files.")
@click.option("--preset", type=click.Choice(["benchmark", "easy"]), default="benchmark",
              show_default=True,
              help="benchmark: folds with grey banks, interruptions, unlabelled neighbouring "
                   "sulci, sites, artefacts, cited prevalence; easy: the carved-sheet cohort "
                   "of earlier versions (fast tests).")
@click.option("--set", "changes", multiple=True, callback=_settings, metavar="NAME=VALUE",
              help="Change one option of the preset (TOML value), e.g. --set "
                   "deformation_mm=2 or --set pcs.segments=[1,0,0]; see the cohort README.")
@click.option("--sessions-fraction", type=click.FloatRange(0, 1), default=None,
              help="With > 0 every participant gets ses-1, this fraction also ses-2 "
                   "[default: 0].")
@click.option("--skull/--no-skull", default=None,
              help="Keep skull and neck, or skull-strip every image [default: the preset's "
                   "stripped fraction].")
@click.option("--stripped-fraction", type=click.FloatRange(0, 1), default=None,
              help="Fraction of images skull-stripped (overrides --skull/--no-skull).")
@click.option("--voxel-sizes", callback=_voxel_sizes, default=None,
              help="Voxel sizes drawn per image, e.g. '1x1x1,1x1x1.4,1.2'; the sites then "
                   "keep their contrast but draw their voxel size from these "
                   "[default: each site's own, or 1 mm and anisotropic mixes].")
@click.option("--orientations", callback=_orientations, default=None,
              help="Orientation codes drawn per image [default: RAS,LAS,LPS,RPI,PIR,ASL].")
@click.option("--anatomy", type=click.Choice(sorted(_ANATOMY_CHOICES)), default="all",
              show_default=True, help="Anatomy sources (Colin27 only where installed).")
@click.option("--deformation-mm", type=click.FloatRange(0, 5), default=None,
              help="Strength of the random smooth deformation [default: the preset's].")
@click.option("--figure/--no-figure", default=True, show_default=True,
              help="Write BIDS_DIR/code/pcs_overview.png (sagittal slices with labels).")
@click.option("--nprocs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier synthetic cohort in BIDS_DIR.")
@click.option("-v", "--verbose", count=True, help="Show tracebacks of errors.")
@click.version_option(__version__, prog_name="bids_pcs-synth")
def main(bids_dir: Path, participants: int, seed: int, preset: str, changes: dict[str, Any],
         sessions_fraction: float | None, skull: bool | None, stripped_fraction: float | None,
         voxel_sizes, orientations, anatomy: str, deformation_mm: float | None, figure: bool,
         nprocs: int, overwrite: bool, verbose: int) -> None:
    """Write a synthetic labelled BIDS cohort with known paracingulate sulci to BIDS_DIR.

    Raw T1w images go to BIDS_DIR, labels (1 left PCS, 2 right PCS) and classes
    (absent / present / prominent) to BIDS_DIR/derivatives/pcs-labels; the
    README there lists every option and its value.
    """
    from bids_pcs.synth.cohort import make_cohort

    try:
        options = _options(preset, changes, sessions_fraction=sessions_fraction, skull=skull,
                           stripped_fraction=stripped_fraction, voxel_sizes=voxel_sizes,
                           orientations=orientations, anatomy=anatomy,
                           deformation_mm=deformation_mm, figure=figure, nprocs=nprocs,
                           overwrite=overwrite)
    except (TypeError, ValueError, KeyError, AttributeError, BidsPcsError) as exc:
        raise click.BadParameter(f"{exc}", param_hint="--set") from exc
    try:
        summary = make_cohort(bids_dir, participants, seed, options)
    except BidsPcsError as exc:
        if verbose:
            raise
        click.echo(f"bids_pcs-synth: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    counts = summary.class_counts
    click.echo(f"Wrote {len(summary.participants)} participants ({summary.n_images} T1w "
               f"images) to {summary.bids_dir} in {summary.seconds:.0f} s "
               f"({summary.seconds_per_participant:.1f} s per participant).")
    for hemi in ("L", "R"):
        text = ", ".join(f"{c} {n}" for c, n in counts[hemi].items())
        click.echo(f"  {'left' if hemi == 'L' else 'right'} PCS: {text}")
    click.echo(f"Labels: {summary.labels_dir}")
    for figure_path in (summary.figure, summary.distractor_figure):
        if figure_path:
            click.echo(f"Figure: {figure_path}")


def _options(preset: str, changes: dict[str, Any], *, sessions_fraction: float | None,
             skull: bool | None, stripped_fraction: float | None, voxel_sizes, orientations,
             anatomy: str, deformation_mm: float | None, figure: bool, nprocs: int,
             overwrite: bool):
    """The preset's options, then the flags, then ``--set`` values (typed as the fields)."""
    import dataclasses

    from bids_pcs.synth.options import SynthOptions, apply_changes

    options = SynthOptions.from_preset(preset, anatomy=_ANATOMY_CHOICES[anatomy],
                                       figure=figure, nprocs=nprocs, overwrite=overwrite)
    flags: dict[str, Any] = {}
    if sessions_fraction is not None:
        flags["sessions_fraction"] = sessions_fraction
    if stripped_fraction is not None:
        flags["stripped_fraction"] = stripped_fraction
    elif skull is not None:
        flags["stripped_fraction"] = 0.0 if skull else 1.0
    if deformation_mm is not None:
        flags["deformation_mm"] = deformation_mm
    if orientations:
        flags["orientations"] = orientations
    if voxel_sizes:
        flags["voxel_sizes"] = voxel_sizes
        flags["sites"] = tuple(dataclasses.replace(s, voxel_mm=None) for s in options.sites)
    options = options.replace(**flags)
    return apply_changes(options, changes)

