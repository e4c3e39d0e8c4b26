"""The bare SwinUNETR under speed switches: fused attention, channels-last 3D, checkpointing.

For each variant, in a fresh process (so the peak memory is the variant's own):
MONAI's ``SwinUNETR`` at the paper's size (feature size 24, crop 32x96x64,
batch 2), a warm-up, then timed forward passes in inference mode and timed
training steps (forward + L1 loss + backward). Printed per variant: wall and
CPU seconds (median), the process's resident peak, and with ``--profile`` the
torch.profiler top 10 operators of one forward pass (by self CPU time).

Variants: ``plain`` (MONAI as it is), ``fused`` (bids_pcs'
:class:`~bids_pcs.models.swin_attention.FusedWindowAttention`, what the app
builds), ``fused+channels_last`` (weights and input in ``channels_last_3d``),
``checkpoint`` and ``fused+checkpoint`` (``use_checkpoint=True``, the
``[model] use_checkpoint`` switch).

Usage::

    python benchmarks/bench_network.py [--variants plain fused ...] [--forwards 2]
        [--steps 2] [--threads 2] [--profile] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

VARIANTS = ("plain", "fused", "fused+channels_last", "checkpoint", "fused+checkpoint")


def measure(variant: str, args: argparse.Namespace) -> dict:
    import torch
    from monai.networks.nets import SwinUNETR

    from bids_pcs.models.swin_attention import fuse_window_attention
    from bids_pcs.training.memory import peak_memory_mb

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    network = SwinUNETR(in_channels=1, out_channels=1, feature_size=args.feature_size,
                        spatial_dims=3, use_checkpoint="checkpoint" in variant).to(device)
    if "fused" in variant:
        fuse_window_attention(network)
    image = torch.rand((args.batch_size, 1, *args.crop), device=device)
    if "channels_last" in variant:
        network = network.to(memory_format=torch.channels_last_3d)
        image = image.to(memory_format=torch.channels_last_3d)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def forward() -> None:
        with torch.inference_mode():
            network.eval()(image)

    def step() -> None:
        loss = torch.nn.functional.l1_loss(network.train()(image), image)
        loss.backward()
        for parameter in network.parameters():
            parameter.grad = None

    def timed(call, n: int) -> tuple[float, float]:
        call()  # warm-up
        walls, cpus = [], []
        for _ in range(n):
            sync()
            wall, cpu = time.perf_counter(), time.process_time()
            call()
            sync()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        return statistics.median(walls), statistics.median(cpus)

    out = {"variant": variant, "load_average": os.getloadavg()[0]}
    out["forward_s"], out["forward_cpu_s"] = timed(forward, args.forwards)
    if args.steps:
        out["step_s"], out["step_cpu_s"] = timed(step, args.steps)
    out["peak_mb"] = peak_memory_mb(device)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            forward()
        out["profile"] = prof.key_averages().table(sort_by="self_cpu_time_total",
                                                   row_limit=10)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--forwards", type=int, default=2, help="timed forward passes")
    parser.add_argument("--steps", type=int, default=2, help="timed training steps (0: none)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--feature-size", type=int, default=24)
    parser.add_argument("--crop", type=int, nargs=3, default=(32, 96, 64))
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(measure(args.one, args)), flush=True)
        return 0
    base = argv if argv is not None else sys.argv[1:]
    print(f"bare SwinUNETR f{args.feature_size}, crop {'x'.join(map(str, args.crop))}, batch "
          f"{args.batch_size}, {args.device}, {args.threads} thread(s); medians after a warm-up")
    print(f"{'variant':22s} {'fwd s':>6s} {'fwd CPU':>7s} {'step s':>7s} {'step CPU':>8s} "
          f"{'peak MB':>8s} {'load':>5s}")
    for variant in args.variants:
        done = subprocess.run([sys.executable, os.path.abspath(__file__), *base, "--one",
                               variant], capture_output=True, text=True, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"{variant}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            return 1
        r = json.loads(lines[-1][len("RESULT "):])
        step = (f"{r['step_s']:7.2f} {r['step_cpu_s']:8.2f}" if "step_s" in r
                else f"{'-':>7s} {'-':>8s}")
        print(f"{variant:22s} {r['forward_s']:6.2f} {r['forward_cpu_s']:7.2f} {step} "
              f"{r['peak_mb']:8.0f} {r['load_average']:5.2f}", flush=True)
        if "profile" in r:
            print(r["profile"], flush=True)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"(CPU peak = process resident peak, CUDA = allocated; load average now {load})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
