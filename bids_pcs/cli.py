"""Command line of the BIDS App: ``bids_pcs BIDS_DIR OUTPUT_DIR ANALYSIS_LEVEL [options]``.

Only click and the standard library are imported here, so ``--help`` and
``--version`` answer at once; each analysis level lives in
``bids_pcs.levels.<level>`` and is imported only when it runs.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import tempfile
import tomllib
from pathlib import Path
from typing import Any

import click

from bids_pcs import __version__
from bids_pcs.devices import (
    check_device,
    check_device_spec,
    default_omp_threads,
    set_threads,
)
from bids_pcs.errors import BidsPcsError, DeviceError, OutputError, UsageError
from bids_pcs.resources import detect_allocation

LOGGER = logging.getLogger("bids_pcs")

LEVELS = ("participant", "group", "pretrain", "finetune", "study")
SCRATCH = "scratch"  # the study's from-scratch baseline: no pre-training method
# options taking several space-separated values, as in every BIDS App
MULTI_VALUE_OPTIONS = ("--participant-label", "--participant_label", "--session-label",
                       "--session_label", "--methods", "--strategies", "--set",
                       "--pretrain-data", "--pretrain_data")
# which options belong to which level (anything else is a usage error)
LEVEL_OPTIONS = {
    "model": ("participant",),
    "method": ("pretrain",),
    "init": ("finetune",),
    "strategy": ("finetune",),
    "labels": ("finetune", "study"),
    "methods": ("study",),
    "strategies": ("study",),
    "resume": ("pretrain", "finetune", "study"),
    "model_name": ("pretrain", "finetune"),
    "pretrain_data": ("pretrain", "study"),
}


class BidsAppCommand(click.Command):
    """A click command whose multi-valued options take space-separated values.

    ``--participant-label 01 02`` becomes ``--participant-label 01
    --participant-label 02`` before click parses it; values run until the next
    token that starts with ``-``.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, expand_multi_values(args, MULTI_VALUE_OPTIONS))


def expand_multi_values(args: list[str], names: tuple[str, ...]) -> list[str]:
    """Repeat a multi-valued option before each of its space-separated values."""
    out: list[str] = []
    current: str | None = None
    taken = 0
    for token in args:
        if token in names:
            current, taken = token, 0
            continue
        if current is not None:
            if token.startswith("-") and not _is_number(token):
                if taken == 0:
                    out.append(current)  # let click report the missing value
                current = None
            else:
                out += [current, token]
                taken += 1
                continue
        out.append(token)
    if current is not None and taken == 0:
        out.append(current)
    return out


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


class RegisteredName(click.ParamType):
    """A pre-training method or fine-tuning strategy, checked against its registry.

    The names come from the plug-in registries (:mod:`bids_pcs.registry`), so a
    fifth method or strategy is accepted as soon as its file exists; the
    registry (and with it torch) is imported only when a value is given, never
    for ``--help``.

    Args:
        kind: ``"method"`` or ``"strategy"``.
        extra: names accepted besides the registered ones (``scratch``).
    """

    def __init__(self, kind: str, extra: tuple[str, ...] = ()) -> None:
        self.kind = kind
        self.extra = extra
        self.name = kind.upper()

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> str:
        names = [*self.extra, *registered_names(self.kind)]
        if value not in names:
            what = "pre-training method" if self.kind == "method" else "fine-tuning strategy"
            self.fail(f"{value!r} is not a {what}; use one of {', '.join(names)}.", param, ctx)
        return value


def registered_names(kind: str) -> list[str]:
    """Names of the registered pre-training methods (``"method"``) or strategies."""
    if kind == "method":
        from bids_pcs.pretraining import available_methods

        return available_methods()
    from bids_pcs.finetuning.strategies import available_strategies

    return available_strategies()


