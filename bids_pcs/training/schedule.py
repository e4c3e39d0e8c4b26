"""Learning-rate schedules of the training engine: constant, or cosine with linear warm-up.

The engine sets every optimiser's learning rate before each optimiser step
from the step's position in the whole run (epoch and batch), so a resumed run
follows the same curve as an uninterrupted one without storing any scheduler
state:

- ``"constant"``: the base learning rate throughout (after the warm-up, if any);
- ``"cosine"``: linear warm-up over the first ``warmup_fraction`` of the
  optimiser steps from ``base / warmup_steps`` to ``base``, then half a cosine
  from ``base`` down towards 0 at the end of the run (Loshchilov & Hutter 2017,
  SGDR without restarts; the warm-up of Goyal et al. 2017). AdamW's first
  steps on freshly initialised heads or adapters are the least reliable ones;
  the warm-up keeps them small, and the decay lets the last epochs settle
  instead of bouncing at the peak step size.

Usage::

    schedule = LearningRateSchedule("cosine", total_steps=600, warmup_fraction=0.1)
    schedule.factor(0), schedule.factor(59), schedule.factor(599)   # 1/60, 1.0, ~0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bids_pcs.config import RecipeError

SCHEDULES: tuple[str, ...] = ("constant", "cosine")


@dataclass(frozen=True)
class LearningRateSchedule:
    """The multiplier of the base learning rate at each optimiser step.

    Args:
        kind: ``"constant"`` or ``"cosine"``.
        total_steps: optimiser steps of the whole run (at least 1).
        warmup_fraction: share of ``total_steps`` with a linear warm-up, in [0, 1).
    """

    kind: str
    total_steps: int
    warmup_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"learning-rate schedule must be one of {', '.join(SCHEDULES)}, "
                             f"not {self.kind!r}")
        if not 0.0 <= self.warmup_fraction < 1.0:
            raise ValueError(f"warmup_fraction must lie in [0, 1), not {self.warmup_fraction}")

    @property
    def warmup_steps(self) -> int:
        return int(round(self.warmup_fraction * max(self.total_steps, 1)))

    def factor(self, step: int) -> float:
        """Multiplier at optimiser step ``step`` (0-based)."""
        warmup = self.warmup_steps
        if step < warmup:
            return (step + 1) / warmup
        if self.kind == "constant":
            return 1.0
        span = max(self.total_steps - warmup, 1)
        progress = min(max(step - warmup, 0) / span, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def describe(self) -> dict[str, object]:
        """What model.json records about the schedule."""
        return {"kind": self.kind, "warmup_fraction": self.warmup_fraction,
                "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def check_schedule(section: str, kind: str, warmup_fraction: float) -> None:
    """Refuse a recipe's unknown schedule or a warm-up outside [0, 1) in one sentence.

    Raises:
        RecipeError: naming ``section`` (e.g. ``"[finetune]"``) and the valid values.
    """
    if kind not in SCHEDULES:
        raise RecipeError(f"{section} lr_schedule {kind!r} is unknown; use one of "
                          f"{', '.join(SCHEDULES)}.")
    if not 0.0 <= warmup_fraction < 1.0:
        raise RecipeError(f"{section} warmup_fraction must lie in [0, 1), not "
                          f"{warmup_fraction}.")
