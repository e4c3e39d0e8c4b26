"""``decoder``: the decoder and the heads train; the encoder is frozen."""

from __future__ import annotations

from bids_pcs.finetuning.strategies.base import Strategy, register


@register
class Decoder(Strategy):
    """Train ``decoder`` and ``heads``; freeze ``encoder`` (its skips and bottleneck).

    Example::

        Decoder().trainable_names(network)  # names under "decoder." and "heads."
    """

    name = "decoder"
    definition = ("The decoder (up-sampling path) and both task heads train; every encoder "
                  "parameter (for SwinUNETR the Swin transformer and the convolutional skip "
                  "blocks encoder1-4 and encoder10) is frozen.")
    trained_groups = ("decoder", "heads")
