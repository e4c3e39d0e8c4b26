"""Every score of bids_pcs, in one place: fine-tuning, the study and the tests use these.

Masks:

- :func:`dice` and :func:`hd95` (95th-percentile Hausdorff distance in mm,
  honouring the voxel spacing) compare a predicted and a true binary mask,
  with :func:`monai.metrics.compute_dice` and
  :func:`monai.metrics.compute_hausdorff_distance`.  They take numpy arrays
  or torch tensors (any device) of equal shape.  Empty masks: both empty ->
  Dice 1 and HD95 0 (a correct "no sulcus"); one empty -> Dice 0 and HD95
  ``nan`` (no surface to measure from; aggregate with :func:`numpy.nanmean`
  and report how many were undefined).
- HD95 is MONAI's: surface voxels are the mask minus its erosion, the
  distances from each surface to the other are Euclidean in mm, and the
  larger of the two 95th percentiles is the result.

Presence (absent vs present or prominent) and the three classes:

- classes are given as names (``"absent"``, ``"present"``, ``"prominent"``) or
  as their indices 0, 1, 2; "present" as a *presence* outcome means present
  or prominent (the positive class);
- :func:`presence_metrics` gives accuracy, balanced accuracy, F1,
  sensitivity, specificity and ROC AUC (:func:`monai.metrics.compute_roc_auc`,
  ties counting one half); a value that is undefined on the data
  (sensitivity without any true presence, ROC AUC with one class only, F1
  when nobody is present in truth or prediction) is ``nan``, never a silent 0;
- :func:`classification_metrics` starts from the (n, 3) class probabilities
  of a model: the predicted class is the most probable one, and the presence
  probability ``p_present + p_prominent`` ranks hemispheres for the AUC.

A set of hemispheres: :func:`hemisphere_scores` aggregates per-hemisphere
mask scores and class probabilities into the scores the study and the demo
report, each with the number of hemispheres it rests on (Dice only where the
truth has a sulcus, HD95 only where both masks exist, presence over all).

Confidence intervals: :func:`bootstrap_ci` resamples *participants*, not
hemispheres, since the two hemispheres (and sessions) of one participant are
not independent; the percentile interval is seeded and reproducible.
:func:`bootstrap_draws` keeps every resample's value, so that two
configurations scored on the same participants give a *paired* interval of
their difference (:meth:`BootstrapDraws.difference`).

Usage::

    dice(pred, truth), hd95(pred, truth, spacing=(0.9, 0.9, 1.2))
    m = classification_metrics(["absent", "present"], probabilities)
    ci = bootstrap_ci(lambda rows: presence_metrics(t[rows], p[rows]).accuracy,
                      participants, n_resamples=1000, seed=0)
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bids_pcs.config import PCS_CLASSES

ABSENT = 0  # index of "absent" in PCS_CLASSES; every other class means a sulcus is there


# ----------------------------------------------------------------------- masks

@dataclass(frozen=True)
class MaskMetrics:
    """Agreement of one predicted mask with its truth.

    Args:
        dice: Dice coefficient in [0, 1].
        hd95_mm: 95th-percentile symmetric Hausdorff distance in mm (``nan``
            when exactly one of the masks is empty).
        pred_voxels, true_voxels: sizes of the two masks.
    """

    dice: float
    hd95_mm: float
    pred_voxels: int
    true_voxels: int


def _as_bool_array(mask: Any) -> np.ndarray:
    """numpy bool array from a numpy array or a torch tensor (detached, on CPU)."""
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    return np.asarray(mask).astype(bool, copy=False)


def _pair(pred: Any, truth: Any) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = _as_bool_array(pred), _as_bool_array(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"masks differ in shape: {pred.shape} vs {truth.shape}")
    return pred, truth


def dice(pred: Any, truth: Any) -> float:
    """Dice coefficient ``2|P & T| / (|P| + |T|)``; 1.0 when both masks are empty."""
    from monai.metrics import compute_dice

    pred, truth = _pair(pred, truth)
    # ignore_empty=False: an empty truth scores 1 when the prediction is empty too, else 0
    return float(compute_dice(_one_hot(pred), _one_hot(truth), include_background=True,
                              ignore_empty=False))


def hd95(pred: Any, truth: Any, spacing: Sequence[float] | None = None,
         percentile: float = 95.0) -> float:
    """Symmetric ``percentile``-th Hausdorff distance in mm between two binary masks.

    Args:
        pred, truth: binary masks of equal shape (numpy or torch, 2D or 3D).
        spacing: voxel size along each axis in mm (default 1 mm).
        percentile: 95 for HD95; 100 gives the classic Hausdorff distance.

    Returns:
        0.0 when both masks are empty, ``nan`` when exactly one is.
    """
    from monai.metrics import compute_hausdorff_distance

    pred, truth = _pair(pred, truth)
    spacing_mm = _spacing(spacing, pred.ndim)
    has_pred, has_truth = bool(pred.any()), bool(truth.any())
    if not has_pred and not has_truth:
        return 0.0
    if has_pred != has_truth:
        return float("nan")  # MONAI would warn and give inf: no surface to measure from
    with warnings.catch_warnings():  # MONAI 1.6 warns about an argument it passes itself
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy",
                                category=FutureWarning)
        return float(compute_hausdorff_distance(_one_hot(pred), _one_hot(truth),
                                                include_background=True, percentile=percentile,
                                                spacing=list(spacing_mm)))


def mask_metrics(pred: Any, truth: Any, spacing: Sequence[float] | None = None) -> MaskMetrics:
    """Dice and HD95 of one predicted mask against its truth."""
    pred, truth = _pair(pred, truth)
    return MaskMetrics(dice=dice(pred, truth), hd95_mm=hd95(pred, truth, spacing),
                       pred_voxels=int(pred.sum()), true_voxels=int(truth.sum()))


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or min(values) <= 0:
        raise ValueError(f"spacing must hold {ndim} positive values, not {spacing!r}")
    return values


def _one_hot(mask: np.ndarray):
    """A binary mask as MONAI's (batch, channel, *spatial) float tensor: one item, one class."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


