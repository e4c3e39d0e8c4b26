"""The study: every initialisation (scratch or a pre-training method) x fine-tuning strategy.

The ``study`` level (:mod:`bids_pcs.levels.study`) runs the experiment of the
source paper (arXiv 2405.19204) from these small parts:

- :mod:`bids_pcs.splits` (shared with fine-tuning and the demo): seeded,
  stratified participant-level train/validation/test split or k folds;
- :mod:`~bids_pcs.study.plan`: the grid, job names and the keys that decide
  whether a finished job can be reused;
- :mod:`~bids_pcs.study.crops`: the labelled crops built once and shared with
  every job through one file;
- :mod:`~bids_pcs.study.runner`: the jobs in turn, finished ones skipped;
- :mod:`~bids_pcs.study.jobs` and :mod:`~bids_pcs.study.worker`: each
  pre-training and configuration in its own process, with its time and peak
  memory (:mod:`bids_pcs.training.memory`);
- :mod:`~bids_pcs.study.records`: one result file per job, written atomically;
- :mod:`~bids_pcs.study.native`: test predictions mapped to the native T1w
  grid and scored against the native labels, as a user receives them;
- :mod:`~bids_pcs.study.scoring` and :mod:`~bids_pcs.study.table`: test
  scores with their counts and participant-bootstrap intervals, one row per
  method x strategy x label fraction (folds and training seeds pooled), and
  paired differences against scratch and against full fine-tuning;
- :mod:`~bids_pcs.study.figures`, :mod:`~bids_pcs.study.reading`,
  :mod:`~bids_pcs.study.page` and :mod:`~bids_pcs.study.outputs`: figures, a
  reading of the results written from the numbers, the HTML page and files.

Imports stay light here: a job's process imports only what it needs.
"""
