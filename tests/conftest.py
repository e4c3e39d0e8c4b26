"""Shared fixtures: paths to the data beside the repository, small helpers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` beside the repository (laid there for CI and sessions)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared test data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def bids_examples(shared_data: Path) -> Path:
    return shared_data / "bids-examples"


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``bids_pcs`` in a fresh interpreter, as a user would."""
    cmd = [sys.executable, "-m", "bids_pcs.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
