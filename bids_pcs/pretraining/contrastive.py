"""Contrastive learning (MoCo v2 with a memory queue) plus masked restoration on the decoder.

Per crop, two random views (:class:`~bids_pcs.pretraining.views.RandomViews`:
a random sub-box resampled to the crop's shape, small rotations, gamma,
intensity, blur, noise; batched on the training device in float32):

- the *query* view, with random 3D blocks hidden, goes through the whole
  network: its encoder's multi-scale features (skips and bottleneck, each
  average-pooled onto a coarse grid) pass through a projection head to the
  query embedding, and its decoder's features through a 1x1x1 pretext head
  restore the hidden blocks of the view (L1 + SSIM over the hidden voxels, the
  loss of :mod:`~bids_pcs.pretraining.reconstruction`; the source paper's
  contrastive mode adds an SSIM reconstruction term too).  The decoder thus
  learns, and the encoder learns from both terms;
- the *key* view goes, without gradients, through a momentum copy of the
  encoder and of the projection head (exponential moving average of the
  trained ones, MoCo): its embedding is the query's positive.

Negatives are the keys of every other crop of the step, gathered from every
process under DDP, and a queue of the last ``queue_size`` keys (InfoNCE,
temperature ``temperature``).  A queue needs the momentum encoder: keys made
by the trained encoder itself change as fast as it does, so the keys of a few
steps ago would be stale (MoCo, He et al. 2020, report that training fails
without momentum); with momentum m the key encoder averages about 1/(1-m)
steps, and ``queue_size`` should hold no more steps than that.  Queue entries
of the query's own crop (an older key of the same crop) are not used as
negatives.  The projection head has no batch normalisation: with a queue,
statistics shared within a batch would let the query tell its batch's keys
from the queue's (MoCo's shuffled-BN issue), and a batch of two is no
statistic anyway; the descriptors are standardised with running statistics
instead (:class:`RunningStandardiser`).

Cost per step: one forward and backward pass of the network on the query views
and one encoder forward pass on the key views.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
import torch.distributed as dist
from torch import nn

from bids_pcs.config import RecipeError
from bids_pcs.pretraining.base import PretextHead, check_unit_interval, random_block_mask, register
from bids_pcs.pretraining.losses import SeparableSSIM, masked_restoration_loss
from bids_pcs.pretraining.views import RandomViews
from bids_pcs.training.objective import Batch, Objective, float32

_VIEW_OPTIONS = ("crop_fraction", "rotate_degrees", "gamma", "intensity_scale", "intensity_shift",
                 "blur_probability", "blur_sigma", "noise_std")


def gather_across_processes(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``tensor`` of every process concatenated in rank order, and this process's rank.

    Without a process group (one process) the tensor itself and rank 0.  The
    result carries no gradient (only keys, made without gradients, are gathered).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts), dist.get_rank()


class RunningStandardiser(nn.Module):
    """Standardise each descriptor feature with running (not per-batch) statistics.

    Registered crops share most of what an encoder sees, so their raw pooled
    descriptors start nearly parallel and the contrastive loss has little to
    work with; removing, per feature, the mean and spread over the crops seen
    lately (batch normalisation's job) spreads them out.  The statistics are
    running averages over steps, updated without gradients, so no sample's
    embedding depends on the others of its batch (which, with a queue, would
    let a query tell its batch's keys from the queue's).

    Args:
        features: descriptor size.
        momentum: of the running averages (a cumulative average over the first
            1 / (1 - momentum) updates).
    """

    def __init__(self, features: int, momentum: float = 0.99) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("var", torch.ones(features))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, descriptors: torch.Tensor) -> None:
        """Fold a batch of descriptors (N, features) into the running statistics."""
        weight = max(1.0 / float(self.updates + 1), 1.0 - self.momentum)
        self.mean.lerp_(descriptors.mean(dim=0), weight)
        self.var.lerp_(descriptors.var(dim=0, unbiased=False), weight)
        self.updates += 1

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return (descriptors - self.mean) * torch.rsqrt(self.var + 1e-5)


def pooled_descriptor(scales: list[torch.Tensor], grid: int) -> torch.Tensor:
    """Each encoder scale average-pooled onto a ``grid``^3 grid, concatenated (N, features).

    Pooled onto a coarse grid rather than to one value: aligned crops share
    their global statistics (and instance normalisation removes the rest);
    where structures lie is what tells crops apart.
    """
    return torch.cat([nn.functional.adaptive_avg_pool3d(s.float(), grid).flatten(1)
                      for s in scales], dim=1)


class ProjectionHead(nn.Module):
    """A standardised descriptor -> a unit-length embedding (MoCo v2's two-layer MLP).

    Args:
        in_features: descriptor size.
        hidden_dim: width of the hidden layer.
        projection_dim: size of the embedding.
    """

    def __init__(self, in_features: int, hidden_dim: int, projection_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(in_features, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, projection_dim))

    def forward(self, descriptors: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.mlp(descriptors).float(), dim=1)


@register
class Contrastive(Objective):
    """MoCo-style contrastive pre-training of the encoder, masked restoration for the decoder.

    Options:
        temperature: InfoNCE temperature.
        projection_dim: size of the embedding the loss compares.
        hidden_dim: hidden width of the projection head.
        pool_grid: each encoder scale is average-pooled to a grid of this side.
        queue_size: keys kept as negatives from earlier steps (0: in-step keys only).
        momentum: of the key encoder's moving average.
        mask_ratio: fraction of blocks hidden in the query view.
        block_size: side of a hidden block in voxels.
        reconstruction_weight: weight of the restoration term (0: contrastive only,
            the decoder then learns nothing).
        ssim_weight: weight of (1 - SSIM) inside the restoration term.
        ssim_window: SSIM window side in voxels.
        crop_fraction: smallest side of a view's random sub-box, as a fraction of the crop's.
        rotate_degrees: largest rotation of a view about each axis.
        gamma: largest contrast gamma (log-uniform in [1/gamma, gamma]).
        intensity_scale, intensity_shift: largest intensity scaling and shift.
        blur_probability, blur_sigma: chance of a Gaussian blur and its largest sigma (voxels).
        noise_std: largest standard deviation of the added Gaussian noise.

    Example::

        objective = Contrastive({"temperature": 0.2})
        objective.setup(network)
        loss = objective.losses({"image": crops, "index": indices}, network, "main")["loss"]
    """

    name: ClassVar[str] = "contrastive"
    defaults: ClassVar[dict[str, Any]] = {
        "temperature": 0.2,
        "projection_dim": 128,
        "hidden_dim": 512,
        "pool_grid": 2,
        "queue_size": 256,
        "momentum": 0.99,
        "mask_ratio": 0.3,
        "block_size": 8,
        "reconstruction_weight": 1.0,
        "ssim_weight": 1.0,
        "ssim_window": 7,
        "crop_fraction": 0.7,
        "rotate_degrees": 10.0,
        "gamma": 1.5,
        "intensity_scale": 0.1,
        "intensity_shift": 0.1,
        "blur_probability": 0.3,
        "blur_sigma": 1.0,
        "noise_std": 0.05,
    }

    def setup(self, network: nn.Module) -> None:
        check_unit_interval("contrastive.mask_ratio", self.options["mask_ratio"])
        check_unit_interval("contrastive.momentum", self.options["momentum"])
        if int(self.options["queue_size"]) < 0:
            raise RecipeError("Pre-training option contrastive.queue_size must not be negative, "
                              f"not {self.options['queue_size']}.")
        grid = int(self.options["pool_grid"])
        features = grid**3 * (sum(network.skip_channels) + network.bottleneck_channels)
        self.standardiser = RunningStandardiser(features, float(self.options["momentum"]))
        self.projection = ProjectionHead(features, int(self.options["hidden_dim"]),
                                         int(self.options["projection_dim"]))
        self.head = PretextHead(network.feature_channels)
        self.ssim = SeparableSSIM(window=int(self.options["ssim_window"]))
        self.views = RandomViews(**{k: float(self.options[k]) for k in _VIEW_OPTIONS})
        # the momentum copies are updated by hand, never by the optimiser
        self.key_encoder = copy.deepcopy(network.encoder).requires_grad_(False)
        self.key_projection = copy.deepcopy(self.projection).requires_grad_(False)
        size, dim = int(self.options["queue_size"]), int(self.options["projection_dim"])
        self.register_buffer("queue", torch.zeros(size, dim))
        # crop index of each queued key; -1: an empty slot
        self.register_buffer("queue_index", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("queue_pointer", torch.zeros((), dtype=torch.long))

    def trainable_names(self, network: nn.Module) -> list[str]:
        # without the restoration term nothing reaches the decoder: leave it out,
        # or DDP would wait for its gradients
        groups = ("encoder.", "decoder.") if float(self.options["reconstruction_weight"]) > 0 \
            else ("encoder.",)
        return [n for n, _ in network.named_parameters() if n.startswith(groups)]

    @torch.no_grad()
    def momentum_update(self, network: nn.Module) -> None:
        """Move the key encoder and key projection towards the trained ones."""
        m = float(self.options["momentum"])
        pairs = [(self.key_encoder, network.encoder), (self.key_projection, self.projection)]
        keys = [p for k, _ in pairs for p in k.parameters()]
        trained = [p.detach() for _, q in pairs for p in q.parameters()]
        torch._foreach_mul_(keys, m)
        torch._foreach_add_(keys, trained, alpha=1.0 - m)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, indices: torch.Tensor) -> None:
        """Put ``keys`` (and their crop indices) into the queue, oldest out first."""
        size = self.queue.shape[0]
        if size == 0:
            return
        keys, indices = keys[-size:], indices[-size:]
        slots = (self.queue_pointer + torch.arange(len(keys), device=keys.device)) % size
        self.queue[slots] = keys.to(self.queue.dtype)
        self.queue_index[slots] = indices
        self.queue_pointer.copy_((self.queue_pointer + len(keys)) % size)

    def losses(self, batch: Batch, network: nn.Module, phase: str) -> dict[str, torch.Tensor]:
        image = batch["image"]
        indices = batch.get("index", torch.arange(image.shape[0])).to(image.device)
        query_view, key_view = self.views(image), self.views(image)
        hidden = random_block_mask(image.shape, int(self.options["block_size"]),
                                   float(self.options["mask_ratio"]), image.device)

        grid = int(self.options["pool_grid"])
        encoded = network.encode(query_view.masked_fill(hidden, 0.0))
        query_descriptor = pooled_descriptor([*encoded.skips, encoded.bottleneck], grid)

        self.momentum_update(network)
        with torch.no_grad():
            key_encoded = self.key_encoder(network.scale_input(key_view))
            key_descriptor = pooled_descriptor([*key_encoded.skips, key_encoded.bottleneck], grid)
            # every process folds in the whole step's descriptors: one set of statistics
            descriptors, _ = gather_across_processes(
                torch.cat([query_descriptor.detach(), key_descriptor]))
            self.standardiser.update(descriptors)
            key = self.key_projection(self.standardiser(key_descriptor))
        query = self.projection(self.standardiser(query_descriptor))
        all_keys, rank = gather_across_processes(key)
        all_indices, _ = gather_across_processes(indices)
        own = rank * image.shape[0] + torch.arange(image.shape[0], device=image.device)

        with float32(image.device):
            logits = query.float() @ torch.cat([all_keys, self.queue]).T
        # empty queue slots and older keys of the query's own crop are no negatives
        in_step = torch.zeros((len(query), len(all_keys)), dtype=torch.bool, device=image.device)
        unusable = (self.queue_index[None] == -1) | (self.queue_index[None] == indices[:, None])
        logits = logits.masked_fill(torch.cat([in_step, unusable], dim=1), float("-inf"))
        contrastive = nn.functional.cross_entropy(logits / float(self.options["temperature"]), own)
        self.enqueue(all_keys, all_indices)

        out = {"contrastive": contrastive.detach(),
               "view_agreement": (query * key).sum(dim=1).mean().detach()}
        loss = contrastive
        weight = float(self.options["reconstruction_weight"])
        if weight > 0:
            restored = self.head(network.decoder(encoded))
            restoration = masked_restoration_loss(restored, query_view, hidden, self.ssim,
                                                  ssim_weight=float(self.options["ssim_weight"]))
            loss = loss + weight * restoration["loss"]
            out.update(l1=restoration["l1"], ssim=restoration["ssim"])
        return {"loss": loss, **out}