def _validate_device(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    try:
        return check_device_spec(value)
    except DeviceError as exc:
        raise click.BadParameter("use auto, cpu, cuda or cuda:N (e.g. cuda:1).") from exc


@click.command(cls=BidsAppCommand, context_settings={"help_option_names": ["-h", "--help"],
                                                     "max_content_width": 100})
@click.argument("bids_dir", type=click.Path(path_type=Path))
@click.argument("output_dir", type=click.Path(path_type=Path))
@click.argument("analysis_level", type=click.Choice(LEVELS))
@click.option("--participant-label", "--participant_label", "participant_label", multiple=True,
              metavar="LABEL [LABEL ...]",
              help="Participants to process, with or without 'sub-' (default: all).")
@click.option("--session-label", "--session_label", "session_label", multiple=True,
              metavar="LABEL [LABEL ...]",
              help="Sessions to process, with or without 'ses-' (default: all).")
@click.option("-w", "--work-dir", type=click.Path(path_type=Path),
              help="Intermediate files; reused to resume (default: a folder in the system "
                   "temporary directory named after OUTPUT_DIR). Never inside BIDS_DIR.")
@click.option("--nprocs", type=click.IntRange(min=1), default=None,
              help="CPUs the run may keep busy (default: the allocation's: "
                   "SLURM_CPUS_PER_TASK in a SLURM job, else the CPU affinity or cgroup quota).")
@click.option("--omp-nthreads", type=click.IntRange(min=1), default=None,
              help="Threads per process for PyTorch (default: min(nprocs, 8)); ANTs runs "
                   "one thread per image, so that registrations repeat exactly.")
@click.option("--mem-gb", "--mem_gb", "mem_gb", type=click.FloatRange(min=0.1), default=None,
              help="Memory the run may use, in GB: bounds the images preprocessed in parallel "
                   "(default: the allocation's: SLURM_MEM_PER_NODE in a SLURM job, else the "
                   "cgroup limit or the machine's memory).")
@click.option("--device", default="auto", show_default=True, callback=_validate_device,
              help="Compute device for the network: auto, cpu, cuda or cuda:N.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Random seed of splits and training (registration has its own, "
                   "--set registration.random_seed=N, so crops are reused across seeds).")
@click.option("--skull-stripped", type=click.Choice(("auto", "yes", "no")), default=None,
              help="Are the T1w images skull-stripped? auto (the recipe's default) measures "
                   "each image; yes/no says so for the whole dataset. A skull-stripped image "
                   "is registered as it is, a whole-head one through a rough brain mask.")
@click.option("--skip-bids-validation", "--skip_bids_validation", "skip_bids_validation",
              is_flag=True, help="Do not run bids-validator-deno on BIDS_DIR.")
@click.option("--recipe", default="default", show_default=True, metavar="NAME|FILE.toml",
              help="Run recipe: a name from pipelines/ or a TOML file.")
@click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Change one recipe setting, e.g. --set pretrain.epochs=5 (TOML values).")
@click.option("--model", type=click.Path(path_type=Path),
              help="[participant] Model directory: also infer PCS masks and classes.")
@click.option("--method", type=RegisteredName("method"),
              help="[pretrain] Self-supervised method (default: the recipe's; a wrong name "
                   "lists the registered ones).")
@click.option("--init", "init",
              help="[finetune] A pre-trained model directory, or 'scratch'.")
@click.option("--strategy", type=RegisteredName("strategy"),
              help="[finetune] Fine-tuning strategy (default: the recipe's; a wrong name "
                   "lists the registered ones).")
@click.option("--labels", type=click.Path(path_type=Path),
              help="[finetune, study] PCS labels: a label dataset (masks and/or a "
                   "participants.tsv with classes), a TSV/CSV class table, or a folder of "
                   "rating files saved from the reports.")
@click.option("--pretrain-data", "--pretrain_data", "pretrain_data", multiple=True,
              type=click.Path(path_type=Path), metavar="DIR [DIR ...]",
              help="[pretrain, study] Further BIDS datasets (other participants, labelled or "
                   "not) whose every T1w image pre-trains too; their derivatives go to "
                   "OUTPUT_DIR/derivatives/<folder name>/.")
@click.option("--methods", multiple=True, type=RegisteredName("method", extra=(SCRATCH,)),
              metavar="M [M ...]", help="[study] Pre-training methods of the grid.")
@click.option("--strategies", multiple=True, type=RegisteredName("strategy"),
              metavar="S [S ...]", help="[study] Fine-tuning strategies of the grid.")
@click.option("--model-name", help="[pretrain, finetune] Name of the model folder under "
                                   "OUTPUT_DIR/models/ (default: from method and strategy).")
@click.option("--resume", is_flag=True,
              help="[pretrain, finetune, study] Continue from the last checkpoint.")
@click.option("-v", "--verbose", count=True, help="More output; -v shows tracebacks.")
@click.version_option(__version__, "--version", prog_name="bids_pcs")
def cli(**options: Any) -> None:
    """Find and classify the paracingulate sulcus (PCS) in T1w images of a BIDS dataset.

    \b
    ANALYSIS_LEVEL is one of
      participant  register and crop each T1w image; with --model also infer
                   PCS masks, classes, lengths and write a report
      group        summarise participant outputs found in OUTPUT_DIR
      pretrain     self-supervised pre-training on the crops (--method)
      finetune     supervised fine-tuning (--init, --strategy, --labels)
      study        every pre-training method x fine-tuning strategy, compared

    \b
    Examples
      bids_pcs /data /out participant --participant-label 01 02
      bids_pcs /data /out pretrain --method contrastive
      bids_pcs /data /out finetune --init /out/models/pretrain-contrastive \\
          --strategy lora --labels /data/derivatives/pcs-labels
      bids_pcs /data /out participant --model /out/models/finetune-contrastive-lora
      bids_pcs /data /out group
    """
    ctx = click.get_current_context()
    settings = None
    try:
        check_level_options(options)
        options["recipe_given"] = (ctx.get_parameter_source("recipe")
                                   is not click.core.ParameterSource.DEFAULT)
        settings = build_settings(options)
        _execute(settings)
    except click.UsageError:
        raise
    except (OSError, MemoryError) as exc:
        # a full disk, a read-only folder, memory or file handles run out, in any layer
        from bids_pcs.system_errors import run_folders, system_error

        error = system_error(exc, folders=run_folders(settings) if settings else ())
        if error is None:
            _internal_error(ctx, exc, options["verbose"])
        LOGGER.debug("run failed: %s", error, exc_info=True)
        click.echo(f"bids_pcs: error: {error}", err=True)
        _record_for_torchrun(error)
        ctx.exit(error.exit_code)
    except BidsPcsError as exc:
        # the run log keeps the message and traceback; the console shows the
        # traceback only with -v (its handler is at DEBUG then)
        LOGGER.debug("run failed: %s", exc, exc_info=True)
        click.echo(f"bids_pcs: error: {exc}", err=True)
        _record_for_torchrun(exc)
        ctx.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("bids_pcs: interrupted; finished outputs are kept, rerun to resume.", err=True)
        ctx.exit(130)
    except Exception as exc:  # a bug: say where the details are
        _internal_error(ctx, exc, options["verbose"])


def _internal_error(ctx: click.Context, exc: BaseException, verbose: int) -> None:
    LOGGER.debug("unexpected error", exc_info=True)
    _record_for_torchrun(exc)
    if verbose:
        raise exc
    click.echo(f"bids_pcs: internal error: {type(exc).__name__}: {exc} "
               "(rerun with -v for the traceback; the run log has it too).", err=True)
    ctx.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="bids_pcs")


