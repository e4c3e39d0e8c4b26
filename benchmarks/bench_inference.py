"""Inference of one image (both hemispheres) against two bare forward passes of SwinUNETR.

What is timed per image is what ``participant --model`` does per image after
preprocessing: :func:`bids_pcs.inference.pipeline.infer_images` on one
preprocessed T1w (read both crops, one batch through the network (four crops
with flip TTA), P(PCS) mapped to the native grid, dseg, length and volume,
every derivative written). The *reference* is two bare forward passes (batch
of one, inference mode) of MONAI's ``SwinUNETR`` at the recipe's feature size
and crop, as MONAI builds it by default. Reference and app run in alternating
rounds in one process, so a changing load hits both alike; the ratio printed
is the median over rounds of app / reference. Also printed: the network's
share (``predict_hemispheres`` alone), the CPU seconds of the process per
image (with T threads on free cores about T x wall; much less means other
processes held the cores), the one-off model load (read + SHA-256), and the
peak memory (CPU: resident peak of the process; CUDA: allocated).

The image is preprocessed once (default recipe, Colin27 1 mm) into ``--work``
(reused when there) and a model of the recipe's architecture with seeded random
weights is saved there: timings do not depend on the weights. Each
configuration runs in a fresh process.

Targets (issue 16): <= 5 s per image on two CPU cores and <= 1.5x the
reference; <= 0.2 s per image on one H200.

Usage::

    python benchmarks/bench_inference.py [--threads 2] [--rounds 3] [--device cpu|cuda|all]
        [--precision fp32 bf16] [--tta] [--image T1w.nii.gz] [--work DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_IMAGE = Path("/usr/share/mricron/templates/ch2.nii.gz")


def _peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _settings(recipe: str, work: Path, tta: bool = False, bf16: bool = False,
              device: str = "cpu", threads: int = 1):
    from bids_pcs.config import load_settings

    return load_settings(recipe, overrides={
        "run": {"bids_dir": str(work / "bids"), "output_dir": str(work / "out"),
                "work_dir": str(work / "work"), "nprocs": 1, "omp_nthreads": threads,
                "device": device},
        "inference": {"flip_tta": tta, "mixed_precision": bf16}})


def prepare(recipe: str, image: Path, work: Path) -> None:
    """Preprocess ``image`` and save a seeded random model of ``recipe`` under ``work``."""
    import torch

    from bids_pcs.io.bids_input import collect_t1w
    from bids_pcs.io.derivatives import init_derivatives
    from bids_pcs.models.model_io import model_card, save_model
    from bids_pcs.models.network import build_network
    from bids_pcs.preprocess import load_preprocessed, preprocess_images

    anat = work / "bids" / "sub-bench" / "anat"
    if not anat.exists():
        anat.mkdir(parents=True)
        (work / "bids" / "dataset_description.json").write_text(
            json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
        (anat / "sub-bench_T1w.nii.gz").symlink_to(image.resolve())
    settings = _settings(recipe, work)
    images = collect_t1w(work / "bids")
    if load_preprocessed(settings, images[0]) is None:
        init_derivatives(work / "out", work / "bids")
        started = time.perf_counter()
        (item,) = preprocess_images(settings, images)
        if not item.qc_passed:
            raise SystemExit(f"{image} failed registration QC; benchmark another image.")
        print(f"(preprocessed {image} in {time.perf_counter() - started:.1f} s)", flush=True)
    if not (work / "model" / "model.json").is_file():
        torch.manual_seed(0)
        network = build_network(settings.model, settings.crop.shape_vox,
                                settings.labels.classes)
        save_model(work / "model", network, model_card(
            settings, network, stage="finetune", method="scratch", strategy="full"))


def measure(recipe: str, work: Path, device_name: str, precision: str, tta: bool,
            threads: int, rounds: int) -> dict:
    """One configuration in this process: app and reference seconds per image."""
    import torch
    from monai.networks.nets import SwinUNETR

    from bids_pcs.inference.model import load_inference_model
    from bids_pcs.inference.pipeline import infer_images
    from bids_pcs.inference.predict import predict_hemispheres
    from bids_pcs.io.bids_input import collect_t1w
    from bids_pcs.io.nifti import load_crop
    from bids_pcs.preprocess import load_preprocessed

    torch.set_num_threads(threads)
    device = torch.device(device_name)
    bf16 = precision == "bf16"
    settings = _settings(recipe, work, tta=tta, bf16=bf16, device=device_name, threads=threads)
    (image,) = collect_t1w(work / "bids")
    item = load_preprocessed(settings, image)
    started = time.perf_counter()
    model = load_inference_model(settings, work / "model", device)
    load_seconds = time.perf_counter() - started
    crops = {h: load_crop(item.crops[h]) for h in ("L", "R")}

    torch.manual_seed(1)
    bare = SwinUNETR(in_channels=1, out_channels=2, feature_size=settings.model.feature_size,
                     spatial_dims=3).to(device).eval()
    one = torch.as_tensor(crops["L"])[None, None].to(device)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=bf16 and device.type == "cuda")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def reference() -> None:
        with torch.inference_mode(), autocast:
            for _ in range(2):
                bare(one)

    def app() -> None:
        infer_images(settings, [item], model=model, device=device)

    def network_only() -> None:
        predict_hemispheres(model.network, crops, device=device, flip_tta=tta,
                            mixed_precision=bf16)

    def timed(step) -> tuple[float, float]:
        sync()
        wall, cpu = time.perf_counter(), time.process_time()
        step()
        sync()
        return time.perf_counter() - wall, time.process_time() - cpu

    for step in (reference, app):  # warm-up: allocator, kernels, first-call caches
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    for index in range(rounds):
        order = (reference, app, network_only) if index % 2 == 0 else (
            network_only, app, reference)
        got = {step.__name__: timed(step) for step in order}
        rows.append(got)
    ratio = statistics.median(r["app"][0] / r["reference"][0] for r in rows)
    out = {
        "device": device_name, "precision": precision, "flip_tta": tta, "threads": threads,
        "seconds_per_image": statistics.median(r["app"][0] for r in rows),
        "cpu_seconds_per_image": statistics.median(r["app"][1] for r in rows),
        "network_seconds": statistics.median(r["network_only"][0] for r in rows),
        "reference_seconds": statistics.median(r["reference"][0] for r in rows),
        "ratio": ratio,
        "model_load_seconds": load_seconds,
        "peak_rss_mb": _peak_rss_mb(),
        "load_average": os.getloadavg()[0],
        "rounds": rounds,
        "feature_size": settings.model.feature_size,
        "crop": list(settings.crop.shape_vox),
    }
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        out["gpu"] = torch.cuda.get_device_name(device)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", choices=("cpu", "cuda", "all"), default="all")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=None,
                        help="default: fp32 on the CPU; bf16 and fp32 on CUDA")
    parser.add_argument("--tta", action="store_true", help="also time flip TTA")
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the preprocessed image and the model here (reused)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--child", nargs=4, metavar=("DEVICE", "PRECISION", "TTA", "WORK"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        device, precision, tta, work = args.child
        figures = measure(args.recipe, Path(work), device, precision, tta == "1",
                          args.threads, args.rounds)
        print("RESULT " + json.dumps(figures), flush=True)
        return 0

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_inference: --device cuda but no CUDA GPU is visible.", file=sys.stderr)
        return 2
    devices = {"cpu": ["cpu"], "cuda": ["cuda"],
               "all": ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]}[args.device]
    temporary = None
    if args.work is None:
        temporary = tempfile.TemporaryDirectory(prefix="bench_inference_")
        work = Path(temporary.name)
    else:
        work = args.work.absolute()
        work.mkdir(parents=True, exist_ok=True)
    prepare(args.recipe, args.image, work)
    print(f"bids_pcs inference benchmark: {args.image.name}, recipe {args.recipe}, "
          f"{args.threads} CPU thread(s), torch {torch.__version__}, median of {args.rounds} "
          "alternating rounds after a warm-up")
    print(f"{'device':6s} {'prec':5s} {'TTA':4s} {'s/image':>8s} {'CPU s':>6s} "
          f"{'network s':>9s} {'2 bare fwd s':>12s} {'ratio':>6s} {'load s':>6s} "
          f"{'peak MB':>8s} {'GPU MB':>7s} {'load':>5s}")
    rows = []
    for device in devices:
        precisions = args.precision or (["bf16", "fp32"] if device == "cuda" else ["fp32"])
        for precision in precisions:
            for tta in ([False, True] if args.tta else [False]):
                command = [sys.executable, os.path.abspath(__file__), "--threads",
                           str(args.threads), "--rounds", str(args.rounds), "--recipe",
                           args.recipe, "--child", device, precision, "1" if tta else "0",
                           str(work)]
                done = subprocess.run(command, capture_output=True, text=True, check=False)
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                if done.returncode or not lines:
                    print(f"{device} {precision} tta={tta}: failed\n{done.stderr[-2000:]}",
                          file=sys.stderr)
                    return 1
                r = json.loads(lines[-1][len("RESULT "):])
                rows.append(r)
                gpu = f"{r['peak_gpu_mb']:7.0f}" if "peak_gpu_mb" in r else f"{'-':>7s}"
                print(f"{device:6s} {precision:5s} {'yes' if tta else 'no':4s} "
                      f"{r['seconds_per_image']:8.2f} {r['cpu_seconds_per_image']:6.1f} "
                      f"{r['network_seconds']:9.2f} {r['reference_seconds']:12.2f} "
                      f"{r['ratio']:6.2f} {r['model_load_seconds']:6.2f} "
                      f"{r['peak_rss_mb']:8.0f} {gpu} {r['load_average']:5.2f}", flush=True)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"(s/image: infer_images per image, everything after preprocessing; ratio: s/image "
          f"/ two bare SwinUNETR forward passes, median over rounds; load s: model read + "
          f"SHA-256, once per run. Targets: <= 5 s and <= 1.5x on 2 CPU cores, <= 0.2 s on "
          f"one H200. Load average now {load})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    if temporary is not None:
        temporary.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
