"""One small demo run per test session, shared by the demo and inference tests.

Registration is the expensive part of any test that touches real images, so
the demo's output (a synthetic cohort of four participants of the easy preset,
all preprocessed with the ``demo`` recipe, a pre-trained and a briefly fine-tuned model, one
held-out participant inferred, the group level) serves both test modules:
the demo tests check what it printed and wrote, the inference tests run
``participant --model`` on the other participants, whose crops already exist.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

RECIPE = "demo"
PARTICIPANTS = 4


@dataclass(frozen=True)
class DemoRun:
    """A finished small demo: where it wrote, what it printed, how long it took."""

    output_dir: Path
    stdout: str
    stderr: str
    returncode: int
    seconds: float

    @property
    def raw_dir(self) -> Path:
        return self.output_dir / "sourcedata" / "synthetic"

    @property
    def model_dir(self) -> Path:
        return self.output_dir / "models" / "finetune-reconstruction-full"

    @property
    def results(self) -> dict:
        (path,) = (self.output_dir / "logs").glob("demo_*_results.json")
        return json.loads(path.read_text())

    @property
    def trained(self) -> list[str]:
        """Participants the demo trained on (no PCS derivatives of theirs yet)."""
        return list(self.results["train"])


_RUNS: dict[str, DemoRun] = {}


def demo_run(tmp_path_factory) -> DemoRun:
    """Run ``bids_pcs-demo`` once per session (4 participants, 2 short epochs each)."""
    if "small" not in _RUNS:
        root = tmp_path_factory.mktemp("demo")
        script = Path(sys.executable).with_name("bids_pcs-demo")
        command = [str(script)] if script.is_file() else [sys.executable, "-m", "bids_pcs.demo"]
        start = time.monotonic()
        done = subprocess.run(
            [*command, str(root / "out"), "--participants", str(PARTICIPANTS),
             "--set", "pretrain.epochs=1", "--set", "finetune.epochs=3",
             # the easy cohort: the inference tests rely on its plainly carved sulci
             "--set", "synth.preset=easy",
             "--nprocs", "2", "--omp-nthreads", "2", "--device", "cpu",
             "-w", str(root / "work")],
            capture_output=True, text=True, timeout=600, check=False)
        _RUNS["small"] = DemoRun(root / "out", done.stdout, done.stderr, done.returncode,
                                 time.monotonic() - start)
    return _RUNS["small"]


def copy_outputs(run: DemoRun, destination: Path) -> Path:
    """A private copy of the demo's OUTPUT_DIR (tests that overwrite derivatives use it)."""
    shutil.copytree(run.output_dir, destination, symlinks=True)
    return destination
