"""Two-process DDP training (torchrun, gloo): identical (queues too), equivalent, fails fast."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ddp_worker import EQUIVALENCE, train_equivalent
from safetensors.torch import load_file
from training_helpers import tiny_cnn

from bids_pcs.training.checkpoint import load_checkpoint

WORKER = Path(__file__).with_name("ddp_worker.py")
# float32 sums in another order (gloo's all-reduce of two gradients vs. autograd
# accumulating them): about 1e-7 relative per step; through a few AdamW steps of
# lr 1e-3 the weights may differ by a few 1e-6 in absolute terms. A change of the
# data or of the random draws moves them by the order of the learning rate.
WEIGHT_TOLERANCE = 1e-5
LOSS_TOLERANCE = 1e-5


def torchrun(out: Path, mode: str, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(WORKER), str(out), mode]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


@pytest.mark.slow
def test_two_gloo_processes_end_with_identical_weights(tmp_path):
    done = torchrun(tmp_path, "identical", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("reconstruction", "adversarial", "contrastive"):
        first = load_file(tmp_path / f"rank0-{method}.safetensors")
        second = load_file(tmp_path / f"rank1-{method}.safetensors")
        assert first.keys() == second.keys()
        for key in first:
            assert torch.equal(first[key], second[key]), f"{method}: {key}"
        if method == "contrastive":
            # each process holds half the crops; the queue holds the keys of both
            assert set(first["objective.queue_index"].tolist()) == set(range(8))
        # only the first process writes checkpoints, after the last epoch
        assert load_checkpoint(tmp_path / f"ckpt-{method}").state["world_size"] == 2


@pytest.mark.slow
def test_two_processes_compute_what_one_process_accumulating_two_batches_computes(tmp_path):
    done = torchrun(tmp_path, "equivalent", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ddp = load_file(tmp_path / "equivalent-rank0.safetensors")
    torch.set_num_threads(1)
    # same global batch (2 processes x 2 crops = 2 micro-batches x 2 crops), same draws
    network, result = train_equivalent(accumulate_steps=2)
    single = network.state_dict()
    start = tiny_cnn(seed=4).state_dict()
    moved = max(float((single[k] - start[k]).abs().max()) for k in single
                if single[k].is_floating_point())
    assert moved > 3 * EQUIVALENCE["learning_rate"]  # six AdamW steps moved the weights
    worst = max(float((ddp[k] - v).abs().max()) for k, v in single.items()
                if v.is_floating_point())
    print(f"DDP vs single process: largest weight difference {worst:.2e}, "
          f"largest weight change {moved:.2e}")
    for key, value in single.items():
        assert torch.allclose(ddp[key], value, rtol=0, atol=WEIGHT_TOLERANCE), (
            key, float((ddp[key] - value).abs().max()))
    losses = torch.tensor([row["loss"] for row in result.history])
    assert torch.allclose(ddp["loss"], losses.to(ddp["loss"].dtype), rtol=0,
                          atol=LOSS_TOLERANCE)


@pytest.mark.slow
def test_a_failing_process_ends_every_process_at_once_with_its_error(tmp_path):
    started = time.monotonic()
    done = torchrun(tmp_path, "fail", timeout=120)
    seconds = time.monotonic() - started
    assert done.returncode != 0
    # the failure, not a barrier waiting for the process group's timeout, ends the run
    assert seconds < 60, f"the run took {seconds:.0f} s to end"
    assert "RankFailureError: rank 1 gave up in its fourth step" in done.stderr
    summary = done.stderr[done.stderr.find("Root Cause"):]
    assert "rank      : 1" in summary or "rank: 1" in summary, summary[:2000]
    assert not (tmp_path / "rank0-reconstruction.safetensors").exists()
