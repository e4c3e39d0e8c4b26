"""How hard a synthetic cohort is: full fine-tuning from scratch, held-out scores per budget.

For each preset: the demo's cohort (``--participants``, ``--seed``), its
preprocessing and its held-out split, then the demo recipe's fine-tuning
(strategy ``full``) **from scratch** at each budget (a multiple of the recipe's
epochs), ``participant --model`` on the held-out participants and the demo's
scoring against the synthetic truth: Dice on the hemispheres whose truth has a
PCS (present or prominent), presence accuracy and balanced accuracy, 3-class
accuracy. Nothing is tuned to the cohort: the recipe is the demo's.

Usage::

    python benchmarks/bench_synth_difficulty.py /tmp/difficulty   # benchmark, x1 and x4
    python benchmarks/bench_synth_difficulty.py /tmp/d --presets easy benchmark --budgets 1
    python benchmarks/bench_synth_difficulty.py /tmp/d --json results.json

Prints one line per (preset, budget) and writes them as JSON when asked.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_root", type=Path, help="one OUTPUT_DIR per preset goes here")
    parser.add_argument("--presets", nargs="+", default=["benchmark"],
                        choices=("benchmark", "easy"))
    parser.add_argument("--budgets", nargs="+", type=int, default=[1, 4],
                        help="multiples of the recipe's fine-tuning epochs")
    parser.add_argument("--participants", type=int, default=20)
    parser.add_argument("--held-out", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipe", default="demo")
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def run_preset(args: argparse.Namespace, preset: str) -> list[dict]:
    from bids_pcs.demo import (
        _settings,
        check_output_dir,
        ensure_cohort,
        score_held_out,
        split_participants,
    )
    from bids_pcs.devices import set_threads
    from bids_pcs.io.bids_input import collect_t1w
    from bids_pcs.io.derivatives import init_derivatives
    from bids_pcs.levels import finetune as finetune_level
    from bids_pcs.levels import participant
    from bids_pcs.preprocess import preprocess_images
    from bids_pcs.runlog import setup_console_logging

    output_dir = (args.output_root / preset).absolute()
    settings = _settings(args.recipe, {"synth": {"preset": preset}}, output_dir=output_dir,
                         work_dir=args.output_root.absolute() / f"work-{preset}",
                         nprocs=args.nprocs, omp=args.nprocs, device="cpu", seed=args.seed,
                         verbose=0)
    setup_console_logging(0)
    set_threads(args.nprocs)
    raw_dir = Path(settings.run.bids_dir)
    check_output_dir(output_dir)
    init_derivatives(output_dir, raw_dir, settings.labels)
    started = time.perf_counter()
    cohort = ensure_cohort(raw_dir, args.participants, args.seed, args.nprocs, settings.synth)
    train, held_out = split_participants(cohort, args.held_out, args.seed)
    preprocess_images(settings, collect_t1w(raw_dir))
    prepared = time.perf_counter() - started

    rows = []
    base_epochs = settings.finetune.epochs
    for budget in args.budgets:
        epochs = budget * base_epochs
        name = f"difficulty-scratch-full-x{budget}"
        run = settings.replace(run={"participant_label": train, "init": "scratch",
                                    "model_name": name}, finetune={"epochs": epochs})
        started = time.perf_counter()
        finetune_level.run(run)
        trained = time.perf_counter() - started
        model_dir = output_dir / "models" / name
        participant.run(settings.replace(run={"participant_label": held_out,
                                              "model": str(model_dir)}))
        result = score_held_out(settings, held_out)
        card = json.loads((model_dir / "model.json").read_text())
        rows.append({
            "preset": preset, "budget": f"x{budget}", "epochs": epochs,
            "train_participants": len(train), "held_out_participants": len(held_out),
            "hemispheres": result.n_hemispheres,
            "hemispheres_with_pcs": sum(r["true_voxels"] > 0 for r in result.per_hemisphere),
            "dice_present": result.dice_labelled, "dice_all": result.dice,
            "presence_accuracy": result.presence_accuracy,
            "presence_balanced_accuracy": result.presence_balanced_accuracy,
            "accuracy_3class": result.accuracy_3class,
            "finetune_seconds": round(trained, 1), "prepare_seconds": round(prepared, 1),
            "best_epoch": card.get("training", {}).get("best_epoch"),
            "load_average": os.getloadavg()[0],
        })
        print(_line(rows[-1]), flush=True)
    return rows


def _line(row: dict) -> str:
    return (f"{row['preset']:9s} {row['budget']:>3s} ({row['epochs']} epochs): "
            f"Dice on hemispheres with a PCS {row['dice_present']:.3f} "
            f"(n={row['hemispheres_with_pcs']}), presence balanced accuracy "
            f"{row['presence_balanced_accuracy']:.3f}, accuracy {row['presence_accuracy']:.3f}, "
            f"3-class {row['accuracy_3class']:.3f} on {row['hemispheres']} hemispheres; "
            f"fine-tuning {row['finetune_seconds']:.0f} s, load {row['load_average']:.1f}")


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    rows = [row for preset in args.presets for row in run_preset(args, preset)]
    print("\n".join(_line(row) for row in rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
