"""A plain-words reading of the study's results, written from the numbers of the table.

Nothing here is fixed text about which method wins: every sentence is built
from the rows of the results table, so the page says what *this* run found.
A difference is *called* (better / worse) only where its **paired** 95 %
participant-bootstrap interval excludes 0 (both configurations judged on the
same resampled test participants, :mod:`bids_pcs.study.table`); everywhere
else the reading says the data cannot tell them apart.  Whether two marginal
intervals overlap is never used: it is not a test of their difference.

- :func:`best_sentences`: the best configuration for segmentation (native
  Dice over the hemispheres with a sulcus) and for detection (presence
  balanced accuracy), with all labels;
- :func:`difference_sentences`: pre-training against scratch with the same
  strategy, and each strategy against full fine-tuning with the same method;
- :func:`label_sentences`: the same comparison against scratch at each label
  fraction (the label-efficiency question);
- :func:`seed_sentences`, :func:`cost_sentences`, :func:`caveats`.

Usage::

    for sentence in reading(table):
        print(sentence)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bids_pcs.study.plan import SCRATCH
from bids_pcs.study.scoring import LOWER_IS_BETTER

SMALL_TEST = 30  # participants; below this intervals are wide
HEADLINE = (("dice", "native Dice over hemispheres with a sulcus"),
            ("presence_balanced_accuracy", "presence balanced accuracy"))
_NAMES = dict(HEADLINE)


@dataclass(frozen=True)
class Difference:
    """One row against its reference, with the paired interval.

    Args:
        configuration: the row's configuration name.
        metric: the score compared.
        reference: ``"scratch"`` or ``"full"``.
        estimate, lower, upper: row minus reference, and its paired 95 % interval.
    """

    configuration: str
    metric: str
    reference: str
    estimate: float
    lower: float
    upper: float

    @property
    def called(self) -> str | None:
        """``"better"`` or ``"worse"`` when the interval excludes 0, else ``None``."""
        if not (np.isfinite(self.lower) and np.isfinite(self.upper)):
            return None
        if self.lower > 0 or self.upper < 0:
            higher = self.lower > 0
            return "better" if higher != (self.metric in LOWER_IS_BETTER) else "worse"
        return None

    def text(self) -> str:
        return (f"{self.configuration} {self.estimate:+.3f} (paired 95 % CI {self.lower:+.3f} "
                f"to {self.upper:+.3f})")


def reading(table: pd.DataFrame) -> list[str]:
    """Every sentence of the reading, in page order."""
    if table.empty:
        return ["No configuration finished, so there is nothing to read yet."]
    return [*best_sentences(table), *difference_sentences(table), *label_sentences(table),
            *seed_sentences(table), *cost_sentences(table), *caveats(table)]


def differences(table: pd.DataFrame, metric: str, reference: str) -> list[Difference]:
    """Every row's paired difference from its ``reference`` (``"scratch"`` or ``"full"``)."""
    column = f"{metric}_vs_{reference}"
    if column not in table:
        return []
    out = []
    for row in table.to_dict("records"):
        value = row[column]
        if value is None or not np.isfinite(value):
            continue
        out.append(Difference(row["configuration"], metric, reference, float(value),
                              float(row[f"{column}_ci_lower"]),
                              float(row[f"{column}_ci_upper"])))
    return out


def best_sentences(table: pd.DataFrame) -> list[str]:
    """The best configuration by native Dice and by presence balanced accuracy (all labels)."""
    full = _largest_fraction(table)
    out = []
    for metric, what in HEADLINE:
        row = _best(full, metric)
        if row is None:
            continue
        ties = [t for t in full[np.isclose(full[metric], row[metric])]["configuration"]
                if t != row["configuration"]]
        tie_text = ("" if not ties else f"; tied with {', '.join(ties)}" if len(ties) <= 3
                    else f"; tied with {len(ties)} other configurations")
        out.append(f"Highest {what}: {row['configuration']} at {row[metric]:.3f} "
                   f"({_interval(row, metric)}, {_count(row, metric)}){tie_text}; the "
                   "highest need not differ from the rest, see the paired differences.")
    return out


def difference_sentences(table: pd.DataFrame) -> list[str]:
    """Pre-training against scratch, strategies against full, with all labels."""
    full = _largest_fraction(table)
    out = []
    if SCRATCH not in set(full["method"]):
        out.append("Scratch is not part of this grid, so the effect of pre-training is not "
                   "measured; add --methods scratch.")
    else:
        for metric, name in HEADLINE:
            out.append(_comparison(differences(full, metric, "scratch"), name,
                                   "pre-trained configurations against scratch with the "
                                   "same strategy"))
    if "full" in set(full["strategy"]) and len(set(full["strategy"])) > 1:
        for metric, name in HEADLINE:
            out.append(_comparison(differences(full, metric, "full"), name,
                                   "each strategy against full fine-tuning of the same "
                                   "initialisation"))
    return [s for s in out if s]


def label_sentences(table: pd.DataFrame) -> list[str]:
    """Pre-training against scratch at each label fraction (when the study has several)."""
    fractions = sorted(set(table["label_fraction"]))
    if len(fractions) < 2 or SCRATCH not in set(table["method"]):
        return []
    out = []
    for fraction in fractions:
        part = table[table["label_fraction"] == fraction]
        labelled = float(part["n_labelled_participants"].mean())
        for metric, name in HEADLINE:
            found = differences(part, metric, "scratch")
            if not found:
                continue
            called = [d for d in found if d.called]
            where = (f"With {fraction:.0%} of the training labels ({labelled:.0f} labelled "
                     f"participants), {name}")
            if called:
                out.append(where + ": " + "; ".join(
                    f"{d.text()}, {d.called} than scratch" for d in called) + "; no other "
                    "pre-trained configuration differs from scratch.")
            else:
                best = max(found, key=lambda d: d.estimate if metric not in LOWER_IS_BETTER
                           else -d.estimate)
                out.append(where + f": no pre-trained configuration differs from scratch "
                           f"(every paired interval includes 0; the largest gain is "
                           f"{best.text()}).")
    return out


