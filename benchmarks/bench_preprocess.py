"""Wall time and peak memory of the preprocessing workflow, per image.

Each image runs in a fresh Python process (so peak memory is that image's
alone), through the same code as ``bids_pcs participant`` without a model:
the Nipype workflow with the Linear plugin (ITK runs one thread: see
``bids_pcs.spatial.antsio.ITK_THREADS``), derivatives written.  Reported: the
workflow's wall time (imports excluded) and the process's peak resident
memory, for the default recipe and with the deformable stage.

Usage::

    python benchmarks/bench_preprocess.py [IMAGE ...]

Without images it uses ``../shared/data/real-t1/KmeansTest_T1UCharRaw.nii.gz``
and Colin27 (``/usr/share/mricron/templates/ch2.nii.gz``, Debian mricron-data).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = (
    REPO.parent / "shared" / "data" / "real-t1" / "KmeansTest_T1UCharRaw.nii.gz",
    Path("/usr/share/mricron/templates/ch2.nii.gz"),
)


def run_one(image: Path, deformable: bool) -> dict:
    """Preprocess ``image`` in this process; return wall seconds and peak memory."""
    from bids_pcs.config import load_settings
    from bids_pcs.io.bids_input import collect_t1w
    from bids_pcs.io.derivatives import init_derivatives
    from bids_pcs.preprocess import preprocess_images

    with tempfile.TemporaryDirectory(prefix="bench_preproc_") as tmp:
        root = Path(tmp)
        anat = root / "bids" / "sub-bench" / "anat"
        anat.mkdir(parents=True)
        (root / "bids" / "dataset_description.json").write_text(
            json.dumps({"Name": "bench", "BIDSVersion": "1.10.0"}))
        (anat / "sub-bench_T1w.nii.gz").symlink_to(image.resolve())
        settings = load_settings("default", overrides={
            "run": {"bids_dir": str(root / "bids"), "output_dir": str(root / "out"),
                    "work_dir": str(root / "work"), "nprocs": 1, "omp_nthreads": 1},
            "registration": {"deformable": deformable},
        })
        init_derivatives(root / "out", root / "bids")
        images = collect_t1w(root / "bids")
        start = time.perf_counter()
        (result,) = preprocess_images(settings, images)
        seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": round(seconds, 1), "peak_mb": round(peak_mb),
            "qc": result.qc["MinCorrelation"], "passed": result.qc_passed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deformable", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.deformable)))
        return
    images = args.images or [p for p in DEFAULT_IMAGES if p.is_file()]
    print(f"{'image':40s} {'config':11s} {'wall (s)':>9s} {'peak (MB)':>10s} {'QC':>6s}")
    for image in images:
        for deformable in (False, True):
            cmd = [sys.executable, __file__, "--one", str(image)]
            if deformable:
                cmd.append("--deformable")
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            figures = json.loads(out.stdout.strip().splitlines()[-1])
            config = "deformable" if deformable else "default"
            flag = "" if figures["passed"] else " FAIL"
            print(f"{image.name:40s} {config:11s} {figures['seconds']:9.1f} "
                  f"{figures['peak_mb']:10d} {figures['qc']:6.3f}{flag}", flush=True)


if __name__ == "__main__":
    main()
