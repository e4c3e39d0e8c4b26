"""Imports flow one way: lower layers (io, morphometry, spatial) never import the layers above."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

_ABOVE = {"inference", "reports", "levels", "training", "finetuning", "pretraining", "study",
          "preprocess", "workflows", "interfaces", "cli", "demo"}


def _imported(module: str) -> set[str]:
    """The ``bids_pcs`` modules that importing ``module`` in a fresh interpreter loads."""
    code = (f"import json, sys, {module}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('bids_pcs'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=120)
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("module", ["bids_pcs.io.labels", "bids_pcs.io.derivatives",
                                    "bids_pcs.io.nifti", "bids_pcs.morphometry",
                                    "bids_pcs.splits", "bids_pcs.config",
                                    "bids_pcs.models.card", "bids_pcs.models.recipe"])
def test_the_label_reader_and_derivative_paths_import_nothing_from_above(module):
    loaded = _imported(module)
    assert module in loaded
    above = {m for m in loaded if m.split(".")[1:2] and m.split(".")[1] in _ABOVE}
    assert not above, f"{module} imports {sorted(above)}"


def test_training_data_reads_crops_without_importing_inference():
    """Fine-tuning and inference both read crops (io.nifti.load_crop); neither imports the other."""
    loaded = _imported("bids_pcs.finetuning.data")
    assert not {m for m in loaded if m.startswith("bids_pcs.inference")}