def _record_for_torchrun(exc: BaseException) -> None:
    """Under ``torchrun``, hand the error to its agent, which names the first failing rank.

    torchrun gives each process a file (``TORCHELASTIC_ERROR_FILE``) for its
    error; its failure summary then shows the message of the process that
    failed first, not only exit codes.
    """
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    try:
        from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

        ErrorHandler().record_exception(exc)
    except Exception:  # never hide the error itself behind a reporting problem
        LOGGER.debug("could not write torchrun's error file", exc_info=True)


def check_level_options(options: dict[str, Any]) -> None:
    """Refuse options that do not apply to the chosen level, and missing required ones."""
    level = options["analysis_level"]
    for name, levels in LEVEL_OPTIONS.items():
        value = options.get(name)
        if value and level not in levels:
            flag = "--" + name.replace("_", "-")
            raise click.UsageError(f"{flag} applies only to the {' and '.join(levels)} level(s).")
    if level == "finetune":
        if not options.get("init"):
            raise click.UsageError("finetune needs --init MODEL_DIR or --init scratch.")
        if not options.get("labels"):
            raise click.UsageError("finetune needs --labels LABELS (a PCS label dataset, a "
                                   "class table or a folder of rating files).")
    if level == "study" and not options.get("labels"):
        raise click.UsageError("study needs --labels LABELS (a PCS label dataset, a class "
                               "table or a folder of rating files).")


