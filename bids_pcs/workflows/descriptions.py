"""Methods text of each processing step, in the words of a paper's methods section.

fMRIPrep's way: every workflow carries a short paragraph (``__desc__``) that
says what it did with the settings it ran with, citing tools by key
(``[@ants]``); :mod:`bids_pcs.reports.boilerplate` assembles the paragraphs of
a run into the boilerplate of ``logs/CITATION.md`` and the reports. The text
lives here, free of Nipype, so that reports can rebuild it from the settings
recorded in the derivatives.
"""

from __future__ import annotations

from typing import Any

from bids_pcs import CODE_URL
from bids_pcs.config import Settings
from bids_pcs.spatial.registration import INTERIOR_DEPTH_MM

_ARCHITECTURES = {"swinunetr": "a SwinUNETR [@swinunetr]", "cnn": "a compact residual 3D CNN"}
_METHODS = {
    "reconstruction": "masked-volume reconstruction (random 3D blocks hidden, the crop "
                      "restored under an L1 and SSIM loss)",
    "contrastive": "contrastive learning [@simclr] (two augmented views per crop, NT-Xent "
                   "loss)",
    "adversarial": "adversarial restoration (a corrupted crop restored against a patch "
                   "discriminator)",
    "diffusion": "denoising diffusion [@ddpm] (the network predicting the noise added to "
                 "a crop)",
}
_STRATEGIES = {
    "top": "with only its output heads trained",
    "decoder": "with its decoder and heads trained and its encoder frozen",
    "full": "with every parameter trained",
    "lora": "with low-rank adapters [@lora] on its encoder and its heads trained, the rest "
            "frozen (the adapters merged into the weights afterwards)",
}


def preprocessing_description(settings: Settings) -> str:
    """What the preprocessing workflow did (``init_pcs_preproc_wf``'s ``__desc__``)."""
    reg, crop = settings.registration, settings.crop
    size = " x ".join(f"{s:g}" for s in crop.size_mm)
    n4 = ("corrected for intensity non-uniformity with N4 [@n4], fitted on a 6 mm copy, "
          if reg.n4 else "")
    stages = f"an affine transform at {reg.coarse_mm:g} then {reg.fine_mm:g} mm"
    if reg.refine_on_region:
        stages += ", refined on the medial frontal region"
    if reg.deformable:
        stages += ", followed by a deformable SyN stage [@syn]"
    # the brain's interior looks the same in a brain extraction and in its whole head
    refined_where = (f" (for the refinement, only where the template brain lies more than "
                     f"{INTERIOR_DEPTH_MM:g} mm inside its outer surface)"
                     if reg.refine_on_region else "")
    mirror = (" The right crop was mirrored onto the left so one model serves both "
              "hemispheres." if crop.mirror_right else "")
    masking = {
        "auto": "an image found to be skull-stripped (almost no tissue outside a rough "
                "morphological brain mask) was registered as it was, any other was masked "
                "with that rough brain mask",
        "yes": "the images, skull-stripped, were registered as they were",
        "no": "the image was masked with a rough morphological brain mask",
    }[reg.skull_stripped]
    norm = (f"robust min-max (the {_ordinal(settings.intensity.lower_percentile)} to "
            f"{_ordinal(settings.intensity.upper_percentile)} percentile)"
            if settings.intensity.method == "percentile" else "z-scoring")
    return (
        f"Each T1-weighted image was reoriented to RAS, {n4}and registered to the "
        f"MNI152NLin2009aSym template, the 1 mm ICBM 2009a nonlinear symmetric average "
        f"[@mni2009] as shipped with nilearn [@nilearn], with ANTs [@ants] through antspyx "
        f"in a Nipype [@nipype] workflow: {masking}; a multi-start rigid search found the "
        f"initial alignment, then {stages}, using Mattes mutual information "
        f"inside the dilated template brain mask{refined_where}, with a fixed seed and one "
        f"thread so that a rerun gives the same transform. A {size} mm box per hemisphere "
        f"around the paracingulate region was resampled at {crop.voxel_mm:g} mm directly "
        f"from the native image through the composed transform (a single interpolation), "
        f"and its intensities normalised by {norm}.{mirror} Registration quality was "
        f"checked per image as the correlation between each crop and the template within "
        f"the box (threshold {reg.qc_min_correlation:g}); failing images were excluded "
        f"from further analysis."
    )


