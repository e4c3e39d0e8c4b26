"""``bids_pcs-demo OUTPUT_DIR``: the whole chain on a synthetic cohort, in minutes on a laptop.

Steps (each through the same code as the command line's levels):

1. a synthetic labelled cohort (:func:`bids_pcs.synth.make_cohort`) written to
   ``OUTPUT_DIR/sourcedata/synthetic/`` (the raw BIDS dataset, with its label
   dataset under ``derivatives/pcs-labels``): ``sourcedata/`` is the folder BIDS
   reserves for a derivative's inputs and the validator skips it, so OUTPUT_DIR
   stays one valid derivative dataset that carries its own raw data;
2. participants split, seeded, into training and held-out ones (stratified by
   how many hemispheres have a sulcus);
3. preprocessing of every image (registration + crops);
4. pre-training (the recipe's method) on the training participants' crops;
5. fine-tuning (the recipe's strategy) from it on the training participants'
   labels, a share of them validating each epoch;
6. ``participant --model`` on the held-out participants: dseg, probsegs,
   result tables and reports;
7. the group level;
8. scoring the held-out derivatives against the synthetic truth with
   :mod:`bids_pcs.metrics`: Dice of each hemisphere's mask on the native grid,
   presence accuracy of the reported classes (under the class rule of
   :mod:`bids_pcs.inference.calls`: by default the class of the mask's
   length) and, beside it, of the classification head's classes.

The figures are printed and written to ``OUTPUT_DIR/logs/demo_<run id>_results.json``
beside the run's log and configuration dump.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from bids_pcs import __version__
from bids_pcs.errors import BidsPcsError, OutputError

LOGGER = logging.getLogger("bids_pcs.demo")
RAW_RELPATH = Path("sourcedata") / "synthetic"
DEFAULT_RECIPE = "demo"


@dataclass
class DemoResult:
    """The held-out figures of one demo run.

    Args:
        dice: mean Dice over held-out hemispheres (both empty counts 1, as in
            :func:`bids_pcs.metrics.dice`).
        dice_labelled: mean Dice over held-out hemispheres whose truth has a sulcus.
        presence_accuracy: share of held-out hemispheres whose reported
            presence (absent vs present/prominent) is right.
        presence_balanced_accuracy: mean of the presence sensitivity and
            specificity (the benchmark's classes are not balanced).
        accuracy_3class: share whose reported class is exactly right.
        n_hemispheres: hemispheres scored.
        train, held_out: participant labels of each part.
        seconds: wall time per step.
        per_hemisphere: one record per held-out hemisphere.
        presence_accuracy_head: presence accuracy of the classification
            head's classes (``pcs_class_network``), for comparison.
    """

    dice: float
    dice_labelled: float
    presence_accuracy: float
    accuracy_3class: float
    presence_balanced_accuracy: float
    n_hemispheres: int
    train: list[str]
    held_out: list[str]
    seconds: dict[str, float] = field(default_factory=dict)
    per_hemisphere: list[dict[str, Any]] = field(default_factory=list)
    presence_accuracy_head: float = float("nan")


@click.command(context_settings={"help_option_names": ["-h", "--help"],
                                 "max_content_width": 100})
@click.argument("output_dir", type=click.Path(path_type=Path))
@click.option("--participants", type=click.IntRange(min=4), default=20, show_default=True,
              help="Participants in the synthetic cohort.")
@click.option("--held-out", "held_out", type=click.FloatRange(0.05, 0.5), default=0.25,
              show_default=True, help="Share of participants held out for the final scores.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the cohort, the split and training.")
@click.option("--recipe", default=DEFAULT_RECIPE, show_default=True, metavar="NAME|FILE.toml",
              help="Run recipe (pipelines/demo.toml by default).")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Change one recipe setting, e.g. --set finetune.epochs=5.")
@click.option("--nprocs", type=click.IntRange(min=1), default=None,
              help="Processes for the cohort and preprocessing (default: all CPUs).")
@click.option("--omp-nthreads", type=click.IntRange(min=1), default=None,
              help="Threads per process for PyTorch (default: min(nprocs, 8)).")
@click.option("--device", default="auto", show_default=True,
              help="Where the network runs: auto, cpu, cuda or cuda:N.")
@click.option("-w", "--work-dir", type=click.Path(path_type=Path),
              help="Intermediate files (default: a folder in the temporary directory).")
@click.option("-v", "--verbose", count=True, help="More output; -v shows tracebacks.")
@click.version_option(__version__, "--version", prog_name="bids_pcs-demo")
def main(output_dir: Path, participants: int, held_out: float, seed: int, recipe: str,
         overrides: tuple[str, ...], nprocs: int | None, omp_nthreads: int | None, device: str,
         work_dir: Path | None, verbose: int) -> None:
    """Run bids_pcs end to end on a synthetic cohort written into OUTPUT_DIR.

    Generates a labelled synthetic cohort, preprocesses it, pre-trains and
    fine-tunes a small network on the training participants, infers on the
    held-out ones with `participant --model`, runs the group level and prints
    the held-out Dice and presence accuracy. OUTPUT_DIR becomes a BIDS
    derivative dataset (the raw cohort lies in its sourcedata/ folder).
    """
    from bids_pcs.cli import default_work_dir, parse_overrides
    from bids_pcs.devices import available_cpus, default_omp_threads, set_threads

    ctx = click.get_current_context()
    output_dir = output_dir.expanduser().absolute()
    nprocs = nprocs or available_cpus()
    omp = omp_nthreads or default_omp_threads(nprocs)
    set_threads(omp)
    try:
        settings = _settings(recipe, parse_overrides(overrides), output_dir=output_dir,
                             work_dir=(work_dir.expanduser().absolute() if work_dir
                                       else default_work_dir(output_dir)),
                             nprocs=nprocs, omp=omp, device=device, seed=seed, verbose=verbose)
        result = run_demo(settings, participants, held_out)
    except click.UsageError:
        raise
    except BidsPcsError as exc:
        if verbose:
            LOGGER.exception("error")
        click.echo(f"bids_pcs-demo: error: {exc}", err=True)
        ctx.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("bids_pcs-demo: interrupted; rerun with the same OUTPUT_DIR to resume.",
                   err=True)
        ctx.exit(130)
    except Exception as exc:  # a bug: say where the details are
        LOGGER.debug("unexpected error", exc_info=True)
        if verbose:
            raise
        click.echo(f"bids_pcs-demo: internal error: {type(exc).__name__}: {exc} (rerun with -v "
                   "for the traceback; the run log in OUTPUT_DIR/logs has it too).", err=True)
        ctx.exit(1)
    click.echo(format_summary(result, output_dir))


def _settings(recipe: str, overrides: dict[str, Any], *, output_dir: Path, work_dir: Path,
              nprocs: int, omp: int, device: str, seed: int, verbose: int):
    from bids_pcs.config import load_settings
    from bids_pcs.devices import check_device

    check_device(device)  # refuse a missing GPU before any work
    raw_dir = output_dir / RAW_RELPATH
    run = {"bids_dir": str(raw_dir), "output_dir": str(output_dir), "work_dir": str(work_dir),
           "analysis_level": "demo", "nprocs": nprocs, "omp_nthreads": omp, "device": device,
           "seed": seed, "skip_bids_validation": True, "verbose": verbose,
           "labels": str(raw_dir / "derivatives" / "pcs-labels")}
    overrides.setdefault("run", {}).update(run)
    return load_settings(recipe, overrides)


def run_demo(settings, n_participants: int, held_out_fraction: float) -> DemoResult:
    """Every step of the demo (see the module doc); returns the held-out figures."""
    from bids_pcs.devices import set_threads
    from bids_pcs.io.derivatives import init_derivatives
    from bids_pcs.runlog import dump_config, new_run_id, setup_console_logging, start_run_log

    setup_console_logging(settings.run.verbose)
    set_threads(settings.run.omp_nthreads)
    output_dir = Path(settings.run.output_dir)
    raw_dir = Path(settings.run.bids_dir)
    seconds: dict[str, float] = {}
    clock = _Clock(seconds)

    check_output_dir(output_dir)
    init_derivatives(output_dir, raw_dir, settings.labels)
    run_id = new_run_id()
    settings = settings.replace(run={"run_id": run_id})
    log_path = start_run_log(output_dir, "demo", run_id)
    dump_config(output_dir, "demo", run_id, settings)
    with clock("cohort"):
        _step(1, f"synthetic cohort of {n_participants} participants -> {raw_dir}")
        summary = ensure_cohort(raw_dir, n_participants, settings.run.seed,
                                settings.run.nprocs, settings.synth)

    train, held_out = split_participants(summary, held_out_fraction, settings.run.seed)
    LOGGER.info("Training participants (%d): %s; held out (%d): %s", len(train),
                " ".join(train), len(held_out), " ".join(held_out))

    from bids_pcs import preprocess
    from bids_pcs.io.bids_input import collect_t1w

    with clock("preprocessing"):
        _step(2, "preprocessing: registration to MNI152NLin2009aSym and medial frontal crops")
        preprocess.preprocess_images(settings, collect_t1w(raw_dir))

    from bids_pcs.levels import finetune as finetune_level
    from bids_pcs.levels import group, participant, pretrain

    train_settings = settings.replace(run={"participant_label": train})
    with clock("pretraining"):
        _step(3, f"pre-training ({settings.pretrain.method}, {settings.pretrain.epochs} "
                 f"epochs) on {len(train)} training participants")
        pretrain.run(train_settings)
    pretrained = output_dir / "models" / pretrain.model_name(settings)

    with clock("finetuning"):
        _step(4, f"fine-tuning ({settings.finetune.strategy}, {settings.finetune.epochs} "
                 f"epochs) from {pretrained.name}")
        finetune_level.run(train_settings.replace(run={"init": str(pretrained)}))
    model_dir = finetune_level.model_dir_of(settings, settings.pretrain.method)

    test_settings = settings.replace(run={"participant_label": held_out,
                                          "model": str(model_dir)})
    with clock("inference"):
        _step(5, f"participant --model {model_dir.name} on {len(held_out)} held-out "
                 "participants")
        participant.run(test_settings)

    with clock("group"):
        _step(6, "group level")
        group.run(settings)

    with clock("scoring"):
        result = score_held_out(settings, held_out)
    result.train, result.held_out = train, held_out
    result.seconds = seconds
    results_path = output_dir / "logs" / f"demo_{run_id}_results.json"
    from bids_pcs.io.atomic import write_json

    write_json(results_path, {"version": __version__, "recipe": settings.run.recipe,
                              "participants": n_participants, "seed": settings.run.seed,
                              "model": str(model_dir), "log": str(log_path),
                              **result.__dict__})
    LOGGER.info("Demo finished in %.0f s; figures in %s", sum(seconds.values()), results_path)
    return result


def check_output_dir(output_dir: Path) -> None:
    """Refuse an OUTPUT_DIR that holds something other than a derivative dataset.

    Raises:
        OutputError: OUTPUT_DIR is a file, or a non-empty folder without a
            ``dataset_description.json`` (not a derivative dataset of an earlier run).
    """
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputError(f"OUTPUT_DIR {output_dir} is a file; give a new directory.")
    if output_dir.is_dir() and any(output_dir.iterdir()) \
            and not (output_dir / "dataset_description.json").is_file():
        raise OutputError(f"OUTPUT_DIR {output_dir} is not empty and not a derivative "
                          "dataset of an earlier run; choose a new or empty directory.")


def ensure_cohort(raw_dir: Path, n_participants: int, seed: int, nprocs: int, synth=None):
    """The synthetic cohort in ``raw_dir``: made, or reused when an earlier run made the same.

    Args:
        raw_dir: where the cohort goes.
        n_participants, seed: its size and seed.
        nprocs: processes that make it.
        synth: :class:`bids_pcs.config.SynthSettings` (preset and changed options;
            the benchmark preset when ``None``).

    Raises:
        OutputError: ``raw_dir`` holds another cohort (other size, seed or options).
    """
    from bids_pcs.config import RecipeError, SynthSettings
    from bids_pcs.synth import SynthOptions, make_cohort
    from bids_pcs.synth.bids_writer import LABELS_SUBDIR
    from bids_pcs.synth.options import apply_changes, data_options

    synth = synth or SynthSettings()
    try:
        options = apply_changes(SynthOptions.from_preset(synth.preset, nprocs=nprocs,
                                                         figure_images=4), synth.options)
    except (KeyError, ValueError) as exc:
        raise RecipeError(f"[synth] preset {synth.preset!r} with options {synth.options} is "
                          f"not a synthetic cohort ({exc}); fix the recipe or --set.") from exc
    provenance = raw_dir / "code" / "synth_options.json"
    if provenance.is_file():
        made = json.loads(provenance.read_text())
        same = (made.get("participants"), made.get("seed")) == (n_participants, seed) \
            and data_options(made.get("options", {})) == data_options(_plain(options))
        if not same:
            raise OutputError(
                f"{raw_dir} holds a demo cohort of {made.get('participants')} participants "
                f"(seed {made.get('seed')}) made with other options; use a new OUTPUT_DIR "
                f"for {n_participants} participants with seed {seed} and preset "
                f"{synth.preset}.")
        LOGGER.info("Reusing the synthetic cohort in %s", raw_dir)
        return _CohortOnDisk(raw_dir, raw_dir / LABELS_SUBDIR, _read_participants(raw_dir))
    summary = make_cohort(raw_dir, n_participants, seed=seed, options=options)
    LOGGER.info("Cohort written in %.0f s: left %s, right %s", summary.seconds,
                summary.class_counts["L"], summary.class_counts["R"])
    return _CohortOnDisk(raw_dir, summary.labels_dir, summary.participants)


def _plain(options) -> dict[str, Any]:
    import dataclasses

    return json.loads(json.dumps(dataclasses.asdict(options), default=list))


@dataclass
class _CohortOnDisk:
    bids_dir: Path
    labels_dir: Path
    participants: list[dict[str, Any]]


def _read_participants(raw_dir: Path) -> list[dict[str, Any]]:
    import pandas as pd

    table = pd.read_csv(raw_dir / "participants.tsv", sep="\t", dtype=str,
                        keep_default_na=False)
    return table.to_dict("records")


def split_participants(cohort, held_out_fraction: float, seed: int,
                       ) -> tuple[list[str], list[str]]:
    """Seeded (train, held-out) participant labels: the split of :mod:`bids_pcs.splits`.

    Stratified by how many hemispheres of a participant have a sulcus
    (``participants.tsv``), so both parts see absent and present sulci; at
    least three participants stay for training (fine-tuning holds one of them
    out for validation).
    """
    from bids_pcs import splits

    hemispheres = [splits.LabelledHemisphere(row["participant_id"].removeprefix("sub-"),
                                             row["participant_id"], row[column])
                   for row in cohort.participants for column in ("pcs_left", "pcs_right")]
    strata = splits.participant_strata(hemispheres)
    n = len(strata)
    n_held = min(max(1, int(round(held_out_fraction * n))), n - 3)
    # counts as weights give exact part sizes; seed + 7919: not the fine-tuning split's stream
    split = splits.split_participants(strata, (n - n_held, 0, n_held), seed=seed + 7919)
    return list(split.train), list(split.test)


def score_held_out(settings, held_out: list[str]) -> DemoResult:
    """Dice and presence of the held-out derivatives against the synthetic truth."""
    import nibabel as nib
    import numpy as np

    from bids_pcs import metrics
    from bids_pcs.config import HEMISPHERES
    from bids_pcs.io.bids_input import collect_t1w
    from bids_pcs.io.derivatives import dseg_path, pcs_table_path
    from bids_pcs.io.labels import read_labels
    from bids_pcs.morphometry import split_hemispheres
    from bids_pcs.reports.results import read_pcs_table

    output_dir = Path(settings.run.output_dir)
    images = collect_t1w(Path(settings.run.bids_dir), held_out)
    records = read_labels(settings.run.labels, images, settings.labels,
                          bids_dir=settings.run.bids_dir)
    rows, true_classes, predicted, scores, head = [], [], [], [], []
    for record in records:
        truth = split_hemispheres(np.asanyarray(nib.load(record.dseg_path).dataobj),
                                  settings.labels)
        mine_path = dseg_path(output_dir, record.image)
        table = read_pcs_table(pcs_table_path(output_dir, record.image))
        if mine_path.is_file():
            mine = split_hemispheres(np.asanyarray(nib.load(mine_path).dataobj),
                                     settings.labels)
        else:  # registration QC failed: no mask, scored as an empty one
            mine = {h: np.zeros_like(truth[h]) for h in HEMISPHERES}
        for hemisphere in HEMISPHERES:
            result = table[hemisphere]
            if result.pcs_class is None:  # registration QC failed: counts as a miss
                pcs_class, p_present, head_class = "absent", 0.0, "absent"
            else:
                pcs_class = result.pcs_class
                head_class = result.network_class or pcs_class
                p_present = (result.probabilities.get("present") or 0.0) + \
                    (result.probabilities.get("prominent") or 0.0)
            rows.append({"image": record.image.prefix, "hemisphere": hemisphere,
                         "true_class": record.classes[hemisphere], "pcs_class": pcs_class,
                         "pcs_class_network": head_class,
                         "dice": metrics.dice(mine[hemisphere], truth[hemisphere]),
                         "true_voxels": int(truth[hemisphere].sum()),
                         "predicted_voxels": int(mine[hemisphere].sum()),
                         "pcs_length_mm": result.length_mm})
            true_classes.append(record.classes[hemisphere])
            predicted.append(pcs_class)
            head.append(head_class)
            scores.append(p_present)
    presence = metrics.presence_metrics(true_classes, predicted, scores)
    labelled = [r["dice"] for r in rows if r["true_voxels"] > 0]
    return DemoResult(
        dice=float(np.mean([r["dice"] for r in rows])),
        dice_labelled=float(np.mean(labelled)) if labelled else float("nan"),
        presence_accuracy=presence.accuracy,
        presence_balanced_accuracy=presence.balanced_accuracy,
        accuracy_3class=metrics.three_class_accuracy(true_classes, predicted),
        n_hemispheres=len(rows), train=[], held_out=held_out, per_hemisphere=rows,
        presence_accuracy_head=metrics.presence_metrics(true_classes, head).accuracy)


def format_summary(result: DemoResult, output_dir: Path) -> str:
    """The lines the demo prints at the end."""
    total = sum(result.seconds.values())
    steps = ", ".join(f"{k} {v:.0f} s" for k, v in result.seconds.items())
    return "\n".join([
        "",
        f"bids_pcs demo: trained on {len(result.train)} participants, scored on "
        f"{len(result.held_out)} held-out participants ({result.n_hemispheres} hemispheres).",
        f"  held-out Dice (native T1w grid, all hemispheres): {result.dice:.3f}",
        f"  held-out Dice (hemispheres with a labelled sulcus): {result.dice_labelled:.3f}",
        f"  held-out presence accuracy: {result.presence_accuracy:.3f} (balanced "
        f"{result.presence_balanced_accuracy:.3f}; classification head alone: "
        f"{result.presence_accuracy_head:.3f})",
        f"  held-out 3-class accuracy: {result.accuracy_3class:.3f}",
        f"  wall time: {total:.0f} s ({steps})",
        f"Outputs in {output_dir}:",
        f"  group summary    {output_dir / 'group_pcs.html'}",
        f"  reports          {output_dir}/sub-<label>.html",
        f"  models           {output_dir / 'models'}",
        f"  synthetic cohort {output_dir / RAW_RELPATH}",
        f"  logs             {output_dir / 'logs'}",
    ])


class _Clock:
    """``with clock("step"):`` adds the step's wall time to ``seconds``."""

    def __init__(self, seconds: dict[str, float]) -> None:
        self.seconds = seconds
        self.name = ""
        self.start = 0.0

    def __call__(self, name: str) -> _Clock:
        self.name = name
        return self

    def __enter__(self) -> _Clock:
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds[self.name] = round(time.perf_counter() - self.start, 1)


def _step(number: int, text: str) -> None:
    LOGGER.info("[%d/6] %s", number, text)


if __name__ == "__main__":  # pragma: no cover
    main()
