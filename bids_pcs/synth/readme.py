"""The README a synthetic cohort carries: how it was made, with every parameter."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bids_pcs.synth import prevalence as cited
from bids_pcs.synth.population import EASY_PREVALENCE


def cohort_readme(*, n: int, seed: int, sources: Sequence[str], options: Any,
                  generator: str, version: str) -> str:
    """Markdown text of BIDS_DIR/README for a cohort made with ``options``."""
    from bids_pcs.synth.options import closest_preset, describe_options

    preset, changed = closest_preset(options)
    command = f"`{generator} --preset {preset} --seed {seed}`"
    if changed:
        command += f" with {', '.join(f'`{c}`' for c in changed)} changed (see Parameters)"
    parts = [f"""# Synthetic paracingulate sulcus cohort

{n} synthetic participants made by {command} (bids_pcs {version}).
Each T1w image is real anatomy ({", ".join(sources)}) warped by a random smooth
deformation and placed in the scanner with a random pose, with a site's tissue
contrast and voxel size, a bias field, Rician noise and a random orientation;
some images are skull-stripped. A paracingulate sulcus (PCS) of known course
and length is carved into each hemisphere (or not, when absent).

These are not real participants. The data are for testing, demonstrating and
benchmarking bids_pcs only.

## Ground truth

