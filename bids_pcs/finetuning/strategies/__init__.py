"""Fine-tuning strategies: four rules that choose the trainable parameters.

Every module of this package that defines a :class:`Strategy` subclass decorated
with :func:`register` is found automatically, so a fifth strategy is one file.

Usage::

    from bids_pcs.finetuning.strategies import get_strategy, available_strategies
    strategy = get_strategy(settings.finetune.strategy, settings.finetune)
"""

from bids_pcs.finetuning.strategies.base import (
    Strategy,
    available_strategies,
    frozen_modules,
    get_strategy,
    register,
)

__all__ = ["Strategy", "available_strategies", "frozen_modules", "get_strategy", "register"]
