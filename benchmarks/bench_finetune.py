"""Fine-tuning epoch cost per strategy, and a top-tuning epoch as a fraction of a full one.

Every strategy runs :func:`bids_pcs.finetuning.finetune` (the ``finetune``
level's own code) on the same synthetic labelled crops (smooth random volumes,
a thin dark band as the PCS in every other crop), with validation after each
epoch. An *epoch* is its training pass plus its validation (the engine's
``seconds`` + ``validation_seconds``); *set-up* is the rest of the call:
building the network, the head priors, and for ``top`` and ``decoder`` the one
pass of the frozen part whose outputs the epochs then train on
(:mod:`bids_pcs.finetuning.frozen_outputs`). ``top (recomputed)`` is top-tuning
with ``cache_frozen = false``: what an epoch cost before.

The strategies run in alternating rounds in one process (``--rounds``), so a
changing machine load hits each alike; the figures are medians over rounds
(epochs after the first of each run). Printed: seconds per epoch, set-up,
the fraction of a full fine-tuning epoch, and a whole run of the recipe's
``[finetune] epochs`` (set-up + epochs) as a fraction of a full run.

Usage::

    python benchmarks/bench_finetune.py                    # SwinUNETR f24, 32x96x64, CPU
    python benchmarks/bench_finetune.py --train-crops 8 --rounds 2 --threads 2
    python benchmarks/bench_finetune.py --recipe tiny-cpu-2mm --device cpu
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

STRATEGIES = ("full", "top", "top-recomputed", "decoder", "lora")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="default")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--strategies", nargs="+", default=["full", "top", "top-recomputed",
                                                            "decoder"], choices=STRATEGIES)
    parser.add_argument("--train-crops", type=int, default=8)
    parser.add_argument("--validation-crops", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (>= 2)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                        help="bf16: autocast on CUDA")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    return parser.parse_args(argv)


def _labelled(n: int, shape: tuple[int, int, int], seed: int, first_subject: int):
    import torch

    from bids_pcs.config import PCS_CLASSES
    from bids_pcs.finetuning.data import CropInfo, LabelledCrops
    from bids_pcs.training.data import CropSet

    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((n, 1, *shape), generator=generator)
    images = torch.nn.functional.avg_pool3d(images, 5, stride=1, padding=2)
    images = (images - images.amin()) / (images.amax() - images.amin())
    masks = torch.zeros((n, *shape), dtype=torch.uint8)
    classes = torch.zeros(n, dtype=torch.long)
    x, y, z = shape
    for k in range(1, n, 2):
        masks[k, x // 2 - 1: x // 2 + 1, y // 4: 3 * y // 4, z // 2 - 1: z // 2 + 1] = 1
        classes[k] = 1
    images[:, 0][masks.bool()] = 0.0
    info = []
    for k in range(n):
        subject = f"{first_subject + k // 2:03d}"
        info.append(CropInfo(name=f"sub-{subject}_hemi-{'LR'[k % 2]}", subject=subject,
                             session=None, prefix=f"sub-{subject}", hemisphere="LR"[k % 2],
                             pcs_class=PCS_CLASSES[int(classes[k])],
                             class_source="participants.tsv", pcs_voxels=int(masks[k].sum())))
    crops = CropSet(images, {"segmentation": masks, "classification": classes},
                    [i.name for i in info])
    return LabelledCrops(crops, info)


def _run(settings, strategy: str, train, validation, device) -> dict:
    from bids_pcs.finetuning import finetune

    name, cache = (("top", False) if strategy == "top-recomputed" else (strategy, True))
    run_settings = settings.replace(finetune={"strategy": name, "cache_frozen": cache})
    started = time.perf_counter()
    result = finetune(run_settings, train, validation, "scratch", device=device,
                      progress=False)
    total = time.perf_counter() - started
    epochs = [row["seconds"] + row.get("validation_seconds", 0.0)
              for row in result.train.history]
    return {"strategy": strategy, "total_s": total, "epoch_s": epochs,
            "train_s": [row["seconds"] for row in result.train.history],
            "validation_s": [row.get("validation_seconds", 0.0)
                             for row in result.train.history],
            "setup_s": total - sum(epochs), "peak_memory_mb": result.train.peak_memory_mb,
            "trainable": result.strategy["trainable_parameters"],
            "load_average": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch

    from bids_pcs.config import load_settings
    from bids_pcs.devices import resolve_device

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)
    device = resolve_device(args.device)
    base = load_settings(args.recipe)
    epochs = max(2, args.epochs)
    settings = base.replace(finetune={"epochs": epochs},
                            pretrain={"mixed_precision": args.precision == "bf16"},
                            run={"seed": 0})
    shape = tuple(settings.crop.shape_vox)
    train = _labelled(args.train_crops, shape, 0, 1)
    validation = _labelled(args.validation_crops, shape, 1, 500)
    print(f"bids_pcs fine-tuning benchmark: {settings.model.architecture} feature size "
          f"{settings.model.feature_size}, crop {'x'.join(map(str, shape))}, batch "
          f"{settings.finetune.batch_size}, {len(train)} training + {len(validation)} "
          f"validation crops, {epochs} epochs per run, {args.rounds} round(s), {device}"
          f"{' x' + str(args.threads) + ' threads' if device.type == 'cpu' else ''}, "
          f"{args.precision}, torch {torch.__version__}", flush=True)
    runs: dict[str, list[dict]] = {s: [] for s in args.strategies}
    for round_index in range(args.rounds):
        for strategy in args.strategies:
            figures = _run(settings, strategy, train, validation, device)
            runs[strategy].append(figures)
            print(f"  round {round_index + 1} {strategy:<15} epochs "
                  + " ".join(f"{s:7.2f}" for s in figures["epoch_s"])
                  + f" s (validation {figures['validation_s'][-1]:.2f} s), set-up "
                  f"{figures['setup_s']:6.2f} s, load {figures['load_average']:.2f}",
                  flush=True)
    # the first epoch of a run may pay one-time costs (allocator, oneDNN kernels)
    summary = {}
    for strategy, figures in runs.items():
        later = [s for f in figures for s in f["epoch_s"][1:]]
        summary[strategy] = {"epoch_s": statistics.median(later),
                             "setup_s": statistics.median(f["setup_s"] for f in figures),
                             "peak_memory_mb": max(f["peak_memory_mb"] for f in figures),
                             "trainable": figures[0]["trainable"]}
    recipe_epochs = base.finetune.epochs
    full = summary.get("full")
    print(f"\n{'strategy':<16} {'s/epoch':>8} {'set-up s':>9} {'x full epoch':>13} "
          f"{f'run of {recipe_epochs} ep. x full':>20} {'peak MB':>8} {'trainable':>10}")
    for strategy, row in summary.items():
        fraction = row["epoch_s"] / full["epoch_s"] if full else float("nan")
        run = ((row["setup_s"] + recipe_epochs * row["epoch_s"])
               / (full["setup_s"] + recipe_epochs * full["epoch_s"]) if full else float("nan"))
        row["fraction_of_full_epoch"], row["fraction_of_full_run"] = fraction, run
        print(f"{strategy:<16} {row['epoch_s']:8.2f} {row['setup_s']:9.2f} {fraction:13.3f} "
              f"{run:20.3f} {row['peak_memory_mb']:8.0f} {row['trainable']:10d}")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"(epoch = training pass + validation; medians over rounds of the epochs after each "
          f"run's first; load average now {load}; target: a top-tuning epoch <= 0.1 x a full "
          "fine-tuning epoch)")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"runs": runs, "summary": summary, "load_average": os.getloadavg()},
                      handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
