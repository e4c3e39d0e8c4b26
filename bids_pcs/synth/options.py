"""What a synthetic cohort looks like: :class:`SynthOptions` and its presets.

Two presets (``bids_pcs-synth --preset``):

- ``benchmark`` (the default, the dataclass defaults): the PCS is a fold with
  grey banks whose depth and width vary along its course, sometimes
  interrupted by gyral bridges; the base brains' sulci of the paracingulate
  band and the cingulate sulcus are closed and every
  neighbouring sulcus is carved anew but never labelled (cingulate,
  intralimbic, superior rostral, dimples, short PCS-like sulci that the
  protocol calls absent); three sites with MPRAGE-like and SPGR-like
  contrasts and their own voxel sizes; stronger deformations, cortical
  thickness and ventricle size that vary, ringing, motion ghosts, strong
  inhomogeneity and defaced heads; class prevalence from a cited cohort
  (:mod:`bids_pcs.synth.prevalence`).
- ``easy``: the cohort of bids_pcs 0.1 (a carved dark sheet in a smoothed
  band, independent round-number prevalence, one contrast model), byte for
  byte: the fast tests use it.

Every field carries its description in ``metadata["doc"]``; the cohort's
README lists each with its value (:func:`describe_options`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from bids_pcs.config import LabelSettings
from bids_pcs.synth import prevalence as cited
from bids_pcs.synth.anatomy import COLIN_NAME, MNI_NAME
from bids_pcs.synth.artefacts import ArtefactOptions
from bids_pcs.synth.pcs_geometry import SulcusShape
from bids_pcs.synth.population import EASY_PREVALENCE
from bids_pcs.synth.sites import BENCHMARK_SITES, ONE_SITE, Site
from bids_pcs.synth.sulci import NO_DISTRACTORS, DistractorOptions

DEFAULT_VOXEL_SIZES: tuple[tuple[float, float, float], ...] = (
    (1.0, 1.0, 1.0), (1.0, 1.0, 1.0), (1.0, 1.0, 1.2), (1.2, 1.2, 1.2), (1.0, 1.0, 1.4),
    (1.3, 1.0, 1.0),
)
# RAS (nibabel), LAS (FSL radiological), LPS (DICOM/ITK), PIR and ASL (sagittal
# acquisitions stored slice-first), RPI
DEFAULT_ORIENTATIONS = ("RAS", "LAS", "LPS", "RPI", "PIR", "ASL")

# the benchmark's PCS: wider depth range, thinner CSF core that varies along
# the course and closes towards the fundus, thicker grey banks, more positional
# spread, interruptions (choices made by eye on the figures, not cited figures)
BENCHMARK_PCS = SulcusShape(
    offset_mm=(-2.5, 1.5), wave_mm=(0.0, 2.5), wavelength_mm=(20.0, 50.0), tilt=(-0.25, 0.1),
    curl=(-0.03, 0.03), depth_mm=(6.0, 14.0), half_width_mm=(0.4, 1.0), bank_mm=(1.8, 2.8),
    variation=0.35, width_variation=0.5, collapse=0.4, min_depth_mm=2.0, end_narrowing=0.6,
    segments=(0.6, 0.3, 0.1), bridge_mm=(3.0, 8.0), min_segment_mm=6.0)
BENCHMARK_ARTEFACTS = ArtefactOptions(
    ringing_probability=0.2, ghosting_probability=0.15, strong_bias_probability=0.25,
    deface_probability=0.3)


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class SynthOptions:
    """How the cohort varies; defaults are the ``benchmark`` preset.

    Each field's ``metadata["doc"]`` describes it (also written to the
    cohort's README). Build another preset with :meth:`from_preset`.

    Usage::

        SynthOptions.from_preset("easy", sessions_fraction=0.5)
        SynthOptions().replace(**{"distractors.dimples": (0, 5)})
    """

    sessions_fraction: float = field(default=0.0, metadata=_doc(
        "with > 0, every participant has ses-1 and this fraction also ses-2 (same brain, "
        "new acquisition)"))
    stripped_fraction: float = field(default=0.1, metadata=_doc(
        "fraction of images skull-stripped"))
    anatomy: tuple[str, ...] = field(default=(MNI_NAME, COLIN_NAME), metadata=_doc(
        "real anatomies the heads are warped from (those not installed are skipped)"))
    colin_weight: float = field(default=0.4, metadata=_doc(
        "relative frequency of Colin27 among the anatomies (MNI152 counts 1)"))
    sites: tuple[Site, ...] = field(default=BENCHMARK_SITES, metadata=_doc(
        "acquisition sites (participants.tsv `site`): name, contrast family "
        "(mprage / spgr / mixed), voxel size (none: drawn from voxel_sizes), weight"))
    voxel_sizes: tuple[tuple[float, float, float], ...] = field(
        default=DEFAULT_VOXEL_SIZES, metadata=_doc(
            "voxel sizes drawn per image at sites without a voxel size of their own"))
    orientations: tuple[str, ...] = field(default=DEFAULT_ORIENTATIONS, metadata=_doc(
        "orientation codes drawn per image"))
    prevalence: dict[str, tuple[float, float, float]] = field(
        default_factory=lambda: dict(cited.CITED_PREVALENCE), metadata=_doc(
            "per hemisphere P(absent), P(present), P(prominent); default: the cited "
            "cohort (left measured, right present/prominent split assumed; see "
            "Prevalence below)"))
    concordance: tuple[float, float, float] | None = field(
        default=cited.CITED_CONCORDANCE, metadata=_doc(
            "P(both hemispheres absent), P(both present), P(both prominent), which "
            "correlates the two hemispheres; none: drawn independently"))
    dimple_probability: float = field(default=0.5, metadata=_doc(
        "chance that an absent hemisphere has a short PCS-like sulcus"))
    absent_sulcus_mm: tuple[float, float] = field(default=(6.0, 16.5), metadata=_doc(
        "length range of that short sulcus (kept 3.5 mm below the present threshold)"))
    label_absent_sulci: bool = field(default=False, metadata=_doc(
        "label the short PCS-like sulcus of an absent hemisphere (the protocol does not: "
        "absent means no PCS is traced)"))
    pcs: SulcusShape = field(default=BENCHMARK_PCS, metadata=_doc(
        "ranges of the PCS's course: offset and wander, depth, CSF half width, grey banks, "
        "variation along the course, interruptions (segments, gyral bridges)"))
    distractors: DistractorOptions = field(default_factory=DistractorOptions, metadata=_doc(
        "unlabelled neighbouring sulci: cingulate, intralimbic, superior rostral, dimples"))
    template_blur_mm: float = field(default=0.8, metadata=_doc(
        "blur (Gaussian s.d., mm) of every sulcus carved into an MNI152-based head, to the "
        "softness of that average template's own sulci (Colin27's are sharp: none)"))
    base_sulci: str = field(default="medial_wall", metadata=_doc(
        "where the base brains' own sulci are removed (closed) before carving: "
        "'medial_wall' (8 mm around the PCS arc, 4.5 mm around the cingulate arc) or "
        "'pcs_band' (4 mm around the PCS arc)"))
    deformation_mm: float = field(default=3.0, metadata=_doc(
        "spread (mm) of the smooth random deformation's control points"))
    deformation_spacing_mm: float = field(default=25.0, metadata=_doc(
        "distance between the deformation's control points (smaller: more local)"))
    cortical_thickness_mm: tuple[float, float] = field(default=(-0.5, 0.5), metadata=_doc(
        "range of the change of cortical thickness per participant (mm; grey/white "
        "boundary moved by partial volume)"))
    ventricle_enlargement_mm: float = field(default=2.5, metadata=_doc(
        "growth of the lateral ventricles at age 65 (linear from 0 at age 20, times a "
        "per-participant factor in 0.5-1.5)"))
    max_rotation_deg: float = field(default=10.0, metadata=_doc(
        "head pitch in the scanner up to this, roll and yaw up to half of it"))
    max_shift_mm: float = field(default=10.0, metadata=_doc("head shift in the scanner"))
    noise_range: tuple[float, float] = field(default=(0.01, 0.05), metadata=_doc(
        "noise s.d. relative to white matter, drawn per image"))
    bias_strength: float = field(default=0.12, metadata=_doc(
        "spread of the log-bias coefficients (intensity inhomogeneity)"))
    tissue_blend: tuple[float, float] = field(default=(0.0, 0.4), metadata=_doc(
        "range of the weight of the tissue-map rendering of the MNI152 brain"))
    artefacts: ArtefactOptions = field(default=BENCHMARK_ARTEFACTS, metadata=_doc(
        "ringing, motion ghosts, strong inhomogeneity, defacing: probabilities and strength"))
    labels: LabelSettings = field(default_factory=LabelSettings, metadata=_doc(
        "class thresholds (mm) and label values"))
    figure: bool = field(default=True, metadata=_doc(
        "write code/pcs_overview.png and code/pcs_distractors.png"))
    figure_images: int = field(default=4, metadata=_doc("images the figures show"))
    nprocs: int = field(default=1, metadata=_doc("worker processes"))
    overwrite: bool = field(default=False, metadata=_doc(
        "replace an earlier synthetic cohort in BIDS_DIR"))

    def __post_init__(self) -> None:
        # values read from TOML arrive as lists
        object.__setattr__(self, "prevalence",
                           {k: tuple(v) for k, v in dict(self.prevalence).items()})
        if self.concordance is not None:
            object.__setattr__(self, "concordance", tuple(self.concordance))
        for name in ("anatomy", "orientations", "sites"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "voxel_sizes", tuple(tuple(v) for v in self.voxel_sizes))

    @classmethod
    def from_preset(cls, name: str, **changes: Any) -> SynthOptions:
        """The options of preset ``name`` (``benchmark`` or ``easy``) with ``changes``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
        return dataclasses.replace(cls(), **{**PRESETS[name], **changes})

    def replace(self, **changes: Any) -> SynthOptions:
        """A copy with fields changed; ``"section.field"`` keys reach into nested options."""
        flat: dict[str, Any] = {}
        nested: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            head, _, rest = key.partition(".")
            if rest:
                nested.setdefault(head, {})[rest] = value
            else:
                flat[head] = value
        for head, inner in nested.items():
            flat[head] = _replace_nested(flat.get(head, getattr(self, head)), inner)
        return dataclasses.replace(self, **flat)

    def site(self, name: str) -> Site:
        """The site called ``name``."""
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)


