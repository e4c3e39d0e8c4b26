"""BIDS validation with ``bids-validator-deno``, summarised in one sentence."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bids_pcs.errors import InputDataError

LOGGER = logging.getLogger("bids_pcs.validator")
VALIDATOR = "bids-validator-deno"


@dataclass(frozen=True)
class ValidationReport:
    """Errors and warnings of one validation, counted by issue code."""

    errors: Counter = field(default_factory=Counter)
    warnings: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self, limit: int = 3) -> str:
        """``'2 kinds of error: EMPTY_FILE x80 (e.g. /sub-01/...), ...'``"""
        parts = []
        for code, count in self.errors.most_common(limit):
            where = self.examples.get(code)
            parts.append(f"{code} x{count}" + (f" (e.g. {where})" if where else ""))
        more = len(self.errors) - limit
        if more > 0:
            parts.append(f"and {more} more kind(s)")
        return "; ".join(parts)


def validate(dataset: Path, *, recursive: bool = False,
             timeout_s: float = 600) -> ValidationReport:
    """Run the validator on ``dataset`` and count its issues.

    ``recursive`` validates the derivative datasets under ``derivatives/`` too
    (the validator's ``-r``) and counts their issues with the dataset's own.
    """
    exe = shutil.which(VALIDATOR)
    if exe is None:
        raise InputDataError(
            f"{VALIDATOR} is not installed; install it (pip install bids-validator-deno) "
            "or pass --skip-bids-validation."
        )
    proc = subprocess.run([exe, "--format", "json", *(["-r"] if recursive else []),
                           str(dataset)], capture_output=True,
                          text=True, timeout=timeout_s, check=False, env=_validator_env())
    try:
        result = json.loads(proc.stdout)
    except ValueError as exc:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise InputDataError(f"{VALIDATOR} failed on {dataset}: {tail[0]}") from exc
    errors: Counter = Counter()
    warnings: Counter = Counter()
    examples: dict[str, str] = {}
    issues = list(result.get("issues", {}).get("issues", []))
    for derivative in result.get("derivativesSummary", {}).values():
        issues += derivative.get("issues", {}).get("issues", [])
    for issue in issues:
        code = issue.get("code", "UNKNOWN")
        if issue.get("severity") == "error":
            errors[code] += 1
            examples.setdefault(code, issue.get("location") or "")
        else:
            warnings[code] += 1
    return ValidationReport(errors=errors, warnings=warnings, examples=examples)


def _validator_env() -> dict[str, str]:
    """The environment of the validator: its deno cache in the temporary directory.

    deno caches compiled code under ``~/.cache/deno`` by default; a run writes
    only into OUTPUT_DIR, the work dir and the temporary directory (HOME may
    be read-only in a container), and never checks for updates online.
    """
    env = dict(os.environ)
    if not env.get("DENO_DIR"):
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        env["DENO_DIR"] = str(Path(tempfile.gettempdir()) / f"bids_pcs-deno-{uid}")
    env.setdefault("DENO_NO_UPDATE_CHECK", "1")
    return env


def check_bids_valid(bids_dir: Path) -> ValidationReport:
    """Validate the input dataset; raise with a short summary when it has errors."""
    LOGGER.info("Validating %s with %s", bids_dir, VALIDATOR)
    report = validate(bids_dir)
    if report.warnings:
        LOGGER.debug("BIDS validation warnings: %s", dict(report.warnings))
    if not report.ok:
        raise InputDataError(
            f"BIDS_DIR {bids_dir} failed BIDS validation with {sum(report.errors.values())} "
            f"error(s): {report.summary()}; fix them or pass --skip-bids-validation."
        )
    return report
