"""Per-image inference time and peak memory: both hemispheres through the network.

What is timed is what ``participant --model`` does per image on the network:
:func:`bids_pcs.inference.predict.predict_hemispheres` on the two crops as one
batch of two (inference mode, softmax probabilities), after one warm-up call.
The mapping to the native grid and the writing are not included (ANTs
resampling, about a second per image; see ``bench_preprocess.py`` for
ANTs costs). Each configuration runs in a fresh Python process, so the peak
resident memory (CPU) is that configuration's alone; on CUDA the peak of
allocated GPU memory is reported as well.

Defaults: the paper's network (SwinUNETR, feature size 24, crop 32x96x64 at
1 mm), with and without flip TTA, on the CPU with ``--threads`` threads, and
on CUDA when available; the demo's CNN for comparison.

Usage::

    python benchmarks/bench_inference.py [--threads 2] [--repeats 5] [--device cpu|cuda|all]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CONFIGS = (
    # name, recipe, flip TTA
    ("swinunetr-fs24-32x96x64", "default", False),
    ("swinunetr-fs24-32x96x64+tta", "default", True),
    ("cnn-fs8-16x48x32 (demo)", "demo", False),
)


def run_one(recipe: str, flip_tta: bool, device_name: str, threads: int, repeats: int) -> dict:
    """Time ``predict_hemispheres`` in this process; return seconds and peak memory."""
    import numpy as np
    import torch

    from bids_pcs.config import load_settings
    from bids_pcs.inference.predict import predict_hemispheres
    from bids_pcs.models.network import build_network

    torch.set_num_threads(threads)
    settings = load_settings(recipe)
    device = torch.device(device_name)
    torch.manual_seed(0)
    network = build_network(settings.model, settings.crop.shape_vox,
                            settings.labels.classes).to(device).eval()
    rng = np.random.default_rng(0)
    crops = {h: rng.random(settings.crop.shape_vox, dtype=np.float32) for h in ("L", "R")}
    base_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    predict_hemispheres(network, crops, device=device, flip_tta=flip_tta)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        predict_hemispheres(network, crops, device=device, flip_tta=flip_tta)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    out = {
        "seconds_median": float(np.median(times)),
        "seconds_max": float(np.max(times)),
        # CPU seconds per image: with T threads and free cores about T x wall time;
        # much less means other processes held the cores (shared machines)
        "cpu_seconds_median": float(np.median(cpu_times)),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_mb": base_rss_mb,
        "parameters": sum(p.numel() for p in network.parameters()),
        "crop_shape": list(settings.crop.shape_vox),
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--child", nargs=3, metavar=("RECIPE", "TTA", "DEVICE"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        recipe, tta, device = args.child
        print(json.dumps(run_one(recipe, tta == "1", device, args.threads, args.repeats)))
        return

    import torch

    devices = ["cpu"] if args.device == "cpu" else ["cuda"] if args.device == "cuda" else (
        ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"bids_pcs inference benchmark: {args.threads} CPU thread(s), torch "
          f"{torch.__version__}, {args.repeats} repeats after a warm-up; per image = both "
          "hemispheres as one batch of two")
    print(f"{'configuration':32s} {'device':6s} {'s/image':>8s} {'max s':>7s} "
          f"{'CPU s':>6s} {'peak RSS MB':>12s} {'peak GPU MB':>12s}")
    for device in devices:
        for name, recipe, tta in CONFIGS:
            proc = subprocess.run(
                [sys.executable, __file__, "--threads", str(args.threads), "--repeats",
                 str(args.repeats), "--child", recipe, "1" if tta else "0", device],
                capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(f"{name:32s} {device:6s} failed: {proc.stderr.strip().splitlines()[-1:]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            gpu = f"{r['peak_gpu_mb']:12.0f}" if "peak_gpu_mb" in r else f"{'-':>12s}"
            print(f"{name:32s} {device:6s} {r['seconds_median']:8.2f} {r['seconds_max']:7.2f} "
                  f"{r['cpu_seconds_median']:6.1f} {r['peak_rss_mb']:12.0f} {gpu}")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"Load average after the run: {load}. Targets (issue 6, two CPU cores): "
          "<= 5 s and <= 3 GB per image.")


if __name__ == "__main__":
    main()
