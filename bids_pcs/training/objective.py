"""What the training engine asks of a training objective.

An objective is a small :class:`torch.nn.Module` that owns whatever it needs
besides the network (pretext heads, a discriminator, a timestep embedding, loss
modules) and turns one batch into a dictionary of losses.  The engine owns
everything else: data, optimisers, mixed precision, accumulation, logging,
checkpoints, DDP.  The four pre-training methods are objectives; supervised
fine-tuning is one more.

Usage::

    class MyObjective(Objective):
        name = "my-method"

        def setup(self, network):
            self.head = nn.Conv3d(network.feature_channels, 1, 1)

        def losses(self, batch, network, phase):
            out = network(batch["image"], heads=False)
            loss = F.l1_loss(self.head(out["features"]).float(), batch["image"])
            return {"loss": loss}
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from bids_pcs.config import RecipeError

Batch = dict[str, torch.Tensor]


class Objective(nn.Module, abc.ABC):
    """Base class of every training objective (one file per method).

    Class attributes:
        name: the registry name (``settings.pretrain.method``).
        phases: optimisation phases per batch, in order.  One phase (``"main"``)
            for most objectives; ``("generator", "discriminator")`` for
            adversarial training.  Each phase has its own optimiser.
        defaults: the method's hyper-parameters; ``options`` may override any
            of them and nothing else.

    Args:
        options: per-method hyper-parameters (``settings.pretrain.options[name]``).

    Example::

        objective = get_objective("reconstruction")({"mask_ratio": 0.5})
        objective.setup(network)
        losses = objective.losses(batch, network, "main")  # {"loss": ..., "l1": ...}
    """

    name: ClassVar[str] = ""
    phases: ClassVar[tuple[str, ...]] = ("main",)
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, options: dict[str, Any] | None = None) -> None:
        super().__init__()
        options = dict(options or {})
        unknown = sorted(set(options) - set(self.defaults))
        if unknown:
            raise RecipeError(
                f"Unknown option(s) {', '.join(unknown)} for method {self.name!r}; valid ones "
                f"are {', '.join(sorted(self.defaults)) or 'none'}."
            )
        self.options: dict[str, Any] = {**self.defaults, **options}

    def setup(self, network: nn.Module) -> None:
        """Build the objective's own modules, sized to ``network``; called once, before training."""

    @abc.abstractmethod
    def losses(self, batch: Batch, network: nn.Module, phase: str) -> dict[str, torch.Tensor]:
        """Losses of one batch in one phase; ``"loss"`` is the one back-propagated.

        Other entries (detached or not) are logged as they are.  Compute losses in
        float32 (cast network outputs with ``.float()``): the engine runs this under
        bf16 autocast on CUDA.
        """

    def trainable_names(self, network: nn.Module) -> list[str]:
        """Network parameters this objective trains by default.

        Pre-training trains the backbone (``encoder`` and ``decoder``); the task
        ``heads`` get no gradient from a pretext task and stay frozen. The engine
        accepts another rule (a fine-tuning strategy) in its place.
        """
        return [n for n, _ in network.named_parameters() if not n.startswith("heads.")]

    def phase_parameters(self, phase: str) -> list[nn.Parameter]:
        """The objective's own parameters optimised in ``phase``.

        The network's trainable parameters always belong to the first phase.
        """
        return [p for p in self.parameters() if p.requires_grad]

    def reseed(self, seed: int) -> None:
        """Seed the objective's own random generators (e.g. MONAI transforms); once per epoch."""

    def summary(self) -> dict[str, Any]:
        """What model.json records about this objective."""
        return {"name": self.name, "phases": list(self.phases), "options": dict(self.options)}


def float32(device: torch.device) -> contextlib.AbstractContextManager:
    """Turn autocast off inside a loss whose own convolutions need full precision (SSIM)."""
    return torch.autocast(device_type=device.type, enabled=False)


def count_parameters(params: Iterable[nn.Parameter]) -> int:
    """Number of scalars in ``params``."""
    return sum(p.numel() for p in params)
