"""Planned and measured peak memory of the participant level (bids_pcs.resources' model).

Writes a small synthetic cohort, then runs ``bids_pcs participant`` on it under
several ``--nprocs`` / ``--mem-gb`` settings, each in a fresh process tree,
and prints the plan the run logged beside the peak resident memory of the
whole tree (main process, Nipype workers, forkserver), sampled every 50 ms.
The constants of ``bids_pcs/resources.py`` come from these figures.

Usage::

    python benchmarks/bench_memory.py [--images 2] [--voxel-mm 1.0]
"""

from __future__ import annotations

import argparse
import contextlib
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

SETTINGS = (("--nprocs", "1"), ("--nprocs", "2"), ("--nprocs", "2", "--mem-gb", "1.0"))


def peak_tree_gb(command: list[str]) -> tuple[int, float, str]:
    """Run ``command``; its exit code, the peak RSS (GiB) of its process tree, its output."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    root = psutil.Process(process.pid)
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            total = 0
            with contextlib.suppress(psutil.Error):
                for member in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        total += member.memory_info().rss
            peak[0] = max(peak[0], total)
            time.sleep(0.05)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    output, _ = process.communicate()
    done.set()
    thread.join()
    return process.returncode, peak[0] / 2**30, output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--voxel-mm", type=float, default=1.0)
    args = parser.parse_args()
    from bids_pcs.synth import SynthOptions, make_cohort

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        summary = make_cohort(root / "bids", args.images, seed=1, options=SynthOptions.from_preset(
            "easy", anatomy=("MNI152NLin2009aSym",), figure=False,
            voxel_sizes=((args.voxel_mm,) * 3,)))
        print("options\tplan\tplanned_peak_gb\tmeasured_peak_gb\tseconds")
        for i, options in enumerate(SETTINGS):
            started = time.perf_counter()
            code, peak, output = peak_tree_gb([
                sys.executable, "-m", "bids_pcs.cli", str(summary.bids_dir), str(root / f"o{i}"),
                "participant", "--recipe", "tiny-cpu-2mm", "-w", str(root / f"w{i}"),
                "--skip-bids-validation", *options])
            seconds = time.perf_counter() - started
            if code != 0:
                raise SystemExit(f"{' '.join(options)} failed:\n{output[-2000:]}")
            plan = re.search(r"plan for \d+ image\(s\): ([^;]+); planned peak ([\d.]+) GB",
                             output)
            print(f"{' '.join(options)}\t{plan[1] if plan else '?'}\t"
                  f"{plan[2] if plan else '?'}\t{peak:.2f}\t{seconds:.1f}")


if __name__ == "__main__":
    main()
