"""Synthetic labelled cohorts: the app's embedded default data (``bids_pcs-synth``).

Real T1w anatomy (MNI152NLin2009aSym from nilearn, Colin27 from Debian's
mricron-data) warped per participant, with a paracingulate sulcus of known
class and length carved into each hemisphere, written as a raw BIDS dataset
plus a label derivative (``derivatives/pcs-labels``).

Modules: ``anatomy`` (sources as tissue levels), ``pcs_geometry`` (course and
carving), ``deformation`` (shape, pose, resampling), ``contrast`` (intensity,
bias, noise), ``population`` (demographics, classes), ``synthesis`` (one
participant), ``bids_writer``, ``figures``, ``cohort`` (the API), ``command``.
"""

from bids_pcs.synth.cohort import CohortSummary, SynthError, SynthOptions, make_cohort

__all__ = ["CohortSummary", "SynthError", "SynthOptions", "make_cohort"]
