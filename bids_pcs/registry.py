"""Plug-in registries: a fifth pre-training method or fine-tuning strategy is one new file.

A :class:`Registry` maps names to classes registered with its ``register``
decorator, and finds them by importing every module of a package once, so a
new module in ``bids_pcs/pretraining/`` or ``bids_pcs/finetuning/strategies/``
is picked up without editing a list.

Usage::

    METHODS = Registry("pre-training method", "bids_pcs.pretraining", shared={"base"})

    @METHODS.register
    class Reconstruction(Objective):
        name = "reconstruction"

    METHODS.get("reconstruction")  # -> Reconstruction
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable
from typing import Generic, TypeVar

from bids_pcs.config import RecipeError

T = TypeVar("T", bound=type)


class Registry(Generic[T]):
    """Named classes of one kind, discovered from the modules of one package.

    Args:
        kind: what the classes are, for error messages ("fine-tuning strategy").
        package: dotted name of the package whose modules define them.
        shared: module names in that package that hold shared code, not plug-ins.
    """

    def __init__(self, kind: str, package: str, shared: Iterable[str] = ("base",)) -> None:
        self.kind = kind
        self.package = package
        self.shared = frozenset(shared)
        self._classes: dict[str, T] = {}
        self._discovered = False

    def register(self, cls: T) -> T:
        """Class decorator: make ``cls`` selectable by its ``name`` attribute."""
        name = getattr(cls, "name", "")
        if not name:
            raise ValueError(f"{cls.__name__} needs a non-empty name")
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"two {self.kind}s are named {name!r}")
        self._classes[name] = cls
        return cls

    def names(self) -> list[str]:
        """Sorted names of every registered class."""
        self._discover()
        return sorted(self._classes)

    def get(self, name: str) -> T:
        """The class registered as ``name``; a :class:`RecipeError` names the valid ones."""
        self._discover()
        if name not in self._classes:
            raise RecipeError(
                f"{self.kind.capitalize()} {name!r} is unknown; use one of "
                f"{', '.join(sorted(self._classes))}."
            )
        return self._classes[name]

    def __contains__(self, name: object) -> bool:
        self._discover()
        return name in self._classes

    def _discover(self) -> None:
        # import every plug-in module once, so their register decorators run
        if self._discovered:
            return
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            if info.name not in self.shared:
                importlib.import_module(f"{self.package}.{info.name}")
        self._discovered = True