# ---------------------------------------------------------- classes, presence

@dataclass(frozen=True)
class PresenceMetrics:
    """Presence (absent vs present/prominent) scores; ``nan`` where undefined.

    Args:
        n: number of hemispheres scored.
        n_present: hemispheres with a sulcus in truth (present or prominent).
        accuracy: fraction of correct presence calls.
        balanced_accuracy: mean of sensitivity and specificity over the
            outcomes that occur in truth (with one outcome only, its recall).
        f1: ``2 TP / (2 TP + FP + FN)``.
        sensitivity: ``TP / (TP + FN)``, recall of present hemispheres.
        specificity: ``TN / (TN + FP)``, recall of absent hemispheres.
        roc_auc: area under the ROC curve of the presence probability (ties
            count one half); ``nan`` without probabilities or with one class.
        tp, fp, tn, fn: the confusion counts.
    """

    n: int
    n_present: int
    accuracy: float
    balanced_accuracy: float
    f1: float
    sensitivity: float
    specificity: float
    roc_auc: float
    tp: int
    fp: int
    tn: int
    fn: int


@dataclass(frozen=True)
class ClassificationMetrics:
    """Three-class and presence scores of one set of predictions.

    Args:
        accuracy_3class: fraction of hemispheres whose class is exactly right.
        confusion: 3x3 counts, rows = true class, columns = predicted class,
            in the order of ``classes``.
        presence: the presence scores.
        classes: the class names, in index order.
        balanced_accuracy_3class: mean recall over the classes that occur in
            truth (a rare "prominent" class weighs as much as a common one).
        macro_f1_3class: mean F1 over the classes that occur in truth or in
            prediction (a class never predicted scores F1 0, as scikit-learn's
            ``f1_score(average="macro", zero_division=0)``).
    """

    accuracy_3class: float
    confusion: tuple[tuple[int, ...], ...]
    presence: PresenceMetrics
    classes: tuple[str, ...] = PCS_CLASSES
    balanced_accuracy_3class: float = float("nan")
    macro_f1_3class: float = float("nan")


