"""Preprocessing per image against a plain 1 mm antspyx affine registration of the same image.

Each measurement runs in a fresh Python process (so its peak memory is that
image's alone):

- *preprocessing*: the code of ``bids_pcs participant`` without a model, the
  Nipype workflow with the Linear plugin, derivatives written (registration,
  QC, both crops, transforms); the workflow's wall time, imports excluded;
- *reference*: ``ants.registration(template, image, "Affine")`` with
  antspyx's defaults, on the app's 1 mm template (MNI152NLin2009aSym), the
  whole image at full resolution; its wall time, imports and reading excluded.

Both run ITK with the same thread count (the app's
``bids_pcs.spatial.antsio.ITK_THREADS``, one, for byte-identical transforms),
in alternating order (``--rounds``), so a changing machine load hits both
alike. Printed per image: both wall times, the ratio preprocessing /
reference (the target is at most 0.4), and the peak resident memory of each.

Usage::

    python benchmarks/bench_preprocess.py [IMAGE ...] [--rounds 2] [--deformable]

Without images it uses ``../shared/data/real-t1/KmeansTest_T1UCharRaw.nii.gz``
and Colin27 (``/usr/share/mricron/templates/ch2.nii.gz``, Debian mricron-data).
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

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGES = (
    REPO.parent / "shared" / "data" / "real-t1" / "KmeansTest_T1UCharRaw.nii.gz",
    Path("/usr/share/mricron/templates/ch2.nii.gz"),
)


def _peak_mb() -> float:
    """This process's resident peak (VmHWM; ``ru_maxrss`` would count a parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (this benchmark needs Linux)")


def run_preprocessing(image: Path, deformable: bool) -> dict:
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
    return {"seconds": seconds, "peak_mb": _peak_mb(),
            "qc": result.qc["MinCorrelation"], "passed": result.qc_passed}


def run_reference(image: Path) -> dict:
    """A plain antspyx affine registration of ``image`` to the 1 mm template."""
    import nibabel as nib

    from bids_pcs.spatial.antsio import ITK_THREADS, import_ants, to_ants
    from bids_pcs.spatial.template import load_template

    ants = import_ants()
    fixed = to_ants(load_template().t1)
    moving = to_ants(nib.as_closest_canonical(nib.load(str(image))))
    with tempfile.TemporaryDirectory(prefix="bench_ref_") as tmp:
        start = time.perf_counter()
        ants.registration(fixed=fixed, moving=moving, type_of_transform="Affine",
                          outprefix=str(Path(tmp) / "ref_"))
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": _peak_mb(), "itk_threads": ITK_THREADS}


def _child(kind: str, image: Path, deformable: bool = False) -> dict:
    cmd = [sys.executable, __file__, "--one", kind, str(image)]
    if deformable:
        cmd.append("--deformable")
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{kind} on {image} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="*", type=Path)
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternating rounds of reference and preprocessing per image")
    parser.add_argument("--deformable", action="store_true",
                        help="also preprocess with the deformable (SyN) stage")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    parser.add_argument("--one", nargs=2, metavar=("KIND", "IMAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, image = args.one[0], Path(args.one[1])
        figures = (run_reference(image) if kind == "reference"
                   else run_preprocessing(image, args.deformable))
        print(json.dumps(figures))
        return
    images = args.images or [p for p in DEFAULT_IMAGES if p.is_file()]
    print(f"bids_pcs preprocessing benchmark: {args.rounds} alternating round(s) per image; "
          "ITK with the app's thread count; peak = resident peak of the process (VmHWM)")
    print(f"{'image':34s} {'config':11s} {'prep s':>7s} {'ref s':>7s} {'ratio':>6s} "
          f"{'prep MB':>8s} {'ref MB':>7s} {'QC':>6s} {'load':>5s}")
    rows = []
    configs = [False, True] if args.deformable else [False]
    for image in images:
        for deformable in configs:
            prep, ref, ratios = [], [], []
            for round_index in range(args.rounds):
                # alternate which goes first, so a load spike does not favour one side
                order = ("reference", "preprocessing") if round_index % 2 == 0 else (
                    "preprocessing", "reference")
                got = {kind: _child(kind, image, deformable) for kind in order}
                prep.append(got["preprocessing"])
                ref.append(got["reference"])
                ratios.append(got["preprocessing"]["seconds"] / got["reference"]["seconds"])
            row = {
                "image": image.name, "deformable": deformable,
                "preprocessing_s": statistics.median(p["seconds"] for p in prep),
                "reference_s": statistics.median(r["seconds"] for r in ref),
                "ratio": statistics.median(ratios),
                "preprocessing_peak_mb": max(p["peak_mb"] for p in prep),
                "reference_peak_mb": max(r["peak_mb"] for r in ref),
                "qc": prep[-1]["qc"], "passed": prep[-1]["passed"],
                "itk_threads": ref[-1]["itk_threads"], "load_average": os.getloadavg()[0],
            }
            rows.append(row)
            flag = "" if row["passed"] else " FAIL"
            print(f"{image.name:34s} {'deformable' if deformable else 'default':11s} "
                  f"{row['preprocessing_s']:7.1f} {row['reference_s']:7.1f} {row['ratio']:6.2f} "
                  f"{row['preprocessing_peak_mb']:8.0f} {row['reference_peak_mb']:7.0f} "
                  f"{row['qc']:6.3f} {row['load_average']:5.2f}{flag}", flush=True)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"(ratio = preprocessing / plain 1 mm affine antspyx registration, median over "
          f"rounds; target <= 0.4; ITK threads {rows[0]['itk_threads'] if rows else '?'}; "
          f"load average now {load})")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
