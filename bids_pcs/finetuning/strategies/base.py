"""Registry of fine-tuning strategies and what every strategy shares.

A strategy is a *rule that chooses the trainable parameters* of a
:class:`~bids_pcs.models.network.PcsNetwork` (plus, for LoRA, the adapters it
adds first and merges away at export).  The training engine freezes every
parameter outside the rule (``requires_grad=False``, left out of the
optimiser), so frozen weights stay bit-identical; :func:`frozen_modules` names
the parts whose parameters are all frozen so that the supervised objective runs
them in eval mode (no dropout noise, no running statistics updated).

Usage::

    strategy = get_strategy("decoder", settings.finetune)
    network = strategy.prepare(network)             # LoRA injects adapters here
    names = strategy.trainable_names(network)       # what the engine trains
    plain = strategy.export(network)                # a plain PcsNetwork to save
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from torch import nn

from bids_pcs.config import FinetuneSettings
from bids_pcs.registry import Registry

GROUPS: tuple[str, ...] = ("encoder", "decoder", "heads")


class Strategy:
    """Base class of a fine-tuning strategy (one file per strategy, ``@register``-ed).

    Class attributes:
        name: the registry name (``settings.finetune.strategy``).
        definition: one sentence saying exactly what trains; written into
            ``model.json`` and the docs.
        trained_groups: the top-level groups (``encoder``, ``decoder``,
            ``heads``) whose every parameter trains.

    Args:
        settings: ``settings.finetune`` (LoRA reads its rank, alpha and dropout).

    Example::

        strategy = get_strategy("top")
        strategy.trainable_names(network)  # ["heads.segmentation.conv.conv.weight", ...]
    """

    name: ClassVar[str] = ""
    definition: ClassVar[str] = ""
    trained_groups: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: FinetuneSettings | None = None) -> None:
        self.settings = settings or FinetuneSettings()

    def prepare(self, network: nn.Module) -> nn.Module:
        """The module to train (the network itself unless the strategy adds parameters)."""
        return network

    def trainable_names(self, network: nn.Module) -> list[str]:
        """Names of the parameters of ``network`` (as prepared) that train."""
        prefixes = tuple(f"{group}." for group in self.trained_groups)
        return [n for n, _ in network.named_parameters() if n.startswith(prefixes)]

    def export(self, network: nn.Module) -> nn.Module:
        """The plain network to save after training (LoRA merges its adapters here)."""
        return network

    def summary(self, network: nn.Module) -> dict[str, Any]:
        """What ``model.json`` records: the rule and its parameter counts on ``network``.

        Called on the prepared network; for LoRA the adapters count as
        parameters of the network being trained (``total_parameters``), and
        ``base_parameters`` counts the plain network that is saved.
        """
        trainable = set(self.trainable_names(network))
        params = dict(network.named_parameters())
        counts = {group: {"trainable": 0, "total": 0} for group in GROUPS}
        for name, param in params.items():
            group = counts.setdefault(name.split(".", 1)[0], {"trainable": 0, "total": 0})
            group["total"] += param.numel()
            if name in trainable:
                group["trainable"] += param.numel()
        n_trainable = sum(params[n].numel() for n in trainable)
        base = sum(p.numel() for n, p in params.items() if not is_adapter_parameter(n))
        return {
            "name": self.name,
            "definition": self.definition,
            "trainable_parameters": n_trainable,
            "total_parameters": sum(p.numel() for p in params.values()),
            "base_parameters": base,
            "trainable_fraction": n_trainable / base if base else 0.0,
            "groups": counts,
            "frozen_modules_in_eval_mode": frozen_modules(network, trainable),
        }


def is_adapter_parameter(name: str) -> bool:
    """True for parameters a strategy added (LoRA's ``lora_A`` / ``lora_B``)."""
    return ".lora_" in name


def frozen_modules(network: nn.Module, trainable: Iterable[str]) -> list[str]:
    """The largest submodules of ``network`` none of whose parameters train.

    Those run in eval mode during fine-tuning, so a frozen part computes what it
    will compute at inference (dropout off, normalisation statistics not
    updated).  Parameter-free modules (dropout, activations) inside a part that
    partly trains keep the training mode of their parent.

    Args:
        network: the (prepared) network.
        trainable: names of the parameters that train.

    Returns:
        Module names, outermost first (``["encoder"]`` for the decoder strategy).
    """
    trainable = set(trainable)
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        names = [f"{prefix}{n}" for n, _ in module.named_parameters()]
        if names and not any(n in trainable for n in names):
            out.append(prefix.rstrip("."))
            return
        for child_name, child in module.named_children():
            visit(f"{prefix}{child_name}.", child)

    for child_name, child in network.named_children():
        visit(f"{child_name}.", child)
    return out


STRATEGIES: Registry[type[Strategy]] = Registry("fine-tuning strategy",
                                                 "bids_pcs.finetuning.strategies")


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` selectable as ``settings.finetune.strategy = cls.name``."""
    if not cls.definition:
        raise ValueError(f"{cls.__name__} needs a definition")
    return STRATEGIES.register(cls)


def available_strategies() -> list[str]:
    """Names of the fine-tuning strategies."""
    return STRATEGIES.names()


def get_strategy(name: str, settings: FinetuneSettings | None = None) -> Strategy:
    """A new strategy object for ``name`` (``settings.finetune.strategy``).

    Raises:
        RecipeError: an unknown name.
    """
    return STRATEGIES.get(name)(settings)
