"""Pre-training throughput and peak memory per method, at the paper's configuration.

Every method runs a few warm-up steps, then timed steps, on the one training
engine with random smooth crops held in memory (on the GPU when there is one),
each in a fresh process so that peak memory is per method.  On CUDA each method
runs in bf16 autocast and in fp32.

Usage::

    python benchmarks/bench_pretrain.py                      # auto device, all methods
    python benchmarks/bench_pretrain.py --device cpu --steps 2 --warmup 1
    python benchmarks/bench_pretrain.py --architecture cnn --json results.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

METHODS = ("reconstruction", "contrastive", "adversarial", "diffusion")


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--architecture", default="swinunetr", choices=("swinunetr", "cnn"))
    parser.add_argument("--feature-size", type=int, default=24)
    parser.add_argument("--crop", type=int, nargs=3, default=(32, 96, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--precision", nargs="+", default=None, choices=("bf16", "fp32"),
                        help="default: bf16 and fp32 on CUDA, fp32 on CPU")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process
    return parser.parse_args(argv)


def _measure(args: argparse.Namespace) -> dict:
    """Run one method in this process and return its figures."""
    import torch

    from bids_pcs.config import ModelSettings
    from bids_pcs.devices import resolve_device
    from bids_pcs.models.network import build_network
    from bids_pcs.pretraining import get_objective
    from bids_pcs.training.data import CropSet
    from bids_pcs.training.engine import Engine, TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    method, precision = args.one.split(":")
    torch.manual_seed(0)
    network = build_network(ModelSettings(architecture=args.architecture,
                                          feature_size=args.feature_size), args.crop)
    objective = get_objective(method)
    objective.setup(network)
    n_crops = args.batch_size * max(args.warmup, args.steps)
    crops = torch.rand((n_crops, 1, *args.crop))
    crops = torch.nn.functional.avg_pool3d(crops, 5, stride=1, padding=2)
    data = CropSet((crops - crops.min()) / (crops.max() - crops.min()))

    def run(steps: int):
        config = TrainConfig(epochs=1, batch_size=args.batch_size, steps_per_epoch=steps,
                             mixed_precision=precision == "bf16", progress=False)
        engine = Engine(network, objective, config, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        result = engine.fit(data)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return result, time.perf_counter() - started

    if args.warmup:
        run(args.warmup)
    result, seconds = run(args.steps)
    crops_done = args.steps * args.batch_size
    return {
        "method": method,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else f"cpu x{torch.get_num_threads()} threads"),
        "precision": precision,
        "architecture": args.architecture,
        "feature_size": args.feature_size,
        "crop": list(args.crop),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "seconds_per_step": seconds / args.steps,
        "crops_per_second": crops_done / seconds,
        "peak_memory_mb": result.peak_memory_mb,
        "parameters": result.total_parameters,
        "final_loss": result.history[-1]["loss"],
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.one:
        print("RESULT " + json.dumps(_measure(args)), flush=True)
        return 0
    import torch

    from bids_pcs.devices import resolve_device

    device = resolve_device(args.device)
    precisions = args.precision or (["bf16", "fp32"] if device.type == "cuda" else ["fp32"])
    rows = []
    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    for method in args.methods:
        for precision in precisions:
            command = [sys.executable, os.path.abspath(__file__), *base,
                       "--one", f"{method}:{precision}"]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                print(f"{method} {precision}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            row = json.loads(lines[-1][len("RESULT "):])
            rows.append(row)
            print(f"{row['method']:<15} {row['device']:<7} {row['precision']:<5} "
                  f"{row['crops_per_second']:8.3f} crops/s  {row['seconds_per_step']:8.3f} s/step  "
                  f"peak {row['peak_memory_mb']:9.1f} MB", flush=True)
    print(f"({args.architecture}, feature size {args.feature_size}, crop "
          f"{'x'.join(map(str, args.crop))}, batch {args.batch_size}, {rows[0]['device_name']}, "
          f"torch {torch.__version__}; CPU peak = process resident peak)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
