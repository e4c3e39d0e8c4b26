"""What only a CUDA machine can check: device selection, bf16 autocast, data on the GPU, NCCL.

Skipped without CUDA (the CI machines have none); ``benchmarks/gpu_check.sh``
runs this file first on a GPU machine. The NCCL test needs two GPUs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from training_helpers import SWIN_SHAPE, TINY_OPTIONS, crop_set, tiny_swin

from bids_pcs.devices import resolve_device
from bids_pcs.errors import DeviceError
from bids_pcs.pretraining import get_objective
from bids_pcs.training.engine import Engine, TrainConfig

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_device_selection_prefers_the_gpu_and_refuses_a_missing_one():
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(DeviceError, match="does not exist"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def _fit(mixed_precision: bool, seen: list[torch.dtype]):
    network = tiny_swin(seed=3)
    objective = get_objective("reconstruction", TINY_OPTIONS["reconstruction"])
    objective.setup(network)
    first_linear = next(m for m in network.modules() if isinstance(m, torch.nn.Linear))
    hook = first_linear.register_forward_hook(lambda _m, _a, out: seen.append(out.dtype))
    config = TrainConfig(epochs=2, batch_size=2, learning_rate=1e-3, progress=False, seed=1,
                         mixed_precision=mixed_precision)
    engine = Engine(network, objective, config, device=torch.device("cuda"))
    result = engine.fit(crop_set(4, SWIN_SHAPE))
    hook.remove()
    return network, result


def test_bf16_autocast_trains_in_bf16_and_keeps_float32_weights_on_the_gpu():
    seen_bf16: list[torch.dtype] = []
    seen_fp32: list[torch.dtype] = []
    net_bf16, bf16 = _fit(True, seen_bf16)
    net_fp32, fp32 = _fit(False, seen_fp32)
    assert set(seen_bf16) == {torch.bfloat16} and set(seen_fp32) == {torch.float32}
    for network in (net_bf16, net_fp32):
        assert {p.device.type for p in network.parameters()} == {"cuda"}
        assert {p.dtype for p in network.parameters()} == {torch.float32}
    loss_bf16 = [row["loss"] for row in bf16.history]
    loss_fp32 = [row["loss"] for row in fp32.history]
    assert np.all(np.isfinite(loss_bf16)) and np.all(np.isfinite(loss_fp32))
    # same data, same draws: bf16 rounding moves the first loss by a few percent at most
    assert loss_bf16[0] == pytest.approx(loss_fp32[0], rel=0.05)
    assert bf16.peak_memory_mb > 0  # torch.cuda.max_memory_allocated, not the host's RSS


def test_crops_live_on_the_gpu_and_inference_matches_the_cpu():
    from bids_pcs.inference.predict import predict_hemispheres

    crops = crop_set(4, SWIN_SHAPE)
    on_gpu = crops.to(torch.device("cuda"))
    assert on_gpu.images.device.type == "cuda" and crops.images.device.type == "cpu"
    network = tiny_swin(seed=5).eval()
    arrays = {h: crops.images[i, 0].numpy() for i, h in enumerate("LR")}
    cpu = predict_hemispheres(network, arrays, device=torch.device("cpu"))
    gpu = predict_hemispheres(network.cuda(), arrays, device=torch.device("cuda"))
    bf16 = predict_hemispheres(network, arrays, device=torch.device("cuda"),
                               mixed_precision=True)
    for h in "LR":
        assert gpu[h].pcs_probability.dtype == np.float32
        # TF32 convolutions on the GPU round differently from the CPU
        assert np.abs(gpu[h].pcs_probability - cpu[h].pcs_probability).max() < 1e-2
        assert np.abs(bf16[h].pcs_probability - cpu[h].pcs_probability).max() < 5e-2
        assert bf16[h].pcs_probability.dtype == np.float32


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two GPUs")
def test_two_nccl_processes_end_with_identical_weights(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(WORKER.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(WORKER), str(tmp_path), "identical", "cuda"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    for method in ("reconstruction", "adversarial", "contrastive"):
        first = load_file(tmp_path / f"rank0-{method}.safetensors")
        second = load_file(tmp_path / f"rank1-{method}.safetensors")
        for key in first:
            assert torch.equal(first[key], second[key]), f"{method}: {key}"
