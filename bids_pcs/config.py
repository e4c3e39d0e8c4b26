"""Run settings, read in one place and dumped once per run.

A run is configured by data, not by flags threaded through the code: a
*recipe* (a TOML file in ``pipelines/``, selectable by name, or any TOML file
path) fixes the template, the crop geometry, the registration, the network and
the training hyper-parameters; the command line adds what is specific to one
run (directories, participants, device, seed).  Every model written records the
recipe sections it depends on, and every run dumps the effective settings to
``OUTPUT_DIR/logs/``.

Usage::

    settings = load_settings("default", overrides={"pretrain": {"epochs": 2}})
    settings.crop.shape_vox  # (32, 96, 64)
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bids_pcs.errors import UsageError

PCS_CLASSES: tuple[str, ...] = ("absent", "present", "prominent")
# the binary presence call of the authors' explainability work: prominent merged into present
BINARY_CLASSES: tuple[str, ...] = ("absent", "present")
CLASS_SCHEMES: tuple[tuple[str, ...], ...] = (PCS_CLASSES, BINARY_CLASSES)
HEMISPHERES: tuple[str, ...] = ("L", "R")
# the one template shipped (nilearn's ICBM 2009a nonlinear symmetric, 1 mm): its
# name is the space- entity of every template-space derivative
TEMPLATE_NAME = "MNI152NLin2009aSym"
TEMPLATE_RESOLUTION_MM = 1.0


@dataclass(frozen=True)
class TemplateSettings:
    """The registration target: nilearn's copy of ICBM 2009a nonlinear symmetric.

    :func:`bids_pcs.spatial.template.load_template` reads it; the only template
    shipped is ``MNI152NLin2009aSym`` at 1 mm, so a recipe naming another one
    is refused when it is read, not after preprocessing.
    """

    name: str = TEMPLATE_NAME
    resolution_mm: float = TEMPLATE_RESOLUTION_MM

    def __post_init__(self) -> None:
        if self.name != TEMPLATE_NAME:
            raise RecipeError(f"[template] name {self.name!r} is not available; the only "
                              f"template shipped is {TEMPLATE_NAME}.")
        if self.resolution_mm != TEMPLATE_RESOLUTION_MM:
            raise RecipeError(
                f"[template] resolution_mm = {self.resolution_mm:g} is not available; the "
                f"template ships at {TEMPLATE_RESOLUTION_MM:g} mm (the registration's own "
                "resolutions are [registration] coarse_mm and fine_mm).")


@dataclass(frozen=True)
class CropSettings:
    """One box per hemisphere, fixed in template millimetres (RAS).

    ``left_min_mm`` is the corner with the smallest x, y, z of the left box;
    the right box is its mirror image across the mid-sagittal plane (x = 0).
    With ``mirror_right`` the right crop is flipped left-right so that one
    model sees every hemisphere as a left one.
    """

    size_mm: tuple[int, int, int] = (32, 96, 64)
    voxel_mm: float = 1.0
    left_min_mm: tuple[float, float, float] = (-30.0, -16.0, -6.0)
    mirror_right: bool = True

    @property
    def shape_vox(self) -> tuple[int, int, int]:
        return tuple(int(round(s / self.voxel_mm)) for s in self.size_mm)  # type: ignore[return-value]

    def min_mm(self, hemisphere: str) -> tuple[float, float, float]:
        """Smallest-coordinate corner of the box of ``hemisphere`` in template mm."""
        x, y, z = self.left_min_mm
        if hemisphere == "L":
            return (x, y, z)
        if hemisphere == "R":
            return (-(x + self.size_mm[0]), y, z)
        raise ValueError(f"hemisphere must be 'L' or 'R', not {hemisphere!r}")


@dataclass(frozen=True)
class RegistrationSettings:
    """How each T1w image is aligned to the template."""

    n4: bool = True
    # registration runs coarse-to-fine; the last level works on the crop region
    coarse_mm: float = 4.0
    fine_mm: float = 2.0
    refine_on_region: bool = True
    deformable: bool = False
    # QC: Pearson correlation of each crop with the template's crop over its brain
    # voxels; both hemispheres must reach it (good fits 0.75-0.85, bad < 0.4; see
    # bids_pcs.spatial.qc)
    qc_min_correlation: float = 0.5
    # seed of the metric's point sampling; not --seed, so that a sweep over training
    # seeds reuses one registration (its crops would otherwise differ per seed)
    random_seed: int = 0
    # is the input skull-stripped? "auto" measures each image, "yes"/"no" says it for
    # the dataset (--skull-stripped); a skull-stripped image is registered as it is,
    # a whole-head one through a rough brain mask (bids_pcs.spatial.skullstrip)
    skull_stripped: str = "auto"

    def __post_init__(self) -> None:
        if self.skull_stripped not in ("auto", "yes", "no"):
            raise RecipeError(f"[registration] skull_stripped must be auto, yes or no, not "
                              f"{self.skull_stripped!r}.")


@dataclass(frozen=True)
class NipypeSettings:
    """How Nipype executes the preprocessing workflow.

    ``plugin = "auto"`` follows the plan of :mod:`bids_pcs.resources` (Linear for one
    image at a time, else MultiProc, whose workers killed by a signal fail their own
    image only: :mod:`bids_pcs.workflows.multiproc`);
    any other Nipype plugin name (e.g. ``"SLURMGraph"``, with ``plugin_args``
    such as ``{sbatch_args = "--mem=4G"}``) fans the nodes out as it does.
    """

    plugin: str = "auto"
    plugin_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IntensitySettings:
    """Normalisation of crop intensities before they reach the network."""

    method: str = "percentile"  # "percentile" (robust min-max) or "zscore"
    lower_percentile: float = 1.0
    upper_percentile: float = 99.0


@dataclass(frozen=True)
class LabelSettings:
    """Label map of the PCS segmentation and the length thresholds of its classes.

    ``classes`` is the three-class protocol (absent / present / prominent) or
    the binary presence call ``["absent", "present"]``: in binary mode a
    label "prominent" counts as "present" (the authors' binary mode merges
    them), the network has two class outputs and lengths above
    ``present_min_mm`` are "present".
    """

    classes: tuple[str, ...] = PCS_CLASSES
    present_min_mm: float = 20.0
    prominent_min_mm: float = 40.0
    # dseg indices of each hemisphere's PCS (desc-pcs_dseg.tsv is built from them)
    dseg_left: int = 1
    dseg_right: int = 2

    def __post_init__(self) -> None:
        indices = (self.dseg_left, self.dseg_right)
        if len(set(indices)) != 2 or not all(0 < i < 256 for i in indices):
            raise RecipeError(f"[labels] dseg_left and dseg_right must be two different "
                              f"integers in 1..255 (0 is background), not {indices}.")
        if tuple(self.classes) not in CLASS_SCHEMES:
            raise RecipeError(
                f"[labels] classes {list(self.classes)} is not supported; use "
                f"{list(PCS_CLASSES)} (three classes) or {list(BINARY_CLASSES)} (presence).")
        if not 0 <= self.present_min_mm <= self.prominent_min_mm:
            raise RecipeError("[labels] thresholds must satisfy 0 <= present_min_mm <= "
                              "prominent_min_mm.")

    @property
    def binary(self) -> bool:
        """True for the presence call (absent / present) instead of three classes."""
        return tuple(self.classes) == BINARY_CLASSES

    def class_from_length(self, length_mm: float) -> str:
        """Class of a PCS from its length, with the Yuecel et al. (2001) thresholds."""
        if length_mm > self.prominent_min_mm and not self.binary:
            return "prominent"
        if length_mm >= self.present_min_mm:
            return "present"
        return "absent"

    def merge_class(self, name: str) -> str:
        """A protocol class name in this label scheme ("prominent" is "present" in binary)."""
        return "present" if self.binary and name == "prominent" else name


@dataclass(frozen=True)
class ModelSettings:
    """The multi-task network (see :mod:`bids_pcs.models`)."""

    architecture: str = "swinunetr"  # "swinunetr" (paper) or "cnn" (small, for CPU)
    feature_size: int = 24
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7  # Swin attention window, in tokens
    dropout: float = 0.0
    use_checkpoint: bool = False


@dataclass(frozen=True)
class PretrainSettings:
    """Self-supervised pre-training (see :mod:`bids_pcs.pretraining`)."""

    method: str = "reconstruction"
    epochs: int = 20
    batch_size: int = 2  # crops per process and forward pass
    accumulate_steps: int = 1
    learning_rate: float = 2e-4
    lr_schedule: str = "cosine"  # "cosine" (with linear warm-up) or "constant"
    warmup_fraction: float = 0.1  # share of the optimiser steps warming up linearly
    weight_decay: float = 1e-5
    mixed_precision: bool = True  # bf16 autocast on CUDA; ignored on CPU
    # per-method hyper-parameters, e.g. {"reconstruction": {"mask_ratio": 0.4}}
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class FinetuneSettings:
    """Supervised fine-tuning (see :mod:`bids_pcs.finetuning`)."""

    strategy: str = "full"
    epochs: int = 30
    batch_size: int = 2
    accumulate_steps: int = 1
    learning_rate: float = 2e-4  # for a strategy missing from learning_rates
    # per strategy, e.g. {"top": 3e-3, "full": 1e-3}: frozen-encoder strategies need a
    # larger step than full tuning (see the recipes and docs/training.md)
    learning_rates: dict[str, float] = field(default_factory=dict)
    lr_schedule: str = "cosine"
    warmup_fraction: float = 0.1
    weight_decay: float = 1e-5
    segmentation_weight: float = 0.8
    classification_weight: float = 0.2
    segmentation_loss: str = "dice_ce"  # "dice_ce" or "dice_focal"
    validation_fraction: float = 0.2
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    # top/decoder tuning: run the frozen part once and train on its outputs
    # (bids_pcs.finetuning.frozen_outputs); false recomputes it every epoch
    cache_frozen: bool = True

    def learning_rate_for(self, strategy: str) -> float:
        """Base rate of ``strategy``: its ``learning_rates`` entry, else ``learning_rate``."""
        return float(self.learning_rates.get(strategy, self.learning_rate))


CLASS_RULES: tuple[str, ...] = ("auto", "length", "network")


@dataclass(frozen=True)
class InferenceSettings:
    """Prediction on new participants.

    ``class_rule`` says where the reported class of a hemisphere comes from
    (docs/architecture.md, "Class and length"): ``"length"`` from the length
    of its predicted mask with the ``[labels]`` thresholds, ``"network"`` from
    the classification head, ``"auto"`` the length when the model learnt
    segmentation from masks and the head otherwise (a model trained on class
    labels only has no trained mask). The head's probabilities are written
    beside it either way, and a disagreement is flagged.
    """

    flip_tta: bool = False
    threshold: float = 0.5
    mixed_precision: bool = False  # bf16 autocast on CUDA; ignored on CPU
    class_rule: str = "auto"

    def __post_init__(self) -> None:
        if self.class_rule not in CLASS_RULES:
            raise RecipeError(f"[inference] class_rule {self.class_rule!r} is unknown; use one "
                              f"of {', '.join(CLASS_RULES)}.")


@dataclass(frozen=True)
class ReviewSettings:
    """What the group level's review queue (``review.tsv``) calls worth a second look.

    A hemisphere is listed when its class entropy reaches ``class_entropy``
    (0 certain, 1 uniform), its mask uncertainty reaches ``mask_uncertainty``,
    its flip agreement is below ``flip_agreement``, its measured length lies
    within ``length_margin_mm`` of a class threshold, its reported class and
    its network class disagree, or its registration QC correlation is within
    ``qc_margin`` above the pass threshold (or failed).
    """

    class_entropy: float = 0.5
    mask_uncertainty: float = 0.5
    flip_agreement: float = 0.7
    length_margin_mm: float = 2.5
    qc_margin: float = 0.1
    shown: int = 25  # rows of the "review first" section of the group page


@dataclass(frozen=True)
class StudySettings:
    """The methods x strategies grid of the source paper."""

    methods: tuple[str, ...] = ("scratch", "reconstruction", "contrastive", "adversarial",
                                "diffusion")
    strategies: tuple[str, ...] = ("top", "decoder", "full", "lora")
    train_fraction: float = 0.6
    validation_fraction: float = 0.2
    test_fraction: float = 0.2
    folds: int = 0
    bootstrap_samples: int = 1000
    # what each split's pre-training learns from: "all" = every image of BIDS_DIR
    # (labelled or not) but the validation and test participants', plus every
    # --pretrain-data dataset; "train" = the training participants' images only
    pretrain_pool: str = "all"
    # label efficiency: each configuration also fine-tunes on these shares of the training
    # participants' labels (nested, stratified subsets); pre-training is not repeated
    label_fractions: tuple[float, ...] = (1.0,)
    # training seeds (fine-tuning): each configuration runs once per seed; empty: --seed only
    seeds: tuple[int, ...] = ()
    # "COLUMN=VALUE" of participants.tsv (e.g. "site=B", "anatomy_source=Colin27"): those
    # participants are an out-of-distribution test set, never trained or validated on
    # (bids_pcs.splits); empty: none
    test_on: str = ""


@dataclass(frozen=True)
class SynthSettings:
    """The synthetic cohort the demo writes (``bids_pcs.synth``).

    ``preset`` is ``benchmark`` (folds among unlabelled neighbouring sulci,
    sites, artefacts, cited prevalence) or ``easy`` (the carved-sheet cohort
    the fast tests use); ``options`` change single fields of it, as
    ``bids_pcs-synth --set`` does (e.g. ``{deformation_mm = 2.0}``).
    """

    preset: str = "benchmark"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSettings:
    """What the command line says about this one run."""

    bids_dir: str = ""
    output_dir: str = ""
    analysis_level: str = ""
    work_dir: str = ""
    participant_label: tuple[str, ...] = ()
    session_label: tuple[str, ...] = ()
    nprocs: int = 1  # CPUs the run may keep busy
    omp_nthreads: int = 1
    mem_gb: float = 0.0  # memory the run may use; 0: not bounded (library use)
    resources_from: str = ""  # where nprocs and mem_gb come from (bids_pcs.resources)
    device: str = "auto"
    seed: int = 0
    skip_bids_validation: bool = False
    verbose: int = 0
    recipe: str = "default"
    model: str = ""
    init: str = ""
    labels: str = ""
    # further BIDS datasets whose T1w images pre-train too (pretrain, study)
    pretrain_data: tuple[str, ...] = ()
    resume: bool = False
    model_name: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know, as one immutable object."""

    run: RunSettings = field(default_factory=RunSettings)
    template: TemplateSettings = field(default_factory=TemplateSettings)
    crop: CropSettings = field(default_factory=CropSettings)
    registration: RegistrationSettings = field(default_factory=RegistrationSettings)
    nipype: NipypeSettings = field(default_factory=NipypeSettings)
    intensity: IntensitySettings = field(default_factory=IntensitySettings)
    labels: LabelSettings = field(default_factory=LabelSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    inference: InferenceSettings = field(default_factory=InferenceSettings)
    review: ReviewSettings = field(default_factory=ReviewSettings)
    study: StudySettings = field(default_factory=StudySettings)
    synth: SynthSettings = field(default_factory=SynthSettings)

    def replace(self, **sections: dict[str, Any]) -> Settings:
        """A copy with some fields of some sections changed: ``replace(run={"seed": 3})``."""
        return merge(self, sections)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(dataclasses.asdict(self))


class RecipeError(UsageError):
    """A recipe (or a ``--set`` value) cannot be found or does not describe valid settings."""


def available_recipes() -> list[str]:
    """Names of the recipes shipped in ``pipelines/``."""
    root = resources.files("bids_pcs.pipelines")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def read_recipe(name_or_path: str) -> dict[str, Any]:
    """The raw mapping of a recipe given by name (``pipelines/NAME.toml``) or by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.is_file():
        text = path.read_text()
        source = str(path)
    else:
        candidate = resources.files("bids_pcs.pipelines") / f"{name_or_path}.toml"
        if not candidate.is_file():
            raise RecipeError(
                f"Recipe {name_or_path!r} not found: give a TOML file path or one of "
                f"{', '.join(available_recipes())}."
            )
        text = candidate.read_text()
        source = f"pipelines/{name_or_path}.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"Recipe {source} is not valid TOML ({exc}); fix the file.") from exc
    # a recipe may build on another one
    base = data.pop("extends", None)
    if base:
        data = _deep_update(read_recipe(base), data)
    return data


def load_settings(recipe: str = "default", overrides: dict[str, Any] | None = None) -> Settings:
    """Settings from a recipe, then ``overrides`` (same nesting as the recipe)."""
    data = read_recipe(recipe)
    if overrides:
        data = _deep_update(data, overrides)
    data.setdefault("run", {})
    data["run"] = {**data["run"], "recipe": recipe}
    return _build(Settings, data, "settings")


def merge(settings: Settings, changes: dict[str, Any]) -> Settings:
    """``settings`` with ``changes`` (nested mapping) applied, validated like a recipe."""
    return _build(Settings, _deep_update(settings.to_dict(), changes), "settings")


def settings_from_dict(data: dict[str, Any]) -> Settings:
    """Rebuild settings from :meth:`Settings.to_dict` output (as in a config dump)."""
    return _build(Settings, data, "settings")


def dump_settings_toml(settings: Settings) -> str:
    """The effective settings as TOML text (the per-run config dump)."""
    import tomli_w

    return tomli_w.dumps(_drop_empty(settings.to_dict()))


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied table by table (recipe nesting), neither modified."""
    return _deep_update(base, changes)


def build_dataclass(cls: type, data: dict[str, Any], where: str) -> Any:
    """``cls`` (a dataclass, nested ones too) from a mapping, typed and checked like a recipe.

    Raises:
        RecipeError: an unknown key or a value of the wrong type, naming ``[where]``.
    """
    return _build(cls, data, where)


def _deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "options":
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    if not isinstance(data, dict):
        raise RecipeError(f"[{where}] must be a table, not {type(data).__name__}.")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise RecipeError(
            f"Unknown setting(s) {', '.join(unknown)} in [{where}]; valid ones are "
            f"{', '.join(sorted(known))}."
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where.split(".", 1)[-1])
    origin = typing.get_origin(hint)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise RecipeError(f"{where} must be a list, not {value!r}.")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_coerce(item, v, where) for v in value)
    if origin in (dict, types.UnionType) or hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise RecipeError(f"{where} must be true or false, not {value!r}.")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RecipeError(f"{where} must be a number, not {value!r}.")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecipeError(f"{where} must be an integer, not {value!r}.")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise RecipeError(f"{where} must be a string, not {value!r}.")
        return value
    return value


def _to_plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    return value


def _drop_empty(value: Any) -> Any:
    # TOML has no null; empty strings stay, None values are dropped
    if isinstance(value, dict):
        return {k: _drop_empty(v) for k, v in value.items() if v is not None}
    return value