def encode_classes(values: Sequence[str | int] | np.ndarray,
                   classes: Sequence[str] = PCS_CLASSES) -> np.ndarray:
    """Class names or indices (also a torch tensor) -> int array of indices into ``classes``."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        # indices already (the bootstrap's resamples): checked at once, not item by item
        flat = values.ravel().astype(np.int64)
        if flat.size and (flat.min() < 0 or flat.max() >= len(classes)):
            bad = flat[(flat < 0) | (flat >= len(classes))][0]
            raise ValueError(f"class index {bad!r} is not in 0..{len(classes) - 1}")
        return flat
    items = list(np.asarray(values, dtype=object).ravel())
    out = np.empty(len(items), dtype=np.int64)
    for i, value in enumerate(items):
        if isinstance(value, str):
            name = value.strip().lower()
            if name not in classes:
                raise ValueError(f"unknown class {value!r}; expected one of {', '.join(classes)}")
            out[i] = classes.index(name)
        elif isinstance(value, bool) or not float(value).is_integer() or not (
                0 <= int(value) < len(classes)):
            raise ValueError(f"class index {value!r} is not in 0..{len(classes) - 1}")
        else:
            out[i] = int(value)
    return out


def presence_probability(probabilities: Any) -> np.ndarray:
    """``p_present + p_prominent`` of (n, 3) class probabilities, ``p_present`` of (n, 2).

    The binary scheme (absent, present) shares the first two indices of the
    three classes, so both read the same way.
    """
    probs = _as_float_array(probabilities)
    if probs.ndim != 2 or probs.shape[1] not in (2, len(PCS_CLASSES)):
        raise ValueError(f"class probabilities must have shape (n, 3) or (n, 2), not "
                         f"{probs.shape}")
    # summed rather than 1 - p_absent, so that unnormalised scores rank the same way
    return probs[:, 1:].sum(axis=1)


def roc_auc(y_true: Sequence[bool] | np.ndarray, score: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve (MONAI's; ties count one half); ``nan`` with one class."""
    import torch
    from monai.metrics import compute_roc_auc

    truth = np.asarray(y_true, dtype=bool).ravel()
    score = np.asarray(score, dtype=float).ravel()
    if truth.shape != score.shape:
        raise ValueError(f"{truth.size} labels but {score.size} scores")
    if truth.all() or not truth.any():
        return float("nan")  # undefined; MONAI would warn and say the same
    return float(compute_roc_auc(torch.from_numpy(score), torch.from_numpy(truth.astype(np.int64))))


def presence_metrics(true_classes: Sequence[str | int] | np.ndarray,
                     pred_classes: Sequence[str | int] | np.ndarray,
                     presence_score: Sequence[float] | np.ndarray | None = None
                     ) -> PresenceMetrics:
    """Presence scores from true and predicted classes (names or indices).

    Args:
        true_classes, pred_classes: one class per hemisphere.
        presence_score: optional per-hemisphere score that grows with the
            belief that a sulcus is present (the presence probability), for
            the ROC AUC; without it the AUC is ``nan``.
    """
    truth = encode_classes(true_classes) != ABSENT
    pred = encode_classes(pred_classes) != ABSENT
    if truth.shape != pred.shape:
        raise ValueError(f"{truth.size} true classes but {pred.size} predicted ones")
    tp = int(np.sum(truth & pred))
    tn = int(np.sum(~truth & ~pred))
    fp = int(np.sum(~truth & pred))
    fn = int(np.sum(truth & ~pred))
    n = truth.size
    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    recalls = [r for r in (sensitivity, specificity) if not np.isnan(r)]
    auc = float("nan") if presence_score is None else roc_auc(truth, presence_score)
    return PresenceMetrics(
        n=n, n_present=int(truth.sum()),
        accuracy=_ratio(tp + tn, n),
        balanced_accuracy=float(np.mean(recalls)) if recalls else float("nan"),
        f1=_ratio(2 * tp, 2 * tp + fp + fn),
        sensitivity=sensitivity, specificity=specificity, roc_auc=auc,
        tp=tp, fp=fp, tn=tn, fn=fn,
    )


