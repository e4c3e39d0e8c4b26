"""A short reading of the study's results, written from the numbers of the table.

Nothing here is fixed text about which method wins: every sentence is built
from the rows of the results table, so the page says what *this* run found.

- :func:`best_sentences`: the best configuration for segmentation (Dice) and
  for the presence call, with their intervals;
- :func:`pretraining_effects`: per pre-training method, the difference from
  training from scratch with the same strategy (Dice and presence accuracy),
  and whether the 95 % intervals separate;
- :func:`cost_sentences`: the spread of fine-tuning time and peak memory, the
  cost of the pre-trainings and the parameter share of each strategy;
- :func:`caveats`: what limits the conclusions (test size, folds).

Usage::

    for sentence in reading(table):
        print(sentence)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bids_pcs.study.plan import SCRATCH

SMALL_TEST = 30  # participants; below this intervals are wide
TOO_FEW_TO_SEPARATE = 5  # participants; below this a bootstrap interval means little


@dataclass(frozen=True)
class Effect:
    """A pre-trained configuration against scratch with the same strategy.

    Args:
        method, strategy: the pre-trained configuration.
        metric: the score compared.
        difference: pre-trained minus scratch.
        separated: True when the two 95 % intervals do not overlap.
    """

    method: str
    strategy: str
    metric: str
    difference: float
    separated: bool


def reading(table: pd.DataFrame) -> list[str]:
    """Every sentence of the reading, in page order."""
    if table.empty:
        return ["No configuration finished, so there is nothing to read yet."]
    return [*best_sentences(table), *effect_sentences(table), *cost_sentences(table),
            *caveats(table)]


def best_sentences(table: pd.DataFrame) -> list[str]:
    """The best configuration by Dice and by presence accuracy."""
    out = []
    for metric, what in (("dice", "segmentation (test Dice)"),
                         ("presence_accuracy", "the presence call (test accuracy)")):
        row = _best(table, metric)
        if row is None:
            continue
        ties = [t for t in table[np.isclose(table[metric], row[metric])]["configuration"]
                if t != row["configuration"]]
        tie_text = ("" if not ties else f"; tied with {', '.join(ties)}" if len(ties) <= 3
                    else f"; tied with {len(ties)} other configurations")
        out.append(f"Best for {what}: {row['configuration']} at {row[metric]:.3f} "
                   f"({_interval(row, metric)}){tie_text}.")
    return out


def pretraining_effects(table: pd.DataFrame, metric: str = "dice") -> list[Effect]:
    """Each pre-trained configuration against scratch with the same strategy."""
    scratch = {row["strategy"]: row for row in table.to_dict("records")
               if row["method"] == SCRATCH}
    effects = []
    for row in table.to_dict("records"):
        base = scratch.get(row["strategy"])
        if row["method"] == SCRATCH or base is None:
            continue
        if not (np.isfinite(row[metric]) and np.isfinite(base[metric])):
            continue
        separated = (row[f"{metric}_ci_lower"] > base[f"{metric}_ci_upper"]
                     or row[f"{metric}_ci_upper"] < base[f"{metric}_ci_lower"])
        effects.append(Effect(row["method"], row["strategy"], metric,
                              float(row[metric] - base[metric]), bool(separated)))
    return effects


def effect_sentences(table: pd.DataFrame) -> list[str]:
    """How each pre-training method compares with scratch, over the strategies."""
    if SCRATCH not in set(table["method"]):
        return ["Scratch is not part of this grid, so the effect of pre-training is not "
                "measured; add --methods scratch."]
    out = []
    for metric, name in (("dice", "Dice"), ("presence_accuracy", "presence accuracy")):
        effects = pretraining_effects(table, metric)
        if not effects:
            continue
        parts = []
        for method in dict.fromkeys(e.method for e in effects):
            mine = [e for e in effects if e.method == method]
            better = sum(e.difference > 0 for e in mine)
            parts.append(f"{method} {np.mean([e.difference for e in mine]):+.3f} "
                         f"(better in {better} of {len(mine)} strategies)")
        separated = [e for e in effects if e.separated]
        n_test = int(table["n_test_participants"].min())
        if n_test < TOO_FEW_TO_SEPARATE:
            verdict = (f"with {n_test} test participant{'s' if n_test != 1 else ''} the "
                       "bootstrap intervals cannot tell configurations apart")
        else:
            verdict = ("the 95 % intervals overlap for every pair, so no difference from scratch "
                       "is established on this test set" if not separated else
                       "the intervals separate for " + ", ".join(
                           f"{e.method}-{e.strategy} "
                           f"({'above' if e.difference > 0 else 'below'} scratch)"
                           for e in separated))
        out.append(f"Pre-training against scratch with the same strategy, mean difference "
                   f"in test {name}: {'; '.join(parts)}; {verdict}.")
    return out


def cost_sentences(table: pd.DataFrame) -> list[str]:
    """Time, memory and parameter cost of the configurations."""
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
        out.append(f"Each pre-training ran once and is shared by its strategies: {times}.")
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
    ratio = _time_ratio(table, "top", "full")
    if ratio is not None:
        out.append(f"Top tuning took {ratio:.2f} times the fine-tuning time of full tuning "
                   "on average over the initialisations.")
    return out


def caveats(table: pd.DataFrame) -> list[str]:
    """What limits the conclusions."""
    n_test = int(table["n_test_participants"].max())
    n_crops = int(table["n_test_crops"].max())
    folds = int(table["n_folds"].max())
    text = (f"Scores are on {n_test} held-out participant{'s' if n_test != 1 else ''} "
            f"({n_crops} hemispheres)"
            + (f", pooled over {folds} folds" if folds > 1 else "")
            + "; intervals are 95 % bootstrap intervals over participants.")
    if n_test < SMALL_TEST:
        text += (f" With fewer than {SMALL_TEST} test participants the intervals are wide: "
                 "read differences between configurations as indicative only.")
    return [text]


def _best(table: pd.DataFrame, metric: str) -> pd.Series | None:
    values = table[metric].astype(float)
    if not np.isfinite(values).any():
        return None
    return table.loc[values.idxmax()]


def _extremes(table: pd.DataFrame, column: str) -> tuple[pd.Series | None, pd.Series | None]:
    values = table[column].astype(float)
    if not np.isfinite(values).any():
        return None, None
    return table.loc[values.idxmin()], table.loc[values.idxmax()]


def _time_ratio(table: pd.DataFrame, cheap: str, costly: str) -> float | None:
    pivot = table.pivot_table(index="method", columns="strategy", values="finetune_seconds")
    if cheap not in pivot or costly not in pivot:
        return None
    ratios = (pivot[cheap] / pivot[costly]).dropna()
    return float(ratios.mean()) if len(ratios) else None


def _interval(row: pd.Series, metric: str) -> str:
    low, high = row[f"{metric}_ci_lower"], row[f"{metric}_ci_upper"]
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    return f"95 % CI {low:.3f} to {high:.3f}"