def build_settings(options: dict[str, Any]):
    """Settings of this run: the recipe, then --set values, then the run's own options.

    With ``participant --model`` and no ``--recipe``, the model's recipe is the
    base and its template, crop, registration, intensity and label sections
    come from its card (:mod:`bids_pcs.models.recipe`); ``--set`` still wins,
    and a value the model cannot work with is refused in one sentence.
    """
    from bids_pcs.config import load_settings

    bids_dir = options["bids_dir"].expanduser().absolute()
    output_dir = options["output_dir"].expanduser().absolute()
    work_dir = options["work_dir"]
    work_dir = (work_dir.expanduser().absolute() if work_dir is not None
                else default_work_dir(output_dir))
    allocation = detect_allocation(nprocs=options["nprocs"], mem_gb=options.get("mem_gb"))
    nprocs = allocation.cpus
    omp = options["omp_nthreads"] or default_omp_threads(nprocs)

    check_labels(options)
    overrides = parse_overrides(options["overrides"])
    recipe = options["recipe"]
    recipe_given = options.get("recipe_given", recipe != "default")
    card = model_dir = None
    if options.get("model"):
        from bids_pcs.models.card import model_dir_of, read_model_card

        # a missing or foreign model fails now, before any dataset is indexed
        given = Path(options["model"]).expanduser().absolute()
        if not given.exists():
            raise UsageError(f"Model directory {given} does not exist; give --model the "
                             "folder that holds model.json and model.safetensors (or its "
                             "model.json).")
        model_dir = model_dir_of(given)
        card = read_model_card(model_dir)
    run = {
        "bids_dir": str(bids_dir),
        "output_dir": str(output_dir),
        "analysis_level": options["analysis_level"],
        "work_dir": str(work_dir),
        "participant_label": list(options["participant_label"]),
        "session_label": list(options["session_label"]),
        "nprocs": nprocs,
        "omp_nthreads": omp,
        "mem_gb": round(allocation.memory_gb, 3),
        "resources_from": f"CPUs: {allocation.cpus_from}; memory: {allocation.memory_from}",
        "device": options["device"],
        "seed": options["seed"],
        "skip_bids_validation": options["skip_bids_validation"],
        "verbose": options["verbose"],
        "model": str(model_dir) if model_dir else "",
        "init": _init_value(options["init"]),
        "labels": str(Path(options["labels"]).absolute()) if options["labels"] else "",
        "pretrain_data": [str(Path(d).expanduser().absolute())
                          for d in options.get("pretrain_data") or ()],
        "resume": options["resume"],
        "model_name": options["model_name"] or "",
    }
    overrides.setdefault("run", {}).update(run)
    if options.get("skull_stripped"):
        overrides.setdefault("registration", {})["skull_stripped"] = options["skull_stripped"]
    if options["method"]:
        overrides.setdefault("pretrain", {})["method"] = options["method"]
    if options["strategy"]:
        overrides.setdefault("finetune", {})["strategy"] = options["strategy"]
    if options["methods"]:
        overrides.setdefault("study", {})["methods"] = list(options["methods"])
    if options["strategies"]:
        overrides.setdefault("study", {})["strategies"] = list(options["strategies"])
    if card is None:
        return load_settings(recipe, overrides)
    return _settings_for_model(card, model_dir, recipe, recipe_given, overrides,
                               parse_overrides(options["overrides"]))