def classification_metrics(true_classes: Sequence[str | int] | np.ndarray,
                           probabilities: Any, *,
                           predicted: Sequence[str | int] | np.ndarray | None = None,
                           presence_score: Sequence[float] | np.ndarray | None = None
                           ) -> ClassificationMetrics:
    """Three-class and presence scores from (n, 3) class probabilities of a model.

    With (n, 2) probabilities of the binary scheme, ``accuracy_3class`` is the
    exact binary accuracy and the confusion is 2x2.

    The predicted class is the most probable one unless ``predicted`` gives
    the classes that were reported (the class rule of
    :mod:`bids_pcs.inference.calls`: the class of the measured length);
    presence is predicted when that class is not "absent". The ROC AUC ranks
    by ``presence_score`` when given (the measured length, for the length
    rule), else by the presence probability ``p_present + p_prominent``.
    """
    probs = _as_float_array(probabilities)
    truth = encode_classes(true_classes)
    score = (presence_probability(probs) if presence_score is None
             else np.asarray(presence_score, dtype=float).ravel())
    if truth.size != probs.shape[0] or score.size != truth.size:
        raise ValueError(f"{truth.size} true classes but {probs.shape[0]} probability rows "
                         f"and {score.size} presence scores")
    pred = np.argmax(probs, axis=1) if predicted is None else encode_classes(predicted)
    if pred.size != truth.size:
        raise ValueError(f"{truth.size} true classes but {pred.size} predicted ones")
    k = probs.shape[1]
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (truth, pred), 1)
    return ClassificationMetrics(
        accuracy_3class=_ratio(int(np.trace(confusion)), truth.size),
        confusion=tuple(tuple(int(v) for v in row) for row in confusion),
        presence=presence_metrics(truth, pred, score),
        balanced_accuracy_3class=_balanced_accuracy(confusion),
        macro_f1_3class=_macro_f1(confusion),
        classes=PCS_CLASSES[:k],
    )


def _balanced_accuracy(confusion: np.ndarray) -> float:
    true_counts = confusion.sum(axis=1)
    occurring = true_counts > 0
    if not occurring.any():
        return float("nan")
    return float(np.mean(np.diag(confusion)[occurring] / true_counts[occurring]))


def _macro_f1(confusion: np.ndarray) -> float:
    tp = np.diag(confusion).astype(float)
    true_counts, pred_counts = confusion.sum(axis=1), confusion.sum(axis=0)
    seen = (true_counts + pred_counts) > 0
    if not seen.any():
        return float("nan")
    return float(np.mean(2 * tp[seen] / (true_counts[seen] + pred_counts[seen])))


def three_class_accuracy(true_classes: Sequence[str | int] | np.ndarray,
                         pred_classes: Sequence[str | int] | np.ndarray) -> float:
    """Fraction of hemispheres whose class (absent/present/prominent) is exactly right."""
    truth, pred = encode_classes(true_classes), encode_classes(pred_classes)
    if truth.shape != pred.shape:
        raise ValueError(f"{truth.size} true classes but {pred.size} predicted ones")
    return _ratio(int(np.sum(truth == pred)), truth.size)


def _ratio(numerator: int, denominator: int) -> float:
    return float(numerator) / denominator if denominator else float("nan")


def _as_float_array(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=float)


# --------------------------------------------------- a set of hemispheres

