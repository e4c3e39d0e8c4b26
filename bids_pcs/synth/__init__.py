"""Synthetic labelled cohorts: the app's embedded default data (``bids_pcs-synth``).

Real T1w anatomy (MNI152NLin2009aSym from nilearn, Colin27 from Debian's
mricron-data) warped per participant, with a paracingulate sulcus of known
class and length carved into each hemisphere among unlabelled neighbouring
sulci, written as a raw BIDS dataset plus a label derivative
(``derivatives/pcs-labels``). Presets ``benchmark`` (default) and ``easy``
(:mod:`bids_pcs.synth.options`).

Modules: ``options`` (what varies, presets), ``anatomy`` (sources as tissue
levels), ``pcs_geometry`` (courses and carving of sulci), ``sulci``
(distractors), ``morphology`` (thickness, ventricles), ``deformation`` (shape,
pose, resampling), ``sites``, ``contrast`` (intensity, bias, noise),
``artefacts``, ``prevalence`` (cited class figures), ``population``
(demographics, classes), ``synthesis`` (one participant), ``bids_writer``,
``figures``, ``cohort`` (the API), ``command``.
"""

from bids_pcs.synth.cohort import CohortSummary, SynthError, draw_population, make_cohort
from bids_pcs.synth.options import PRESETS, SynthOptions

__all__ = ["PRESETS", "CohortSummary", "SynthError", "SynthOptions", "draw_population",
           "make_cohort"]
