"""Pre-training throughput, peak memory and step cost against a bare network step, per method.

Every method runs a few warm-up steps, then timed steps, on the one training
engine with random smooth crops held in memory (on the GPU when there is one),
each in a fresh process so that peak memory is per method.  On CUDA each method
runs in bf16 autocast and in fp32.

The *reference* is a bare forward + backward pass of the same backbone with an
L1 loss at the same crop size and batch (for ``swinunetr`` MONAI's own
``SwinUNETR``; for ``cnn`` the CNN backbone with a 1x1x1 output convolution),
no optimiser, no engine.  Reference and method steps are timed in alternating
rounds in the same process, so a changing machine load hits both alike; the
ratio printed is the median over rounds of (method s/step) / (reference s/step),
by wall time and by the process's CPU time (on a shared CPU the CPU-time ratio
is the steadier one: waiting for a core costs wall time, not CPU time).

``--checkpoint on`` builds the network with ``[model] use_checkpoint = true``
(gradient checkpointing in the Swin transformer), ``both`` measures each method
with and without it (its time and peak memory are what decide the default).

Usage::

    python benchmarks/bench_pretrain.py                      # auto device, all methods
    python benchmarks/bench_pretrain.py --device cpu --steps 2 --warmup 1
    python benchmarks/bench_pretrain.py --recipe tiny-cpu-2mm --device cpu
    python benchmarks/bench_pretrain.py --methods reconstruction --checkpoint both
"""

from __future__ import annotations