@dataclass(frozen=True)
class HemisphereScores:
    """Segmentation, presence and class scores of a set of hemispheres, with their counts.

    Each score rests on the hemispheres where it means something, and says how many:

    - ``dice`` over the hemispheres that have a true mask with a sulcus in it
      (``dice_n``): a missed sulcus scores 0, and hemispheres without a sulcus
      (where an empty prediction would score a free 1) do not count;
    - ``hd95_mm`` over those of them where the prediction is not empty
      (``hd95_n``): no surface, no distance; misses show in ``dice`` and in
      the presence sensitivity;
    - presence and the three classes over every hemisphere with a known
      class (``presence.n``); the sensitivity over those with a sulcus by
      class (``presence.n_present``), the specificity over the others.

    Hemispheres without a true mask (class-only labels) count for presence
    and class, never for Dice or HD95; hemispheres without a class (a mask
    only) count for Dice and HD95 only.
    """

    n: int
    dice: float
    dice_n: int
    hd95_mm: float
    hd95_n: int
    presence: PresenceMetrics
    classes: ClassificationMetrics

    def as_dict(self) -> dict[str, float]:
        """Flat scores with their counts (``<score>_n``), as the study tabulates them."""
        p, c = self.presence, self.classes
        n_absent = p.n - p.n_present
        values = {
            "dice": (self.dice, self.dice_n), "hd95_mm": (self.hd95_mm, self.hd95_n),
            "presence_sensitivity": (p.sensitivity, p.n_present),
            "presence_specificity": (p.specificity, n_absent),
            "presence_balanced_accuracy": (p.balanced_accuracy, p.n),
            "presence_auc": (p.roc_auc, p.n), "presence_accuracy": (p.accuracy, p.n),
            "presence_f1": (p.f1, p.n), "accuracy_3class": (c.accuracy_3class, p.n),
            "balanced_accuracy_3class": (c.balanced_accuracy_3class, p.n),
            "macro_f1_3class": (c.macro_f1_3class, p.n),
        }
        out: dict[str, float] = {}
        for name, (value, count) in values.items():
            out[name], out[f"{name}_n"] = float(value), float(count)
        return out


def hemisphere_scores(true_classes: Sequence[str | int | None] | np.ndarray, probabilities: Any,
                      *, dice: Sequence[float] | np.ndarray,
                      hd95_mm: Sequence[float] | np.ndarray,
                      true_voxels: Sequence[int] | np.ndarray,
                      has_mask: Sequence[bool] | np.ndarray | None = None,
                      predicted_classes: Sequence[str | int] | np.ndarray | None = None,
                      presence_score: Sequence[float] | np.ndarray | None = None
                      ) -> HemisphereScores:
    """Scores of a set of hemispheres (see :class:`HemisphereScores` for what counts where).

    Args:
        true_classes: the true class of each hemisphere (name or index); ``None``
            or a negative index where it is not known (it then counts for
            neither presence nor class).
        probabilities: (n, 3) class probabilities of the model.
        dice, hd95_mm: per hemisphere, from :func:`dice` and :func:`hd95`
            (``nan`` where there is no true mask or HD95 is undefined).
        true_voxels: voxels of each true mask (0: no sulcus in the mask).
        has_mask: whether each hemisphere has a true mask at all (default: all).
        predicted_classes, presence_score: the reported class of each hemisphere
            and what ranks it for the AUC (see :func:`classification_metrics`;
            default: the most probable class and the presence probability).
    """
    dice = np.asarray(dice, dtype=float).ravel()
    distances = np.asarray(hd95_mm, dtype=float).ravel()
    voxels = np.asarray(true_voxels).ravel()
    masked = (np.ones(voxels.size, dtype=bool) if has_mask is None
              else np.asarray(has_mask, dtype=bool).ravel())
    if not dice.size == distances.size == voxels.size == masked.size:
        raise ValueError("dice, hd95_mm, true_voxels and has_mask differ in length")
    with_sulcus = masked & (voxels > 0)
    measured = with_sulcus & np.isfinite(distances)
    known, classes_known = _known_classes(true_classes)
    if known.size != dice.size:
        raise ValueError(f"{known.size} classes but {dice.size} mask scores")
    probs = _as_float_array(probabilities)
    predicted = None if predicted_classes is None else encode_classes(predicted_classes)[known]
    ranking = (None if presence_score is None
               else np.asarray(presence_score, dtype=float).ravel()[known])
    classes = (classification_metrics(classes_known, probs[known], predicted=predicted,
                                      presence_score=ranking) if known.any()
               else _no_classes())
    return HemisphereScores(
        n=int(dice.size),
        dice=float(dice[with_sulcus].mean()) if with_sulcus.any() else float("nan"),
        dice_n=int(with_sulcus.sum()),
        hd95_mm=float(distances[measured].mean()) if measured.any() else float("nan"),
        hd95_n=int(measured.sum()),
        presence=classes.presence, classes=classes)