def _settings_for_model(card: dict[str, Any], model_dir: Path, recipe: str, recipe_given: bool,
                        overrides: dict[str, Any], user_sets: dict[str, Any]):
    """The run's settings with the model's recipe under the command line's (see build_settings)."""
    from bids_pcs.config import available_recipes, deep_update, load_settings
    from bids_pcs.models import recipe as model_recipe

    if not recipe_given:
        named = model_recipe.recipe_name(card)
        if named and (named in available_recipes() or Path(named).is_file()):
            recipe = named
        overrides = deep_update(model_recipe.model_overrides(card), overrides)
    settings = load_settings(recipe, overrides)
    conflict = model_recipe.first_conflict(card, settings.to_dict())
    if conflict is not None:
        if conflict.key in (user_sets.get(conflict.section) or {}):
            source = f"--set {conflict.section}.{conflict.key}"
        else:
            source = f"--recipe {recipe}" if recipe_given else "this run"
        raise UsageError(model_recipe.conflict_sentence(conflict, model_dir, source))
    return settings


def check_labels(options: dict[str, Any]) -> None:
    """Refuse a participant or session label that is not a BIDS label (a usage error)."""
    from bids_pcs.errors import InputDataError
    from bids_pcs.io.bids_input import normalise_label

    for option, prefix in (("participant_label", "sub"), ("session_label", "ses")):
        for value in options.get(option) or ():
            try:
                normalise_label(value, prefix)
            except InputDataError as exc:
                raise UsageError(str(exc)) from exc


