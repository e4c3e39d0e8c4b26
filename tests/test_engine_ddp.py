"""Two-process data-parallel training (torchrun, gloo) ends with identical weights."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from bids_pcs.training.checkpoint import load_checkpoint

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(WORKER), str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("reconstruction", "adversarial"):
        first = load_file(tmp_path / f"rank0-{method}.safetensors")
        second = load_file(tmp_path / f"rank1-{method}.safetensors")
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), f"{method}: {key}"
        # only the first process writes checkpoints, after the last epoch
        assert load_checkpoint(tmp_path / f"ckpt-{method}").state["world_size"] == 2