def _known_classes(true_classes: Any) -> tuple[np.ndarray, np.ndarray]:
    """(mask of hemispheres with a known class, their class indices)."""
    if isinstance(true_classes, np.ndarray) and true_classes.dtype.kind in "iu":
        known = true_classes.ravel() >= 0
        return known, encode_classes(true_classes.ravel()[known])
    items = list(np.asarray(true_classes, dtype=object).ravel())
    known = np.array([v is not None and not (isinstance(v, int | np.integer) and v < 0)
                      for v in items], dtype=bool)
    return known, encode_classes([v for v, k in zip(items, known, strict=True) if k])


def _no_classes() -> ClassificationMetrics:
    nan = float("nan")
    presence = PresenceMetrics(n=0, n_present=0, accuracy=nan, balanced_accuracy=nan, f1=nan,
                               sensitivity=nan, specificity=nan, roc_auc=nan, tp=0, fp=0,
                               tn=0, fn=0)
    k = len(PCS_CLASSES)
    return ClassificationMetrics(accuracy_3class=nan, confusion=((0,) * k,) * k,
                                 presence=presence)


# ------------------------------------------------------------------ bootstrap

@dataclass(frozen=True)
class ConfidenceInterval:
    """A point estimate with its percentile bootstrap interval.

    Args:
        estimate: the statistic on all data.
        lower, upper: interval bounds (``nan`` when no resample was defined).
        level: coverage, e.g. 0.95.
        n_resamples: resamples drawn.
        n_defined: resamples on which the statistic was not ``nan`` (the
            interval is taken over those; a resample with one class only has
            no AUC, for instance).
    """

    estimate: float
    lower: float
    upper: float
    level: float
    n_resamples: int
    n_defined: int


@dataclass(frozen=True)
class BootstrapDraws:
    """Statistics on all rows and on every participant resample, kept for pairing.

    Two :class:`BootstrapDraws` made with the same participants, seed and
    number of resamples drew *the same* participants in every resample, so
    the difference of their draws is the paired bootstrap distribution of the
    difference (:meth:`difference`): both configurations judged on the same
    resampled test participants, which removes the between-participant spread
    that two marginal intervals carry twice.

    Args:
        estimate: each statistic on all rows.
        draws: each statistic on every resample, ``(n_resamples,)`` arrays
            (``nan`` where undefined on that resample).
        participants: the distinct participants that were resampled (sorted).
        seed: seed of the resampling.
    """

    estimate: dict[str, float]
    draws: dict[str, np.ndarray]
    participants: tuple[str, ...]
    seed: int

    @property
    def n_resamples(self) -> int:
        return len(next(iter(self.draws.values()))) if self.draws else 0

    def interval(self, name: str, level: float = 0.95) -> ConfidenceInterval:
        """Percentile interval of statistic ``name``."""
        return _percentile_interval(self.estimate[name], self.draws[name], level)

    def difference(self, other: BootstrapDraws, name: str, level: float = 0.95,
                   ) -> ConfidenceInterval:
        """Paired interval of ``self - other`` for statistic ``name``.

        Raises:
            ValueError: the two were not drawn on the same participants with
                the same seed and number of resamples (they would not pair).
        """
        if (self.participants, self.seed, self.n_resamples) != (
                other.participants, other.seed, other.n_resamples):
            raise ValueError("paired bootstrap draws need the same participants, seed and "
                             "number of resamples")
        return _percentile_interval(self.estimate[name] - other.estimate[name],
                                    self.draws[name] - other.draws[name], level)