import argparse
import itertools
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
    parser.add_argument("--recipe", default=None,
                        help="take architecture, feature size, crop, batch size and method "
                             "options from this recipe (e.g. tiny-cpu-2mm)")
    parser.add_argument("--architecture", default="swinunetr", choices=("swinunetr", "cnn"))
    parser.add_argument("--feature-size", type=int, default=24)
    parser.add_argument("--crop", type=int, nargs=3, default=(32, 96, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating rounds of reference and method steps")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--precision", nargs="+", default=None, choices=("bf16", "fp32"),
                        help="default: bf16 and fp32 on CUDA, fp32 on CPU")
    parser.add_argument("--checkpoint", choices=("off", "on", "both"), default="off",
                        help="gradient checkpointing in the Swin transformer")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args(argv)
    args.options = {}
    if args.recipe:
        from bids_pcs.config import load_settings

        settings = load_settings(args.recipe)
        args.architecture = settings.model.architecture
        args.feature_size = settings.model.feature_size
        args.crop = settings.crop.shape_vox
        args.batch_size = settings.pretrain.batch_size
        args.options = settings.pretrain.options
    return args


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
    method, precision, checkpoint = args.one.split(":")
    torch.manual_seed(0)
    network = build_network(ModelSettings(architecture=args.architecture,
                                          feature_size=args.feature_size,
                                          use_checkpoint=checkpoint == "on"), args.crop)
    objective = get_objective(method, args.options)
    objective.setup(network)
    n_crops = args.batch_size * args.steps
    crops = torch.rand((n_crops, 1, *args.crop))
    crops = torch.nn.functional.avg_pool3d(crops, 5, stride=1, padding=2)
    data = CropSet((crops - crops.min()) / (crops.max() - crops.min()))

    reference = _reference(args, device)
    engine_config = TrainConfig(epochs=1, batch_size=args.batch_size, steps_per_epoch=args.steps,
                                mixed_precision=precision == "bf16", progress=False)
    engine = Engine(network, objective, engine_config, device=device)
    on_device = data.to(device)

    def timed(step) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started, cpu_started = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - started, time.process_time() - cpu_started

    def reference_steps() -> None:
        for i in range(args.steps):
            reference(on_device.images[i * args.batch_size:(i + 1) * args.batch_size],
                      precision == "bf16")

    results = []
    for _ in range(max(1, args.warmup)):
        results.append(engine.fit(data))
        reference(on_device.images[:args.batch_size], precision == "bf16")
    method_seconds, reference_seconds, method_cpu, reference_cpu = [], [], [], []
    for _ in range(args.rounds):
        wall, cpu = timed(reference_steps)
        reference_seconds.append(wall / args.steps)
        reference_cpu.append(cpu / args.steps)
        wall, cpu = timed(lambda: results.append(engine.fit(data)))
        method_seconds.append(wall / args.steps)
        method_cpu.append(cpu / args.steps)
    ratios = sorted(m / r for m, r in zip(method_seconds, reference_seconds, strict=True))
    cpu_ratios = sorted(m / r for m, r in zip(method_cpu, reference_cpu, strict=True))
    seconds = sorted(method_seconds)[len(method_seconds) // 2]
    crops_done = args.batch_size
    result = results[-1]
    return {
        "method": method,
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else f"cpu x{torch.get_num_threads()} threads"),
        "precision": precision,
        "use_checkpoint": checkpoint == "on",
        "architecture": args.architecture,
        "feature_size": args.feature_size,
        "crop": list(args.crop),
        "batch_size": args.batch_size,
        "steps": args.steps,
        "rounds": args.rounds,
        "seconds_per_step": seconds,
        "reference_seconds_per_step": sorted(reference_seconds)[len(reference_seconds) // 2],
        "step_cost_ratio": ratios[len(ratios) // 2],
        "cpu_seconds_per_step": sorted(method_cpu)[len(method_cpu) // 2],
        "cpu_step_cost_ratio": cpu_ratios[len(cpu_ratios) // 2],
        "crops_per_second": crops_done / seconds,
        "peak_memory_mb": result.peak_memory_mb,
        "parameters": result.total_parameters,
        "final_loss": result.history[-1]["loss"],
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _reference(args: argparse.Namespace, device):
    """A bare forward + backward step of the backbone with an L1 loss (no optimiser, no engine)."""
    import torch

    torch.manual_seed(1)
    if args.architecture == "swinunetr":
        from monai.networks.nets import SwinUNETR

        model = SwinUNETR(in_channels=1, out_channels=1, feature_size=args.feature_size,
                          spatial_dims=3)

        def forward(image):
            return model(image)
    else:
        from bids_pcs.config import ModelSettings
        from bids_pcs.models.network import build_network

        model = build_network(ModelSettings(architecture="cnn", feature_size=args.feature_size),
                              args.crop)
        out = torch.nn.Conv3d(args.feature_size, 1, 1)
        model = torch.nn.ModuleDict({"network": model, "out": out})

        def forward(image):
            return model["out"](model["network"](image, heads=False)["features"])
    model.to(device).train()

    def step(image, bf16: bool) -> None:
        autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                                  enabled=bf16 and device.type == "cuda")
        with autocast:
            loss = torch.nn.functional.l1_loss(forward(image).float(), image)
        loss.backward()
        for parameter in model.parameters():
            parameter.grad = None

    return step


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
    checkpoints = ["off", "on"] if args.checkpoint == "both" else [args.checkpoint]
    for method, precision, checkpoint in itertools.product(args.methods, precisions,
                                                           checkpoints):
        command = [sys.executable, os.path.abspath(__file__), *base,
                   "--one", f"{method}:{precision}:{checkpoint}"]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"{method} {precision}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        row = json.loads(lines[-1][len("RESULT "):])
        rows.append(row)
        print(f"{row['method']:<15} {row['device']:<7} {row['precision']:<5} "
              f"ckpt {checkpoint:<3} {row['crops_per_second']:7.3f} crops/s  "
              f"{row['seconds_per_step']:8.3f} s/step  "
              f"reference {row['reference_seconds_per_step']:7.3f} s/step  "
              f"ratio {row['step_cost_ratio']:5.2f} (CPU {row['cpu_step_cost_ratio']:5.2f})  "
              f"peak {row['peak_memory_mb']:9.1f} MB  "
              f"load {row['load_average']:.2f}", flush=True)
    print(f"(step cost ratio: method step / bare forward + backward with L1, median of "
          f"{args.rounds} alternating rounds of {args.steps} steps, by wall and by CPU time; "
          f"target <= 1.3; load = 1-min load average)")
    print(f"({args.architecture}, feature size {args.feature_size}, crop "
          f"{'x'.join(map(str, args.crop))}, batch {args.batch_size}, {rows[0]['device_name']}, "
          f"torch {torch.__version__}; CPU peak = process resident peak)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
