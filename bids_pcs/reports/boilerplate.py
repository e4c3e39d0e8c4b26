"""The methods boilerplate: a paragraph per step with its references, to paste into a paper.

As fMRIPrep does, each step's text (:mod:`bids_pcs.workflows.descriptions`)
cites tools by key (``[@ants]``); here the paragraphs are joined, each key
becomes an author-year citation, and the references cited are listed in order.
The same text goes into ``logs/CITATION.md``, the subject reports and the group
page. It is rebuilt from what the derivatives record (the registration QC's
``Settings``, the PCS sidecars' ``Model``), so a report written later, or
from outputs alone, still says what was done.

Usage::

    paragraphs = methods_from_results(collect_results(output_dir), output_dir)
    write_citation(output_dir, paragraphs)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bids_pcs.config import PCS_CLASSES
from bids_pcs.io.atomic import write_text

CITATION_FILE = "CITATION.md"
_KEY = re.compile(r"\[@([A-Za-z0-9_]+)\]")
# keys cited side by side, "[@a] [@b]": one parenthesis, "(A; B)"
_KEYS = re.compile(r"\[@[A-Za-z0-9_]+\](?:\s*\[@[A-Za-z0-9_]+\])*")

# key -> (in-text citation, full reference)
REFERENCES: dict[str, tuple[str, str]] = {
    "mamalakis2024": ("Mamalakis et al., 2024",
                      "Mamalakis M., et al. Contrastive-Adversarial and Diffusion: Exploring "
                      "pre-training and fine-tuning strategies for sulcal identification. "
                      "arXiv:2405.19204 (2024)."),
    "ants": ("Avants et al., 2011",
             "Avants B. B., Tustison N. J., Song G., Cook P. A., Klein A., Gee J. C. A "
             "reproducible evaluation of ANTs similarity metric performance in brain image "
             "registration. NeuroImage 54(3):2033-2044 (2011)."),
    "syn": ("Avants et al., 2008",
            "Avants B. B., Epstein C. L., Grossman M., Gee J. C. Symmetric diffeomorphic "
            "image registration with cross-correlation: evaluating automated labeling of "
            "elderly and neurodegenerative brain. Medical Image Analysis 12(1):26-41 (2008)."),
    "n4": ("Tustison et al., 2010",
           "Tustison N. J., Avants B. B., Cook P. A., Zheng Y., Egan A., Yushkevich P. A., "
           "Gee J. C. N4ITK: improved N3 bias correction. IEEE Transactions on Medical "
           "Imaging 29(6):1310-1320 (2010)."),
    "mni2009": ("Fonov et al., 2011",
                "Fonov V., Evans A. C., Botteron K., Almli C. R., McKinstry R. C., Collins "
                "D. L. Unbiased average age-appropriate atlases for pediatric studies. "
                "NeuroImage 54(1):313-327 (2011)."),
    "nilearn": ("Abraham et al., 2014",
                "Abraham A., Pedregosa F., Eickenberg M., et al. Machine learning for "
                "neuroimaging with scikit-learn. Frontiers in Neuroinformatics 8:14 (2014)."),
    "nipype": ("Gorgolewski et al., 2011",
               "Gorgolewski K., Burns C. D., Madison C., et al. Nipype: a flexible, "
               "lightweight and extensible neuroimaging data processing framework in "
               "Python. Frontiers in Neuroinformatics 5:13 (2011)."),
    "monai": ("Cardoso et al., 2022",
              "Cardoso M. J., Li W., Brown R., et al. MONAI: An open-source framework for "
              "deep learning in healthcare. arXiv:2211.02701 (2022)."),
    "swinunetr": ("Hatamizadeh et al., 2022",
                  "Hatamizadeh A., Nath V., Tang Y., Yang D., Roth H. R., Xu D. Swin UNETR: "
                  "Swin Transformers for semantic segmentation of brain tumors in MRI "
                  "images. BrainLes 2021, Lecture Notes in Computer Science 12962 (2022)."),
    "simclr": ("Chen et al., 2020",
               "Chen T., Kornblith S., Norouzi M., Hinton G. A simple framework for "
               "contrastive learning of visual representations. ICML (2020)."),
    "ddpm": ("Ho et al., 2020",
             "Ho J., Jain A., Abbeel P. Denoising diffusion probabilistic models. NeurIPS "
             "(2020)."),
    "lora": ("Hu et al., 2022",
             "Hu E. J., Shen Y., Wallis P., et al. LoRA: Low-rank adaptation of large "
             "language models. ICLR (2022)."),
    "yucel2001": ("Yücel et al., 2001",
                  "Yücel M., Stuart G. W., Maruff P., et al. Hemispheric and gender-related "
                  "differences in the gross morphology of the anterior cingulate/"
                  "paracingulate cortex in normal volunteers: an MRI morphometric study. "
                  "Cerebral Cortex 11(1):17-25 (2001)."),
}


def render(paragraphs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Paragraphs with author-year citations, and the references they cite, in order."""
    cited: list[str] = []

    def cite(match: re.Match[str]) -> str:
        keys = _KEY.findall(match[0])
        for key in keys:
            if key not in REFERENCES:
                raise KeyError(f"no reference for [@{key}]")
            if key not in cited:
                cited.append(key)
        return "(" + "; ".join(REFERENCES[key][0] for key in keys) + ")"

    texts = [_KEYS.sub(cite, paragraph) for paragraph in paragraphs]
    return texts, [REFERENCES[key][1] for key in cited]