`derivatives/pcs-labels` holds per image a `space-T1w_desc-pcs_dseg` label on
the image grid (1 left PCS, 2 right PCS: exactly the carved PCS voxels) whose
JSON sidecar records the truth (lengths and segments, site, artefacts, pose,
source, which distractor sulci were carved), and the classes `pcs_left` /
`pcs_right` (absent < {options.labels.present_min_mm:g} mm <= present <=
{options.labels.prominent_min_mm:g} mm < prominent) in `participants.tsv` here
and there. `participants.tsv` also has `site` and `anatomy_source`, columns a
study can hold out (`[study] test_on = "site=B"`).
""", _sulcus_section(options), _base_sulci_section(options),
             _distractor_section(options), _prevalence_section(options),
             _variety_section(options)]
    rows = ["## Parameters", "",
            "Every option of `SynthOptions` (`--set NAME=VALUE` on the command line).", "",
            "| parameter | value | meaning |", "|---|---|---|"]
    for name, value, doc in describe_options(options):
        shown = "" if value is None else f"`{_value(value)}`"
        rows.append(f"| `{name}` | {shown} | {doc} |")
    parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def _sulcus_section(options: Any) -> str:
    pcs = options.pcs
    interrupted = 1.0 - pcs.segments[0]
    text = ["## The paracingulate sulcus", "",
            "The PCS is the sheet swept by a curve in the sagittal plane (a stretch of the "
            "middle of the Harvard-Oxford paracingulate band, offset and waved) from the "
            "midline laterally to its fundus. Carving lowers the tissue to CSF in the "
            f"sheet's core (half width {_range(pcs.half_width_mm)} mm) and to grey matter in "
            f"a bank of {_range(pcs.bank_mm)} mm on both walls and at the fundus, so where "
            "it cuts white matter the fold is CSF lined by cortex, as a real sulcus is. "
            f"The fundus reaches |x| = {_range(pcs.depth_mm)} mm and shallows to "
            f"{pcs.min_depth_mm:g} mm at the ends."]
    if pcs.variation > 0 or pcs.width_variation > 0:
        text.append(f"Depth and width change smoothly along the course (up to "
                    f"+-{100 * pcs.variation:.0f} % and +-{100 * pcs.width_variation:.0f} %), "
                    f"the CSF core narrows by {100 * pcs.end_narrowing:.0f} % towards the ends "
                    f"and closes by {100 * pcs.collapse:.0f} % towards the fundus (seen there by "
                    "partial volume only), and the sheet bends in coronal view.")
    if interrupted > 0:
        text.append(f"With probability {interrupted:.2f} the sulcus is interrupted by gyral "
                    f"bridges of {_range(pcs.bridge_mm)} mm into two (p {pcs.segments[1]:.2f}) "
                    f"or three (p {pcs.segments[2]:.2f}) segments; its length, and so its "
                    "class, is the sum of the segments' lengths (Garrison et al. 2015).")
    return text[0] + "\n\n" + " ".join(text[2:]) + "\n"


def _base_sulci_section(options: Any) -> str:
    rule = ("A sulcus is removed by a grey closing of each sagittal plane with a disc of 3 mm "
            "radius: a sulcus narrower than about 6 mm in that plane, its CSF and the grey "
            "banks on both walls, closes as if the two gyri had never been folded apart "
            "(white matter where they had white cores, grey matter where the plane cuts the "
            "cortex of the medial surface; the interhemispheric fissure, which fills whole "
            "sagittal planes, stays). ")
    if options.base_sulci == "medial_wall":
        where = ("This is done within 8 mm of the PCS arc and within 4.5 mm of the cingulate "
                 "sulcus' arc (|x| up to 18 mm, fading out over the last 1.5 mm of each tube "
                 "and 3 mm in x), never raising anything above grey matter within 4 mm of "
                 "the midline (so the fissure stays lined with cortex), before anything is "
                 "carved; the cingulate sulcus is then carved anew for each participant.")
    else:
        where = "This is done within 4 mm of the PCS arc before the PCS is carved."
    return ("## The base brains' own sulci\n\nThe base brains' sulci in the paracingulate "
            "region would be silent label noise (a PCS of Colin27 where the label says "
            f"absent), so they are **removed**, not labelled. {rule}{where} Sulci outside "
            "that region (the superior frontal gyrus' own dimples, for instance) stay as the "
            "base brain has them, unlabelled: they are not paracingulate sulci.\n")


def _distractor_section(options: Any) -> str:
    d = options.distractors
    items = []
    if d.cingulate:
        items.append("the cingulate sulcus, with a course, depth and width of its own and "
                     f"interruptions (p {1 - d.cingulate_shape.segments[0]:.2f})")
    if d.intralimbic_probability > 0:
        items.append(f"an intralimbic sulcus inside the cingulate gyrus (p "
                     f"{d.intralimbic_probability:.2f}, {_range(d.intralimbic_length_mm)} mm)")
    if d.superior_rostral_probability > 0:
        items.append(f"a superior rostral sulcus below the genu (p "
                     f"{d.superior_rostral_probability:.2f})")
    if d.dimples[1] > 0:
        items.append(f"{d.dimples[0]} to {d.dimples[1]} short dimples "
                     f"({_range(d.dimple_length_mm)} mm) of the medial superior frontal gyrus, "
                     "dorsal of the paracingulate band, in any orientation")
    short = (f"An absent hemisphere has, with probability {options.dimple_probability:.2f}, a "
             f"PCS-like sulcus of {_range(options.absent_sulcus_mm)} mm along the "
             "paracingulate band; the protocol calls it absent, and it is "
             + ("labelled (as in earlier versions)." if options.label_absent_sulci
                else "**not** labelled (no PCS is traced in an absent hemisphere)."))
    if not items:
        return f"## Neighbouring sulci\n\nNo distractor sulci are carved. {short}\n"
    listed = "; ".join(items)
    return ("## Neighbouring sulci (distractors)\n\nCarved with the same fold model but "
            "never labelled, their CSF at least a grey bank away from the PCS's and from "
            f"each other's: {listed}. {short} "
            "`code/pcs_distractors.png` shows them beside the PCS label.\n")


def _prevalence_section(options: Any) -> str:
    p = options.prevalence
    table = "\n".join(f"| {hemi} | " + " | ".join(f"{100 * v:.1f} %" for v in p[hemi]) + " |"
                      for hemi in ("L", "R"))
    text = ["## Prevalence", "", "| hemisphere | absent | present | prominent |",
            "|---|---|---|---|", table, ""]
    if dict(p) == cited.CITED_PREVALENCE:
        left, right = cited.CITED_COUNTS["L"], cited.CITED_COUNTS["R"]
        text.append(
            f"Source: {cited.CITED_SOURCE}: left prominent {left[2]}, left absent {left[0]} "
            f"(so present {left[1]}), right absent {right[0]} of {cited.CITED_N}. "
            f"**Assumption, not a cited figure:** the right hemisphere's "
            f"{right[1] + right[2]} sulci are split into {right[1]} present and {right[2]} "
            "prominent (the right's excess of absent sulci taken from the prominent class), "
            "because the consistent finding is a leftward asymmetry of prominent sulci "
            "(Paus et al. 1996, Cereb Cortex; Yuecel et al. 2001; Le Provost et al. 2003; "
            "Fornito et al. 2004).")
    elif dict(p) == EASY_PREVALENCE:
        text.append("Round numbers in the range reported for healthy adults (the easy "
                    "preset's; not a cited set of figures).")
    else:
        text.append("These figures were set for this cohort (not the cited defaults).")
    if options.concordance is not None:
        both = options.concordance
        cited_both = tuple(options.concordance) == cited.CITED_CONCORDANCE
        text.append(
            f"The hemispheres of one brain are correlated: P(both absent) {100 * both[0]:.1f} %, "
            f"P(both present) {100 * both[1]:.1f} %, P(both prominent) {100 * both[2]:.1f} %"
            + (f" (cited: {', '.join(str(c) for c in cited.CITED_BOTH_COUNTS)} of "
               f"{cited.CITED_N})" if cited_both else "")
            + "; the other joint cells are fitted to the per-hemisphere figures by iterative "
              "proportional fitting.")
    else:
        text.append("The two hemispheres' classes are drawn independently.")
    return "\n".join(text) + "\n"


def _variety_section(options: Any) -> str:
    sites = "\n".join(f"| {s.name} | {s.describe()} | {s.weight:g} |" for s in options.sites)
    a = options.artefacts
    return f"""## Sites, anatomy and artefacts

| site | acquisition | weight |
|---|---|---|
{sites}

Smooth deformation: control points {options.deformation_spacing_mm:g} mm apart, spread
{options.deformation_mm:g} mm. Cortical thickness changes by
{_range(options.cortical_thickness_mm)} mm per participant; the lateral ventricles grow
with age by up to {options.ventricle_enlargement_mm:g} mm at 65. Per image: ringing (p
{a.ringing_probability:g}), motion ghosts (p {a.ghosting_probability:g}), strong
inhomogeneity (p {a.strong_bias_probability:g}), defacing of images with skull (p
{a.deface_probability:g}); skull-stripped images: {options.stripped_fraction:g}.
"""


def _range(pair: Sequence[float]) -> str:
    low, high = pair
    if low == high:
        return f"{low:g}"
    return f"{low:g} to {high:g}" if low < 0 else f"{low:g}-{high:g}"


def _value(value: Any) -> str:
    if isinstance(value, tuple) and value and hasattr(value[0], "name"):
        return ", ".join(f"{s.name}: {s.contrast} {s.voxel_mm or 'drawn'} w{s.weight:g}"
                         for s in value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items())
    if isinstance(value, tuple):
        return "(" + ", ".join(_value(v) for v in value) + ")"
    return str(value)
