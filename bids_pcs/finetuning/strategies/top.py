"""``top``: only the task heads train (linear probing of a frozen backbone)."""

from __future__ import annotations

from bids_pcs.finetuning.strategies.base import Strategy, register


@register
class Top(Strategy):
    """Train ``heads.segmentation`` and ``heads.classification``; freeze encoder and decoder.

    Example::

        Top().trainable_names(network)  # every name starts with "heads."
    """

    name = "top"
    definition = ("Only the task heads train (heads.segmentation, the 1x1x1 voxel classifier "
                  "on the decoder features, and heads.classification, the MLP on the pooled "
                  "bottleneck); every encoder and decoder parameter is frozen.")
    trained_groups = ("heads",)
