"""The study analysis level."""

from __future__ import annotations

from bids_pcs.config import Settings
from bids_pcs.errors import LevelNotAvailableError


def run(settings: Settings) -> None:
    """Not available yet in this version; exits with a clear message."""
    raise LevelNotAvailableError(
        "The study level is not available in this version of bids_pcs yet."
    )
