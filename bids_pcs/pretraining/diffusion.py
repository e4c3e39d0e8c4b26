"""Denoising diffusion (DDPM): the backbone predicts the noise added to a crop.

A crop scaled to [-1, 1] is noised to a random timestep with MONAI's
``DDPMScheduler`` (1000 training steps); the backbone, told the timestep,
predicts the noise (MSE).

What fine-tuning inherits is made to match what the backbone learnt on:

- the [-1, 1] scaling (``2x - 1``) is the network's own
  :class:`~bids_pcs.models.network.InputConditioning` (set in :meth:`setup`,
  saved in ``model.json``), so fine-tuning and inference feed the encoder
  ``2x - 1`` too, without any special case in their code;
- the timestep reaches the backbone as a vector added to the bottleneck,
  ``clean + delta(t)``: ``clean`` is the network's parameter
  ``encoder.clean_condition`` and ``delta(t) = g(t) - g(0)`` comes from a
  sinusoidal embedding and a small MLP ``g`` owned by this objective, so at
  t = 0 (a clean crop) the bottleneck gets exactly ``clean``, the vector the
  network adds by itself whenever it is given no condition.  A clean crop at
  fine-tuning is thus decoded with the t = 0 conditioning it was trained with,
  and since the vector lives in the encoder group, the top, decoder and LoRA
  strategies keep it frozen with the encoder;
- a FiLM scale and shift of the decoder's features (``1 + a(t) - a(0)``,
  ``b(t) - b(0)``) feeds the pretext head only; it is the identity at t = 0, so
  the features the task heads read are those the decoder produced in training.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from monai.networks.schedulers import DDPMScheduler
from torch import nn

from bids_pcs.models.network import InputConditioning
from bids_pcs.pretraining.base import PretextHead, register
from bids_pcs.training.objective import Batch, Objective


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: float = 10_000.0,
                       ) -> torch.Tensor:
    """Sinusoidal embedding (B, dim) of integer timesteps (as in DDPM / transformers)."""
    half = dim // 2
    frequencies = torch.exp(
        -math.log(max_period) * torch.arange(half, device=timesteps.device) / half)
    angles = timesteps.float()[:, None] * frequencies[None]
    embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    if dim % 2:
        embedding = nn.functional.pad(embedding, (0, 1))
    return embedding


class TimestepConditioning(nn.Module):
    """Timestep -> (bottleneck shift, feature scale, feature shift), relative to t = 0.

    Each output is ``g(t) - g(0)``, so every one is exactly zero at t = 0 (the
    clean-image condition is the network's own, see the module docstring), and
    the output layers start at zero, so at initialisation the backbone behaves
    exactly as without conditioning at every t.

    Args:
        embedding_dim: size of the sinusoidal embedding.
        bottleneck_channels: ``network.bottleneck_channels``.
        feature_channels: ``network.feature_channels``.

    Example::

        conditioning = TimestepConditioning(128, 384, 24)
        shift, scale, bias = conditioning(torch.tensor([10, 500]))
    """

    def __init__(self, embedding_dim: int, bottleneck_channels: int, feature_channels: int,
                 ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        hidden = 4 * embedding_dim
        self.mlp = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU())
        self.to_bottleneck = nn.Linear(hidden, bottleneck_channels)
        self.to_film = nn.Linear(hidden, 2 * feature_channels)
        for layer in (self.to_bottleneck, self.to_film):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        steps = torch.cat([timesteps.new_zeros(1), timesteps])
        hidden = self.mlp(timestep_embedding(steps, self.embedding_dim))
        bottleneck = self.to_bottleneck(hidden)
        film = self.to_film(hidden)
        bottleneck, film = bottleneck[1:] - bottleneck[:1], film[1:] - film[:1]
        scale, shift = film.chunk(2, dim=1)
        return bottleneck, scale, shift


@register
class Diffusion(Objective):
    """DDPM noise prediction with a transferable timestep conditioning.

    Options:
        num_train_timesteps: diffusion steps of the scheduler (1000 as in DDPM).
        schedule: MONAI beta schedule (``linear_beta``, ``scaled_linear_beta``, ...).
        embedding_dim: size of the timestep embedding.

    Example::

        objective = Diffusion()
        objective.setup(network)
        loss = objective.losses({"image": crops}, network, "main")["loss"]
    """

    name: ClassVar[str] = "diffusion"
    defaults: ClassVar[dict[str, Any]] = {
        "num_train_timesteps": 1000,
        "schedule": "linear_beta",
        "embedding_dim": 128,
    }

    # crops are normalised to about [0, 1]; DDPM's noise schedule assumes [-1, 1]
    input_conditioning: ClassVar[InputConditioning] = InputConditioning(
        scale=2.0, offset=-1.0, clean_condition=True)

    def setup(self, network: nn.Module) -> None:
        network.set_input_conditioning(self.input_conditioning)
        self.scheduler = DDPMScheduler(num_train_timesteps=int(self.options["num_train_timesteps"]),
                                       schedule=str(self.options["schedule"]))
        self.conditioning = TimestepConditioning(int(self.options["embedding_dim"]),
                                                 network.bottleneck_channels,
                                                 network.feature_channels)
        self.head = PretextHead(network.feature_channels)

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor,
                      network: nn.Module) -> torch.Tensor:
        """The backbone's estimate of the noise in ``noisy`` (scaled units) at ``timesteps``."""
        delta, scale, bias = self.conditioning(timesteps)
        condition = network.clean_condition[None] + delta
        # the network scales its input itself: hand it the crop-unit image
        features = network(network.unscale_input(noisy), condition=condition,
                           heads=False)["features"]
        features = features * (1 + scale[:, :, None, None, None].to(features.dtype)) \
            + bias[:, :, None, None, None].to(features.dtype)
        return self.head(features)

    def losses(self, batch: Batch, network: nn.Module, phase: str) -> dict[str, torch.Tensor]:
        clean = network.scale_input(batch["image"])
        noise = torch.randn_like(clean)
        timesteps = torch.randint(0, self.scheduler.num_train_timesteps, (clean.shape[0],),
                                  device=clean.device)
        noisy = self.scheduler.add_noise(clean, noise, timesteps)
        predicted = self.predict_noise(noisy, timesteps, network).float()
        loss = nn.functional.mse_loss(predicted, noise)
        return {"loss": loss}