def bootstrap_draws(statistic: Callable[[np.ndarray], Mapping[str, float]],
                    participants: Sequence[str] | np.ndarray, *, n_resamples: int = 1000,
                    seed: int = 0) -> BootstrapDraws:
    """Statistics on all rows and on ``n_resamples`` participant resamples.

    Args:
        statistic: maps an int array of row indices (rows of the caller's
            data, e.g. hemispheres; repeated rows appear repeatedly) to named
            values, e.g. ``{"accuracy": ..., "dice": ...}``.
        participants: the participant of each row; a resample draws
            participants with replacement and takes all of their rows, so both
            hemispheres (and all sessions) of a participant stay together.
        n_resamples: number of resamples.
        seed: seed of the resampling; the same seed and participants draw the
            same resamples, whatever the order of the rows.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be positive, not {n_resamples}")
    groups = np.asarray(participants, dtype=object).ravel()
    if groups.size == 0:
        raise ValueError("cannot bootstrap without any rows")
    names, group_of_row = np.unique(groups.astype(str), return_inverse=True)
    rows_of_group = [np.flatnonzero(group_of_row == g) for g in range(len(names))]
    estimate = {name: float(value) for name, value in statistic(np.arange(groups.size)).items()}
    draws = {name: np.empty(n_resamples) for name in estimate}
    rng = np.random.default_rng(seed)
    for i in range(n_resamples):
        chosen = rng.integers(0, len(rows_of_group), size=len(rows_of_group))
        values = statistic(np.concatenate([rows_of_group[g] for g in chosen]))
        for name in estimate:
            draws[name][i] = values[name]
    return BootstrapDraws(estimate=estimate, draws=draws,
                          participants=tuple(str(n) for n in names), seed=seed)


def bootstrap_cis(statistic: Callable[[np.ndarray], Mapping[str, float]],
                  participants: Sequence[str] | np.ndarray, *, n_resamples: int = 1000,
                  level: float = 0.95, seed: int = 0) -> dict[str, ConfidenceInterval]:
    """Percentile bootstrap intervals of several statistics, resampling participants.

    See :func:`bootstrap_draws` for the arguments; ``level`` is the coverage.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), not {level}")
    drawn = bootstrap_draws(statistic, participants, n_resamples=n_resamples, seed=seed)
    return {name: drawn.interval(name, level) for name in drawn.estimate}


def _percentile_interval(estimate: float, draws: np.ndarray, level: float,
                         ) -> ConfidenceInterval:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), not {level}")
    alpha = (1.0 - level) / 2.0
    defined = draws[~np.isnan(draws)]
    lower, upper = ((float(np.quantile(defined, alpha)), float(np.quantile(defined, 1 - alpha)))
                    if defined.size else (float("nan"), float("nan")))
    return ConfidenceInterval(estimate=float(estimate), lower=lower, upper=upper, level=level,
                              n_resamples=int(draws.size), n_defined=int(defined.size))


def bootstrap_ci(statistic: Callable[[np.ndarray], float],
                 participants: Sequence[str] | np.ndarray, *, n_resamples: int = 1000,
                 level: float = 0.95, seed: int = 0) -> ConfidenceInterval:
    """Percentile bootstrap interval of one statistic; see :func:`bootstrap_cis`."""
    return bootstrap_cis(lambda rows: {"value": statistic(rows)}, participants,
                         n_resamples=n_resamples, level=level, seed=seed)["value"]
