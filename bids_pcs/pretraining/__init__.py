"""Self-supervised pre-training: one objective class per method, chosen by name.

Every module of this package that defines an :class:`~bids_pcs.training.objective.Objective`
subclass decorated with :func:`~bids_pcs.pretraining.base.register` is found
automatically, so adding a method is adding one file.

Usage::

    from bids_pcs.pretraining import get_objective, available_methods
    objective = get_objective(settings.pretrain.method, settings.pretrain.options)
"""

from bids_pcs.pretraining.base import available_methods, get_objective, register

__all__ = ["available_methods", "get_objective", "register"]
