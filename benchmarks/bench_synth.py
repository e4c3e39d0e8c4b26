"""Speed of the synthetic cohort generator, and bids-validator-deno on what it writes.

For each preset: ``make_cohort`` of ``--participants`` participants with
``--nprocs`` processes (figures included, as ``bids_pcs-synth`` writes them),
wall seconds per participant and per image, then ``bids-validator-deno`` on
the raw dataset and on it with its label derivative (``-r``): errors and
warnings counted, exit status.

Usage::

    python benchmarks/bench_synth.py /tmp/synth-speed --participants 10 --nprocs 2
    python benchmarks/bench_synth.py /tmp/s --presets benchmark easy --json speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path


def _parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_root", type=Path, help="one cohort per preset goes here")
    parser.add_argument("--presets", nargs="+", default=["benchmark"],
                        choices=("benchmark", "easy"))
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nprocs", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args(argv)


def validate(bids_dir: Path, with_derivatives: bool) -> dict:
    """bids-validator-deno's errors, warnings and exit status (``None`` when not installed)."""
    if shutil.which("bids-validator-deno") is None:
        return {"errors": None, "warnings": None, "returncode": None}
    run = subprocess.run(["bids-validator-deno", "--format", "json",
                          *(["-r"] if with_derivatives else []), str(bids_dir)],
                         capture_output=True, text=True, timeout=600, check=False)
    report = json.loads(run.stdout)
    issues = list(report["issues"]["issues"])
    for derivative in report.get("derivativesSummary", {}).values():
        issues += derivative["issues"]["issues"]
    return {"errors": sum(i["severity"] == "error" for i in issues),
            "warnings": sum(i["severity"] == "warning" for i in issues),
            "returncode": run.returncode}


def run_preset(args: argparse.Namespace, preset: str) -> dict:
    from bids_pcs.synth import SynthOptions, make_cohort

    bids_dir = args.output_root / preset
    if bids_dir.exists():
        shutil.rmtree(bids_dir)
    started = time.perf_counter()
    summary = make_cohort(bids_dir, args.participants, seed=args.seed,
                          options=SynthOptions.from_preset(preset, nprocs=args.nprocs))
    wall = time.perf_counter() - started
    images = len(list(bids_dir.glob("sub-*/**/anat/*_T1w.nii.gz")))
    return {"preset": preset, "participants": args.participants, "images": images,
            "nprocs": args.nprocs, "wall_seconds": round(wall, 1),
            "seconds_per_participant": round(wall / args.participants, 2),
            "seconds_per_image": round(wall / images, 2),
            "class_counts": summary.class_counts,
            "load_average": os.getloadavg()[0],
            "validator_raw": validate(bids_dir, False),
            "validator_with_labels": validate(bids_dir, True)}


def _line(row: dict) -> str:
    raw, labels = row["validator_raw"], row["validator_with_labels"]
    return (f"{row['preset']:9s} {row['participants']} participants ({row['images']} images) "
            f"with {row['nprocs']} processes: {row['wall_seconds']:.1f} s, "
            f"{row['seconds_per_participant']:.2f} s per participant; load "
            f"{row['load_average']:.1f}; bids-validator-deno raw: {raw['errors']} errors "
            f"(exit {raw['returncode']}), with labels (-r): {labels['errors']} errors "
            f"(exit {labels['returncode']})")


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    args.output_root.mkdir(parents=True, exist_ok=True)
    rows = []
    for preset in args.presets:
        rows.append(run_preset(args, preset))
        print(_line(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
