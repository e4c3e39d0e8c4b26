"""HTML reports with figures: one per participant and one for the group.

- :func:`bids_pcs.reports.subject.write_subject_report` writes
  ``OUTPUT_DIR/sub-<label>.html`` from the derivatives on disk (called by the
  participant level after inference, or on its own).
- :mod:`bids_pcs.reports.group_table` and :mod:`bids_pcs.reports.group_page`
  build ``group_pcs.tsv/json/html`` for :mod:`bids_pcs.levels.group`.
- :mod:`bids_pcs.reports.results` reads per-image results back from OUTPUT_DIR.
- :mod:`bids_pcs.reports.browser` checks a page in headless Chromium (tests, CI).

Submodules are imported where used, so importing this package stays cheap.
"""
