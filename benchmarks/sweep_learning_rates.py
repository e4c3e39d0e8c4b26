"""Learning-rate sweep per fine-tuning strategy, judged on the validation participants only.

Runs the study level once per candidate rate (every strategy of the sub-grid
at that rate, from one initialisation), keeps each run's validation scores at
the kept epoch, and prints, per strategy, the rate with the highest
``val_score`` (the fine-tuning selection score: mean of the validation Dice
over sulci and the presence balanced accuracy).  Test scores are never read:
choosing a rate on the test participants would make every later comparison on
them optimistic.

Each rate can be its own invocation (``--rates 1e-3``): the results file
``OUTPUT_DIR/lr_sweep.tsv`` gathers the runs, so a long sweep can be split
into parts; the pre-training of the initialisation runs once and is reused.

Usage::

    python benchmarks/sweep_learning_rates.py BIDS_DIR OUTPUT_DIR --labels LABELS_DIR \\
        --method reconstruction --rates 3e-4 1e-3 3e-3 1e-2 -- --recipe study-quick \\
        --skip-bids-validation -w WORK --device cpu
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

STRATEGIES = ("top", "decoder", "full", "lora")
COLUMNS = ("rate", "method", "strategy", "val_score", "val_dice", "val_dice_n",
           "val_presence_balanced_accuracy", "best_epoch", "epochs", "finetune_seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bids_dir", type=Path)
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--labels", type=Path, required=True)
    parser.add_argument("--method", default="reconstruction",
                        help="initialisation of every run (a pre-training method or scratch)")
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--rates", nargs="+", type=float, default=[])
    argv = list(sys.argv[1:] if argv is None else argv)
    # everything after "--" goes to the study level (argparse.REMAINDER would also swallow
    # this script's own options written after the positionals)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    results = args.output_dir / "lr_sweep.tsv"
    for rate in args.rates:
        table = "{" + ", ".join(f"{s} = {rate:g}" for s in args.strategies) + "}"
        command = [sys.executable, "-m", "bids_pcs.cli", str(args.bids_dir),
                   str(args.output_dir), "study", "--labels", str(args.labels),
                   "--methods", args.method, "--strategies", *args.strategies,
                   "--set", f"finetune.learning_rates={table}", *extra]
        started = time.perf_counter()
        done = subprocess.run(command, check=False)
        print(f"rate {rate:g}: study exit {done.returncode} after "
              f"{time.perf_counter() - started:.0f} s", flush=True)
        _append(results, rate, args.method, args.strategies, args.output_dir / "study")
    if results.is_file():
        _report(results)
    return 0


def _append(results: Path, rate: float, method: str, strategies: list[str],
            study_dir: Path) -> None:
    rows = []
    for strategy in strategies:
        path = study_dir / "configurations" / f"{method}-{strategy}.json"
        if not path.is_file():
            continue
        record = json.loads(path.read_text())
        if abs(float(record.get("learning_rate", float("nan"))) - rate) > 1e-12:
            continue  # a failed run left an older record
        validation = record.get("validation") or {}
        rows.append({"rate": rate, "method": method, "strategy": strategy,
                     **{k: validation.get(k) for k in COLUMNS if k.startswith("val_")},
                     "best_epoch": record.get("best_epoch"), "epochs": record.get("epochs"),
                     "finetune_seconds": round(float(record["finetune_seconds"]), 1)})
    new = not results.is_file()
    with results.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, delimiter="\t")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _report(results: Path) -> None:
    with results.open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    print(f"\n{'strategy':8} {'rate':>8} {'val_score':>9} {'val_dice':>8} {'val_bacc':>8} "
          f"{'best/ep':>7} {'seconds':>8}")
    best = {}
    for row in sorted(rows, key=lambda r: (r["strategy"], float(r["rate"]))):
        score = _number(row["val_score"])
        print(f"{row['strategy']:8} {float(row['rate']):8.0e} {score:9.3f} "
              f"{_number(row['val_dice']):8.3f} "
              f"{_number(row['val_presence_balanced_accuracy']):8.3f} "
              f"{row['best_epoch']:>3}/{row['epochs']:<3} {row['finetune_seconds']:>8}")
        kept = best.get(row["strategy"])
        if kept is None or score > _number(kept["val_score"]):  # ties keep the smaller rate
            best[row["strategy"]] = row
    print("\nhighest validation score per strategy: " + ", ".join(
        f"{s} {float(r['rate']):g}" for s, r in sorted(best.items())))


def _number(value: str | None) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


if __name__ == "__main__":
    sys.exit(main())
