"""One prepared check of everything that needs a CUDA GPU, printing every figure.

Run on a CUDA machine from the repository root, with bids_pcs installed::

    python benchmarks/gpu_check.py                  # all four parts, a few minutes on one GPU
    python benchmarks/gpu_check.py --parts tests inference
    python benchmarks/gpu_check.py --dry-run        # any machine: the commands and the cohort

The parts, in order (each one's output is shown; a failing part is reported
and the next one still runs; the exit status is non-zero when any failed):

``tests``
    ``tests/test_cuda.py``: device selection, bf16 autocast in training, crops
    on the GPU, inference on the GPU against the CPU, DDP with NCCL (two GPUs).
``pretrain``
    ``benchmarks/bench_pretrain.py --device cuda --precision bf16 fp32``: every
    method's crops/s, s/step, its ratio to a bare SwinUNETR step, peak memory.
``inference``
    ``benchmarks/bench_inference.py --device cuda --precision bf16 fp32``: s per
    image and the ratio to two bare forward passes (target on one H200: <= 0.2 s).
``study``
    one epoch of pre-training and of fine-tuning of the ``study-paper`` recipe
    (every method x every strategy) on a small synthetic cohort
    (``bids_pcs-synth``, MNI anatomy), with its wall time and the study table.

Without CUDA it stops with one sentence (exit 2) unless ``--dry-run`` is given:
then it prints the commands and writes the synthetic cohort (the parts that
a CPU can check), and runs nothing else. Figures are never written into the
repository; ``--work`` keeps the cohort, the study outputs and a JSON per part.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ("tests", "pretrain", "inference", "study")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--work", type=Path, default=None,
                        help="folder for the cohort, the study outputs and the JSON figures "
                             "(default: a temporary folder, removed at the end)")
    parser.add_argument("--participants", type=int, default=10,
                        help="synthetic participants of the study part (>= 5: 60/20/20 split)")
    parser.add_argument("--steps", type=int, default=5, help="timed pre-training steps per round")
    parser.add_argument("--nprocs", type=int, default=min(os.cpu_count() or 1, 16),
                        help="processes for preprocessing in the study part")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the commands and write the cohort; run nothing on a GPU")
    args = parser.parse_args(argv)
    if args.participants < 5:
        parser.error("--participants must be at least 5 (the study splits 60/20/20 %)")
    return args


def commands(args: argparse.Namespace, work: Path) -> dict[str, list[str]]:
    """The command of every part (run from the repository root)."""
    python = sys.executable
    cohort, out = work / "cohort", work / "study-out"
    return {
        "tests": [python, "-m", "pytest", "-q", "-rs", "tests/test_cuda.py"],
        "pretrain": [python, "benchmarks/bench_pretrain.py", "--device", "cuda",
                     "--precision", "bf16", "fp32", "--steps", str(args.steps),
                     "--json", str(work / "pretrain.json")],
        "inference": [python, "benchmarks/bench_inference.py", "--device", "cuda",
                      "--precision", "bf16", "fp32", "--json", str(work / "inference.json")],
        "study": [python, "-m", "bids_pcs.cli", str(cohort), str(out), "study",
                  "--labels", str(cohort / "derivatives" / "pcs-labels"),
                  "--recipe", "study-paper", "--set", "pretrain.epochs=1",
                  "--set", "finetune.epochs=1", "--set", "study.bootstrap_samples=200",
                  "--skip-bids-validation", "-w", str(work / "study-work"),
                  "--nprocs", str(args.nprocs), "--device", "cuda"],
    }


def make_study_cohort(args: argparse.Namespace, work: Path) -> Path:
    """The synthetic labelled cohort of the study part (MNI anatomy, no figure)."""
    from bids_pcs.synth import SynthOptions, make_cohort

    cohort = work / "cohort"
    if not (cohort / "participants.tsv").is_file():
        make_cohort(cohort, args.participants, seed=0,
                    options=SynthOptions(anatomy=("MNI152NLin2009aSym",), figure=False))
    return cohort


def environment() -> str:
    import torch

    lines = [f"python {sys.version.split()[0]}, torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}, {os.cpu_count()} CPU(s)"]
    for index in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(index)
        lines.append(f"cuda:{index} {props.name}, {props.total_memory / 2**30:.0f} GiB")
    return "\n".join(lines)


def run_part(name: str, command: list[str]) -> tuple[int, float]:
    print(f"\n=== {name}: {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, check=False)
    seconds = time.perf_counter() - started
    print(f"=== {name}: exit {done.returncode} in {seconds:.1f} s", flush=True)
    return done.returncode, seconds


def study_figures(work: Path) -> None:
    """Print the study table's timing columns (the full table is in the work folder)."""
    table = work / "study-out" / "study" / "study.tsv"
    if not table.is_file():
        print(f"(no study table at {table})")
        return
    import pandas as pd

    frame = pd.read_csv(table, sep="\t", na_values=["n/a"], keep_default_na=False)
    wanted = [c for c in ("configuration", "dice", "finetune_seconds", "seconds_per_epoch",
                          "peak_memory_mb") if c in frame.columns]
    print(frame[wanted].to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    if not torch.cuda.is_available() and not args.dry_run:
        print("gpu_check: no CUDA GPU is visible here (torch.cuda.is_available() is false); "
              "run it on a GPU machine, or pass --dry-run to print the commands and write "
              "the cohort.", file=sys.stderr)
        return 2
    temporary = None
    if args.work is None:
        temporary = tempfile.TemporaryDirectory(prefix="bids_pcs_gpu_check_")
        work = Path(temporary.name)
    else:
        work = args.work.absolute()
        work.mkdir(parents=True, exist_ok=True)
    try:
        print(environment(), flush=True)
        plan = commands(args, work)
        failed = []
        for name in args.parts:
            if name == "study":
                started = time.perf_counter()
                cohort = make_study_cohort(args, work)
                print(f"cohort: {args.participants} synthetic participants in {cohort} "
                      f"({time.perf_counter() - started:.1f} s)", flush=True)
            if args.dry_run:
                print(f"{name}: {shlex.join(plan[name])}")
                continue
            code, seconds = run_part(name, plan[name])
            if name == "study":
                study_figures(work)
                print(f"study part (preprocessing + 1 + 1 epochs, every method x strategy): "
                      f"{seconds:.1f} s")
            if code:
                failed.append(name)
        summary = {"failed": failed, "parts": args.parts, "dry_run": args.dry_run,
                   "load_average": list(os.getloadavg())}
        (work / "gpu_check.json").write_text(json.dumps(summary, indent=2))
        print(f"\ngpu_check: {'failed: ' + ', '.join(failed) if failed else 'every part passed'}"
              f"{' (dry run: nothing ran)' if args.dry_run else ''}")
        return 1 if failed else 0
    finally:
        if temporary is not None:
            temporary.cleanup()


if __name__ == "__main__":
    sys.exit(main())