def seed_sentences(table: pd.DataFrame) -> list[str]:
    """How much the training seed moves the scores."""
    seeds = int(table["n_seeds"].max())
    if seeds < 2:
        return ["Each configuration ran with one training seed, so the spread due to training "
                "randomness is not measured; set [study] seeds to measure it."]
    out = []
    for metric, name in HEADLINE:
        column = f"{metric}_seed_sd"
        values = table[column].astype(float)
        if not np.isfinite(values).any():
            continue
        row = table.loc[values.idxmax()]
        out.append(f"Over {seeds} training seeds the standard deviation of {name} was "
                   f"{np.nanmedian(values):.3f} (median over rows), at most "
                   f"{row[column]:.3f} ({row['configuration']}); scores are means over "
                   "the seeds.")
    return out


def cost_sentences(table: pd.DataFrame) -> list[str]:
    """Time, memory and parameter cost of the configurations (all labels)."""
    table = _largest_fraction(table)
    out = []
    fast, slow = _extremes(table, "finetune_seconds")
    if fast is not None:
        out.append(f"Fine-tuning took from {fast['finetune_seconds']:.1f} s "
                   f"({fast['configuration']}) to {slow['finetune_seconds']:.1f} s "
                   f"({slow['configuration']}).")
    pretrained = table[table["method"] != SCRATCH].drop_duplicates("method")
    if not pretrained.empty:
        times = ", ".join(f"{r['method']} {r['pretrain_seconds']:.1f} s"
                          for r in pretrained.to_dict("records"))
        out.append(f"Each pre-training ran once and is shared by its strategies, label "
                   f"fractions and seeds: {times}.")
    light, heavy = _extremes(table, "peak_memory_mb")
    if light is not None:
        kind = ("GPU memory allocated by tensors" if light["memory_kind"] == "cuda_max_allocated"
                else "peak resident memory of the fine-tuning process, interpreter and "
                     "crops included")
        out.append(f"Peak memory ({kind}) ranged from {light['peak_memory_mb']:,.0f} MiB "
                   f"({light['configuration']}) to {heavy['peak_memory_mb']:,.0f} MiB "
                   f"({heavy['configuration']}).")
    shares = table.groupby("strategy", sort=False)["trainable_fraction"].mean()
    if len(shares):
        out.append("Share of the network's parameters that train: " + ", ".join(
            f"{s} {v:.1%}" for s, v in shares.items()) + ".")
    return out


def caveats(table: pd.DataFrame) -> list[str]:
    """What limits the conclusions."""
    n_test = int(table["n_test_participants"].max())
    n_hemispheres = int(table["n_test_hemispheres"].max())
    folds = int(table["n_folds"].max())
    text = (f"Scores are on {n_test} held-out participant{'s' if n_test != 1 else ''} "
            f"({n_hemispheres} hemispheres) on the native T1w grid"
            + (f", pooled over {folds} folds" if folds > 1 else "")
            + "; intervals are 95 % bootstrap intervals over participants, differences "
              "are paired on the same resamples.")
    if n_test < SMALL_TEST:
        text += (f" With fewer than {SMALL_TEST} test participants only large differences "
                 "can be called.")
    return [text]


def _comparison(found: list[Difference], name: str, what: str) -> str:
    if not found:
        return ""
    called = [d for d in found if d.called]
    if not called:
        return (f"{_first_upper(name)}, {what}: no difference is established (every paired "
                f"95 % interval includes 0, {len(found)} comparisons).")
    better = [d for d in called if d.called == "better"]
    worse = [d for d in called if d.called == "worse"]
    parts = []
    if better:
        parts.append("better: " + "; ".join(d.text() for d in better))
    if worse:
        parts.append("worse: " + "; ".join(d.text() for d in worse))
    return (f"{_first_upper(name)}, {what}: " + "; ".join(parts)
            + f"; the other {len(found) - len(called)} of {len(found)} comparisons include 0.")


def _first_upper(text: str) -> str:
    return text[:1].upper() + text[1:]


def _largest_fraction(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["label_fraction"] == table["label_fraction"].max()]


def _best(table: pd.DataFrame, metric: str) -> pd.Series | None:
    values = table[metric].astype(float)
    if not np.isfinite(values).any():
        return None
    return table.loc[values.idxmin() if metric in LOWER_IS_BETTER else values.idxmax()]


def _extremes(table: pd.DataFrame, column: str) -> tuple[pd.Series | None, pd.Series | None]:
    values = table[column].astype(float)
    if not np.isfinite(values).any():
        return None, None
    return table.loc[values.idxmin()], table.loc[values.idxmax()]


def _interval(row: pd.Series, metric: str) -> str:
    low, high = row[f"{metric}_ci_lower"], row[f"{metric}_ci_upper"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    return f"95 % CI {low:.3f} to {high:.3f}"


def _count(row: pd.Series, metric: str) -> str:
    return f"{row[f'{metric}_n']:.0f} hemispheres"
