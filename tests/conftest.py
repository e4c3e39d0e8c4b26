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


@pytest.fixture
def two_torch_threads():
    """Torch on two threads for the test (the machines' cores), restored after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)


def run_cli(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``bids_pcs`` in a fresh interpreter, as a user would."""
    cmd = [sys.executable, "-m", "bids_pcs.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


# ------------------------------------------------ reliability: bad inputs tried
# Every test that feeds the app a bad input (a broken image, a hostile model file,
# a kill signal...) says so, with the ``bad_input`` marker or fixture; the
# terminal summary then reports how many were tried (issue 10, docs/reliability.md).
_BAD_INPUTS: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "bad_input(*names): the test tries these bad inputs (counted in the summary)")


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers("bad_input"):
        _BAD_INPUTS.extend(str(name) for name in marker.args)


@pytest.fixture
def bad_input():
    """Call with the names of the bad inputs a test tries: ``bad_input("image:empty")``."""
    return lambda *names: _BAD_INPUTS.extend(names)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _BAD_INPUTS:
        terminalreporter.write_line(
            f"reliability: {len(_BAD_INPUTS)} bad inputs tried "
            f"({len(set(_BAD_INPUTS))} distinct)")