def parse_overrides(items: tuple[str, ...]) -> dict[str, Any]:
    """``("pretrain.epochs=5",)`` -> ``{"pretrain": {"epochs": 5}}`` (values parsed as TOML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise click.UsageError(f"--set {item!r}: expected SECTION.KEY=VALUE, "
                                   "e.g. --set finetune.epochs=10.")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word is a string
        *sections, leaf = key.split(".")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    return out


def default_work_dir(output_dir: Path) -> Path:
    """A work dir in the temporary directory, stable per OUTPUT_DIR so reruns resume."""
    digest = hashlib.sha1(str(output_dir).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"bids_pcs_work_{digest}"


def check_paths(settings) -> None:
    """Refuse OUTPUT_DIR (but for BIDS_DIR/derivatives/<name>) or the work dir inside BIDS_DIR."""
    from bids_pcs.io.bids_input import check_bids_dir

    run = settings.run
    bids_dir, output_dir, work_dir = (Path(run.bids_dir), Path(run.output_dir),
                                      Path(run.work_dir))
    if run.analysis_level != "group":
        if not bids_dir.is_dir():  # a path argument that points nowhere: a usage error
            raise UsageError(f"BIDS_DIR {bids_dir} does not exist or is not a directory; "
                             "give the path of a BIDS dataset.")
        check_bids_dir(bids_dir)
    # BIDS_DIR/derivatives/<name> is the usual BIDS-Apps layout (pybids and the
    # validator leave derivatives/ out of the raw dataset); anywhere else inside
    # BIDS_DIR the outputs would be read back as raw data
    in_derivatives = _is_within(output_dir.resolve().parent, bids_dir / "derivatives")
    if _is_within(output_dir, bids_dir) and not in_derivatives:
        raise OutputError(f"OUTPUT_DIR {output_dir} is BIDS_DIR or inside it; write derivatives "
                          f"to {bids_dir / 'derivatives'}/<name> or outside the raw dataset.")
    if _is_within(work_dir, bids_dir):
        raise OutputError(f"Work dir {work_dir} is inside BIDS_DIR {bids_dir}; choose another "
                          "--work-dir outside the raw dataset.")
    if run.labels and not Path(run.labels).exists():
        raise UsageError(f"Label source {run.labels} does not exist; give --labels a PCS label "
                         "dataset, a class table (.tsv) or a folder of rating files.")
    for dataset in run.pretrain_data:
        if not Path(dataset).is_dir():
            raise UsageError(f"--pretrain-data {dataset} does not exist or is not a directory; "
                             "give the path of a BIDS dataset.")
        check_bids_dir(Path(dataset))
    if run.pretrain_data:
        from bids_pcs.levels.training_inputs import check_pretraining_datasets

        check_pretraining_datasets(settings)


def _execute(settings) -> None:
    from bids_pcs.runlog import dump_config, new_run_id, setup_console_logging, start_run_log

    setup_console_logging(settings.run.verbose)
    _keep_caches_in_tmp()
    check_paths(settings)
    check_device(settings.run.device)
    level = settings.run.analysis_level
    module = importlib.import_module(f"bids_pcs.levels.{level}")

    from bids_pcs.io.derivatives import init_derivatives

    bids_dir = Path(settings.run.bids_dir)
    output_dir = Path(settings.run.output_dir)
    init_derivatives(output_dir, bids_dir if bids_dir.is_dir() else None, settings.labels)
    run_id = new_run_id()
    settings = settings.replace(run={"run_id": run_id})
    start_run_log(output_dir, level, run_id)
    config_path = dump_config(output_dir, level, run_id, settings)
    LOGGER.debug("configuration written to %s", config_path)
    set_threads(settings.run.omp_nthreads)

    if level != "group":
        if not settings.run.skip_bids_validation:
            from bids_pcs.io.validator import check_bids_valid

            check_bids_valid(bids_dir)
            for dataset in settings.run.pretrain_data:
                check_bids_valid(Path(dataset))
        from bids_pcs.io.bids_input import collect_t1w

        # fail on a bad selection before any level starts work
        images = collect_t1w(bids_dir, settings.run.participant_label,
                             settings.run.session_label)
        LOGGER.info("%d T1w image(s) selected: %s", len(images),
                    ", ".join(im.prefix for im in images[:10])
                    + (" ..." if len(images) > 10 else ""))
        from bids_pcs.preflight import check_before_work

        # writable folders and enough free space, before any registration
        check_before_work(settings, images)
    module.run(settings)
    LOGGER.info("%s level finished; outputs in %s", level, output_dir)


def _keep_caches_in_tmp() -> None:
    """Point matplotlib's cache into the temporary directory unless the user chose one.

    A run writes only into OUTPUT_DIR, the work dir and the temporary
    directory; matplotlib would otherwise build its font cache under HOME
    (which may be read-only, or shared, in containers and on clusters).
    """
    if not os.environ.get("MPLCONFIGDIR"):
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        os.environ["MPLCONFIGDIR"] = str(Path(tempfile.gettempdir()) / f"bids_pcs-mpl-{uid}")


def _init_value(value: str | None) -> str:
    if not value:
        return ""
    if value == "scratch":
        return "scratch"
    return str(Path(value).absolute())


def _is_within(path: Path, parent: Path) -> bool:
    path, parent = path.resolve(), parent.resolve()
    return path == parent or parent in path.parents


if __name__ == "__main__":  # pragma: no cover
    main()
