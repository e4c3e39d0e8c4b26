"""A model carries its recipe: the settings its crops were made with, and how to apply them.

A model only works on crops made as its training crops were: the same
template, crop geometry and intensity normalisation, and the same class list.
Its ``model.json`` records those sections, and ``recipe`` records the recipe's
name and the registration settings (how the crops were made), so that
``participant --model DIR`` can take all of them from the model
(:func:`model_overrides`) unless the command line says otherwise.  Where the
run's settings and the model's disagree on what must match
(:data:`MUST_MATCH`), :func:`first_conflict` finds it and
:func:`conflict_sentence` says so in one sentence naming both values.

Usage::

    card["recipe"] = card_recipe(settings)                  # when a model is saved
    overrides = model_overrides(card)                      # {"crop": {...}, "template": ...}
    conflict = first_conflict(card, settings.to_dict())    # None, or what differs
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# what a model decides about a run that infers with it
MODEL_SECTIONS: tuple[str, ...] = ("template", "crop", "registration", "intensity", "labels")
# what must be equal for the network to see what it was trained on
MUST_MATCH: dict[str, tuple[str, ...] | None] = {
    "template": None,  # None: every key of the section
    "crop": None,
    "intensity": None,
    "labels": ("classes",),
}
_DERIVED = {"crop": ("shape_vox",)}  # recorded for readers, not settings
# recorded, but a property of the training data, not of the model: whether the
# images of a new dataset are skull-stripped is that dataset's own setting
_OF_THE_DATA = {"registration": ("skull_stripped",)}


@dataclass(frozen=True)
class Conflict:
    """One setting on which a model and a run disagree."""

    section: str
    key: str
    model_value: Any
    run_value: Any


def card_recipe(settings_dict: dict[str, Any], recipe: str) -> dict[str, Any]:
    """The ``recipe`` entry of a model card: the recipe's name and how the crops were made.

    The template, crop, intensity and label sections live beside it at the top
    of the card (they are read by every model check).
    """
    return {"name": recipe, "registration": dict(settings_dict["registration"])}


def model_overrides(card: dict[str, Any]) -> dict[str, Any]:
    """The settings sections a model brings to a run (same nesting as a recipe)."""
    out: dict[str, Any] = {}
    for section in MODEL_SECTIONS:
        values = ((card.get("recipe") or {}).get(section) if section == "registration"
                  else card.get(section))
        if isinstance(values, dict):
            out[section] = {k: v for k, v in values.items()
                            if k not in (*_DERIVED.get(section, ()),
                                         *_OF_THE_DATA.get(section, ()))}
    return out


def recipe_name(card: dict[str, Any]) -> str | None:
    """The name (or TOML path) of the recipe a model was trained with, if recorded."""
    name = (card.get("recipe") or {}).get("name")
    return name if isinstance(name, str) and name else None


def first_conflict(card: dict[str, Any], settings_dict: dict[str, Any]) -> Conflict | None:
    """The first setting that must match (:data:`MUST_MATCH`) on which model and run differ."""
    theirs = model_overrides(card)
    for section, keys in MUST_MATCH.items():
        model_values = theirs.get(section)
        if model_values is None:
            continue
        run_values = settings_dict.get(section, {})
        for key in keys or sorted(set(model_values) | set(run_values)):
            if _plain(model_values.get(key)) != _plain(run_values.get(key)):
                return Conflict(section, key, model_values.get(key), run_values.get(key))
    return None


def conflict_sentence(conflict: Conflict, model_dir: Any, source: str = "this run") -> str:
    """One sentence naming both values and the way out."""
    return (f"The model in {model_dir} was trained with [{conflict.section}] {conflict.key} = "
            f"{_show(conflict.model_value)} but {source} gives {_show(conflict.run_value)}; "
            "use the recipe it was trained with (leave out --recipe and --set to take the "
            "model's settings) or a model trained with these.")


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _show(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)