def inference_description(model: dict[str, Any], *, card: dict[str, Any] | None = None,
                          threshold: float | None = None,
                          length_thresholds_mm: tuple[float, float] = (20.0, 40.0),
                          flip_tta: bool = False, class_rule: str | None = None,
                          classes: tuple[str, ...] = ("absent", "present", "prominent"),
                          segmentation_trained: bool = True) -> str:
    """What inference did with ``model`` (the ``Model`` entry of the PCS sidecars).

    Args:
        model: name, stage, method, strategy, sha256, version of the model.
        card: its ``model.json`` when it can be read (adds the architecture).
        threshold: probability above which a voxel is PCS.
        length_thresholds_mm: the present / prominent length thresholds.
        flip_tta: whether left-right flipped predictions were averaged in.
        class_rule: ``"length"`` or ``"network"`` (:mod:`bids_pcs.inference.calls`);
            ``None`` for results written before the rule existed.
        classes: the class scheme (three classes, or absent / present).
        segmentation_trained: whether the model learnt segmentation from masks.
    """
    architecture = ((card or {}).get("architecture") or {}).get("architecture")
    network = _ARCHITECTURES.get(str(architecture), "a 3D network")
    method = model.get("method")
    start = ("trained from scratch" if method in (None, "scratch") else
             f"pre-trained without labels by {_METHODS.get(method, method)}")
    strategy = _STRATEGIES.get(str(model.get("strategy")), "")
    digest = str(model.get("sha256") or "")[:12]
    present, prominent = length_thresholds_mm
    tta = " averaged with the prediction of the left-right flipped crop," if flip_tta else ""
    cut = f" above {threshold:g}" if threshold is not None else ""
    version = f" {model['version']}" if model.get("version") else ""
    binary = tuple(classes) == ("absent", "present")
    task = ("binary presence classification (absent, present; prominent labels counted as "
            "present)" if binary else
            "three-class classification (absent, present, prominent)")
    protocol = (f"by length, a PCS is absent below {present:g} mm and present from "
                f"{present:g} mm [@yucel2001]" if binary else
                f"by length, a PCS is absent below {present:g} mm, present from {present:g} "
                f"to {prominent:g} mm and prominent above {prominent:g} mm [@yucel2001]")
    if not segmentation_trained:
        rule = ("the model was trained on class labels only, so the class reported is the "
                "classification head's and no length is reported")
    elif class_rule == "length":
        rule = ("the class reported is the class of the measured length, with the "
                "classification head's class and probabilities kept beside it and any "
                "disagreement between the two flagged for review")
    elif class_rule == "network":
        rule = ("the class reported is the classification head's, with the class of the "
                "measured length kept beside it and any disagreement flagged for review")
    else:
        rule = "the class reported is the network's prediction"
    return (
        f"The paracingulate sulcus (PCS) was segmented and classified per hemisphere with "
        f"bids_pcs{version} ({CODE_URL}), which implements the pre-training and "
        f"fine-tuning strategies compared for sulcal identification [@mamalakis2024], "
        f"using the model {model.get('name')} (weights SHA-256 {digest}...): "
        f"{network} built with MONAI [@monai], {start}, then fine-tuned on labelled crops "
        f"{strategy} for PCS segmentation and {task}. Each hemisphere's crop was "
        f"predicted,{tta} voxels with a PCS probability{cut} formed the mask, and masks "
        f"and probability maps were brought back to the native T1w grid through the "
        f"inverse of the registration. PCS length was measured along the skeleton of each "
        f"hemisphere's mask; {protocol}; {rule}."
    )


def _ordinal(value: float) -> str:
    number = f"{value:g}"
    if not number.isdigit():
        return f"{number}th"
    n = int(number)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