def apply_changes(options: SynthOptions, changes: dict[str, Any]) -> SynthOptions:
    """``options`` with ``changes`` ({"name": value} or {"section.name": value}, values as
    TOML gives them: lists for tuples), typed and checked as a recipe is.

    Raises:
        KeyError: a name that is no option.
        bids_pcs.config.RecipeError: a value of the wrong type.
    """
    from bids_pcs.config import build_dataclass

    if not changes:
        return options
    nested: dict[str, Any] = {}
    for key, value in changes.items():
        *heads, leaf = key.split(".")
        node = nested
        for head in heads:
            node = node.setdefault(head, {})
        node[leaf] = value
    return build_dataclass(SynthOptions, _merge(_as_dict(options), nested), "synth")


def _as_dict(options: SynthOptions) -> dict[str, Any]:
    # nested options and sites as mappings, so changes can reach into them
    out: dict[str, Any] = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = dataclasses.asdict(value)  # type: ignore[arg-type]
        elif f.name == "sites":
            out[f.name] = [dataclasses.asdict(s) for s in value]
        else:
            out[f.name] = value
    return out


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in changes.items():
        if key not in base:
            raise KeyError(f"{key!r} is not an option (see the cohort README)")
        if isinstance(value, dict) and isinstance(base[key], dict):
            out[key] = _merge(base[key], value)
        else:
            out[key] = value
    return out


