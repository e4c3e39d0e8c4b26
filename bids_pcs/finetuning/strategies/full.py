"""``full``: every parameter trains."""

from __future__ import annotations

from bids_pcs.finetuning.strategies.base import Strategy, register


@register
class Full(Strategy):
    """Train encoder, decoder and heads (classic fine-tuning, or training from scratch).

    Example::

        len(Full().trainable_names(network)) == len(list(network.parameters()))
    """

    name = "full"
    definition = "Every parameter trains: encoder, decoder and both task heads."
    trained_groups = ("encoder", "decoder", "heads")