def methods_markdown(paragraphs: Sequence[str]) -> str:
    """The boilerplate as Markdown: a title, the paragraphs, the numbered references."""
    texts, references = render(paragraphs)
    lines = ["# Methods (bids_pcs boilerplate)", "",
             "Generated by bids_pcs from the settings of this run, to copy into the methods "
             "section of a paper (edit as you see fit).", ""]
    for text in texts:
        lines += [text, ""]
    lines += ["## References", ""]
    lines += [f"{n}. {reference}" for n, reference in enumerate(references, start=1)]
    return "\n".join(lines) + "\n"


def write_citation(output_dir: Path, paragraphs: Sequence[str]) -> Path | None:
    """Write ``OUTPUT_DIR/logs/CITATION.md`` (nothing when there is nothing to say)."""
    if not paragraphs:
        return None
    return write_text(Path(output_dir) / "logs" / CITATION_FILE, methods_markdown(paragraphs))


def methods_from_results(results: Sequence[Any], output_dir: Path) -> list[str]:
    """The paragraphs that describe how ``results`` (``ImageResults``) were made.

    Images made with different settings or models get one paragraph per
    variant, each saying how many images it covers.
    """
    from bids_pcs.workflows.descriptions import inference_description, preprocessing_description

    preprocessing: Counter[str] = Counter()
    inference: Counter[str] = Counter()
    cards: dict[str, dict[str, Any] | None] = {}
    for result in results:
        settings = _preprocessing_settings(result)
        if settings is not None:
            preprocessing[preprocessing_description(settings)] += 1
        model = result.model if result.has_pcs else {}
        if model:
            name = str(model.get("name"))
            if name not in cards:
                cards[name] = _read_json(Path(output_dir) / "models" / name / "model.json")
            thresholds = result.pcs_metadata.get("Thresholds") or {}
            inference[inference_description(
                model, card=cards[name],
                threshold=result.pcs_metadata.get("ProbabilityThreshold"),
                length_thresholds_mm=(float(thresholds.get("present_min_mm", 20.0)),
                                      float(thresholds.get("prominent_min_mm", 40.0))),
                flip_tta=bool(result.pcs_metadata.get("FlipTTA")),
                class_rule=result.pcs_metadata.get("ClassRule"),
                classes=tuple(result.pcs_metadata.get("Classes") or PCS_CLASSES),
                segmentation_trained=result.pcs_metadata.get("SegmentationTrained")
                is not False)] += 1
    return _variants(preprocessing, len(results)) + _variants(inference, len(results))


def methods_from_settings(settings: Any, model: dict[str, Any] | None = None,
                          card: dict[str, Any] | None = None) -> list[str]:
    """The paragraphs of a run from its settings (and model), before any output is read."""
    from bids_pcs.inference.calls import class_rule, segmentation_trained
    from bids_pcs.workflows.descriptions import inference_description, preprocessing_description

    paragraphs = [preprocessing_description(settings)]
    if model:
        paragraphs.append(inference_description(
            model, card=card, threshold=settings.inference.threshold,
            length_thresholds_mm=(settings.labels.present_min_mm,
                                  settings.labels.prominent_min_mm),
            flip_tta=settings.inference.flip_tta,
            class_rule=class_rule(settings.inference.class_rule, card or {}),
            classes=tuple(settings.labels.classes),
            segmentation_trained=segmentation_trained(card or {})))
    return paragraphs


def _variants(texts: Counter[str], n_images: int) -> list[str]:
    if len(texts) <= 1:
        return list(texts)
    return [f"({count} of {n_images} images) {text}" for text, count in texts.most_common()]


def _preprocessing_settings(result: Any):  # noqa: ANN202 - Settings or None
    from bids_pcs.config import Settings, merge
    from bids_pcs.errors import BidsPcsError

    recorded = result.qc_record.get("Settings")
    if not isinstance(recorded, dict):
        return None
    try:
        return merge(Settings(), recorded)
    except BidsPcsError:  # made by a version with other settings: say nothing wrong
        return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def methods_html(paragraphs: Sequence[str]):  # noqa: ANN201 - reports.html.Html
    """The boilerplate as report HTML: the paragraphs, then the numbered references."""
    from bids_pcs.reports import html as h

    if not paragraphs:
        return h.notice("No preprocessing record found: nothing to describe yet.")
    texts, references = render(paragraphs)
    items = "".join(f"<li>{h.esc(reference)}</li>" for reference in references)
    return h.join([
        h.paragraph("To copy into the methods section of a paper (also written to "
                    f"logs/{CITATION_FILE} by every run):", "muted"),
        *(h.paragraph(text) for text in texts),
        h.heading("References"),
        h.Html(f'<ol class="references">{items}</ol>'),
    ])