def _replace_nested(value: Any, changes: dict[str, Any]) -> Any:
    flat: dict[str, Any] = {}
    for key, item in changes.items():
        head, _, rest = key.partition(".")
        flat[head] = _replace_nested(getattr(value, head), {rest: item}) if rest else item
    return dataclasses.replace(value, **flat)


# what the easy preset changes from the benchmark: everything new switched off
EASY: dict[str, Any] = {
    "stripped_fraction": 0.0,
    "colin_weight": 0.3,
    "sites": ONE_SITE,
    "prevalence": dict(EASY_PREVALENCE),
    "concordance": None,
    "absent_sulcus_mm": (6.0, 14.0),
    "label_absent_sulci": True,
    "pcs": SulcusShape(),
    "distractors": NO_DISTRACTORS,
    "base_sulci": "pcs_band",
    "template_blur_mm": 0.0,
    "deformation_mm": 1.5,
    "deformation_spacing_mm": 30.0,
    "cortical_thickness_mm": (0.0, 0.0),
    "ventricle_enlargement_mm": 0.0,
    "noise_range": (0.01, 0.04),
    "artefacts": ArtefactOptions(),
}
PRESETS: dict[str, dict[str, Any]] = {"benchmark": {}, "easy": EASY}


_NOT_THE_DATA = {"figure", "figure_images", "nprocs", "overwrite"}


def closest_preset(options: SynthOptions) -> tuple[str, list[str]]:
    """The preset ``options`` differ least from, and the fields that differ.

    Figure, process and overwrite settings do not count: they change no data.
    """
    mine = dataclasses.asdict(options)
    best: tuple[str, list[str]] | None = None
    for name in PRESETS:
        theirs = dataclasses.asdict(SynthOptions.from_preset(name))
        changed = [k for k in mine if k not in _NOT_THE_DATA and mine[k] != theirs[k]]
        if best is None or len(changed) < len(best[1]):
            best = (name, changed)
    assert best is not None
    return best


def data_options(plain: dict[str, Any]) -> dict[str, Any]:
    """A plain (JSON) options mapping without the fields that change no data."""
    return {k: v for k, v in plain.items() if k not in _NOT_THE_DATA}


def preset_of(options: SynthOptions) -> str | None:
    """The preset ``options`` equal (figure, nprocs and overwrite aside), or ``None``."""
    name, changed = closest_preset(options)
    return None if changed else name


def describe_options(options: SynthOptions, prefix: str = "") -> list[tuple[str, Any, str]]:
    """(name, value, description) of every field, nested options flattened with dots."""
    rows = []
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        doc = f.metadata.get("doc", "")
        if dataclasses.is_dataclass(value) and not isinstance(value, type) and \
                not isinstance(value, LabelSettings):
            rows.append((prefix + f.name, None, doc))
            rows.extend(describe_options(value, prefix + f.name + "."))  # type: ignore[arg-type]
        else:
            rows.append((prefix + f.name, value, doc))
    return rows
