"""The multi-task PCS network: one backbone, a segmentation head, a classification head.

The network has exactly three top-level submodules, the parameter groups the
fine-tuning strategies choose from:

``encoder``
    the image encoder (for SwinUNETR: the Swin transformer and the convolutional
    skip blocks ``encoder1..4, encoder10``; for the CNN: the residual
    down-sampling path). It yields skip features and the bottleneck.
``decoder``
    the up-sampling path back to full resolution; it yields ``features``
    (``feature_size`` channels per voxel), the input of every dense head.
``heads``
    ``heads.segmentation`` (1x1x1 convolution: 2 logits per voxel, background /
    PCS; one model serves both hemispheres because right crops are mirrored) and
    ``heads.classification`` (pooled bottleneck -> 3 logits: absent / present /
    prominent).

Pre-training objectives never touch ``heads``: they read ``features`` and
``bottleneck`` through their own pretext heads, which they own and which are
not part of this module, so every pre-trained ``encoder``/``decoder`` weight
transfers to fine-tuning unchanged.

How the backbone reads its input is part of the model, not of the code that
feeds it (:class:`InputConditioning`, recorded in ``model.json`` with the
architecture): an intensity affine applied to every input crop (diffusion
pre-training learns on crops scaled to [-1, 1]) and, optionally, a learned
*clean-image condition*, a vector added to the bottleneck whenever no explicit
``condition`` is given (diffusion's timestep conditioning at t = 0).  The
vector is the parameter ``encoder.clean_condition``: it belongs to the encoder
group, so a strategy that freezes the encoder freezes it too and the transfer
of the encoder carries it.  Fine-tuning and inference therefore feed a
pre-trained backbone exactly what it learnt on, whatever the strategy.  A
per-sample condition (a diffusion timestep) still enters through the
``condition`` argument of :meth:`PcsNetwork.forward`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from monai.networks.blocks import UnetOutBlock, UnetResBlock, UnetUpBlock
from monai.networks.nets import SwinUNETR
from torch import nn

from bids_pcs.config import PCS_CLASSES, ModelSettings, RecipeError
from bids_pcs.models.swin_attention import fuse_window_attention

ARCHITECTURES: tuple[str, ...] = ("swinunetr", "cnn")
SEGMENTATION_CHANNELS = 2  # background, PCS
_NORM = "instance"


# [model] settings that only SwinUNETR reads: a CNN's spec and model card leave them out
SWIN_ONLY: tuple[str, ...] = ("depths", "num_heads", "window_size", "use_checkpoint")
# of those, the ones the shapes of the weights depend on
_SWIN_WEIGHT_KEYS: tuple[str, ...] = ("depths", "num_heads", "window_size")


def architecture_keys(architecture: str) -> tuple[str, ...]:
    """[model] keys, beyond ``feature_size``, that the weights of ``architecture`` depend on."""
    return _SWIN_WEIGHT_KEYS if architecture == "swinunetr" else ()


def model_settings_of(model: ModelSettings | dict[str, Any]) -> dict[str, Any]:
    """``[model]`` as a plain table holding only the settings its architecture reads."""
    values = model if isinstance(model, dict) else asdict(model)
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    if values.get("architecture") == "swinunetr":
        return values
    return {k: v for k, v in values.items() if k not in SWIN_ONLY}


@dataclass(frozen=True)
class NetworkSpec:
    """Everything needed to rebuild a network, as written into ``model.json``.

    Args:
        architecture: ``"swinunetr"`` or ``"cnn"``.
        feature_size: channels of the full-resolution features (SwinUNETR's
            ``feature_size``); the bottleneck has 16 times as many.
        depths: Swin transformer blocks per stage (SwinUNETR only).
        num_heads: attention heads per stage (SwinUNETR only).
        window_size: attention window in tokens (SwinUNETR only).
        dropout: dropout rate inside the backbone and before the class logits.
        use_checkpoint: gradient checkpointing in the Swin transformer.
        crop_shape: input shape in voxels (x, y, z) the network was built for.
        in_channels: image channels (1: T1w).
        segmentation_channels: voxel logits (2: background, PCS).
        classification_classes: names of the class logits, in order.
        input_scale: every input crop is multiplied by this before the encoder.
        input_offset: and then shifted by this (see :class:`InputConditioning`).
        clean_condition: the network holds ``encoder.clean_condition``, added to
            the bottleneck when no explicit condition is given.
    """

    architecture: str
    feature_size: int
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    window_size: int
    dropout: float
    use_checkpoint: bool
    crop_shape: tuple[int, int, int]
    in_channels: int = 1
    segmentation_channels: int = SEGMENTATION_CHANNELS
    classification_classes: tuple[str, ...] = PCS_CLASSES
    input_scale: float = 1.0
    input_offset: float = 0.0
    clean_condition: bool = False

    @property
    def input_conditioning(self) -> InputConditioning:
        return InputConditioning(self.input_scale, self.input_offset, self.clean_condition)

    def to_dict(self) -> dict[str, Any]:
        """The spec as ``model.json`` records it: only the settings its architecture reads."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()
                if k not in SWIN_ONLY or self.architecture == "swinunetr"}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkSpec:
        tuples = ("depths", "num_heads", "crop_shape", "classification_classes")
        # a CNN's card leaves SwinUNETR's settings out; they take their (unused) defaults
        defaults = {k: getattr(ModelSettings(), k) for k in SWIN_ONLY}
        return cls(**{k: tuple(v) if k in tuples else v
                      for k, v in {**defaults, **data}.items()})


@dataclass(frozen=True)
class InputConditioning:
    """How a backbone reads its input: an intensity affine and an optional clean-image condition.

    The default (scale 1, offset 0, no condition) is the plain network.  A
    pre-training objective that trains the backbone on other inputs declares it
    (``network.set_input_conditioning(...)`` in its ``setup``); the conditioning
    is then saved with the model and applied by the network itself at
    fine-tuning and inference.

    Args:
        scale: multiplies the normalised crop (diffusion: 2).
        offset: added after scaling (diffusion: -1, so [0, 1] becomes [-1, 1]).
        clean_condition: a learned vector (``encoder.clean_condition``) is added
            to the bottleneck when no explicit ``condition`` is given.

    Example::

        network.set_input_conditioning(InputConditioning(2.0, -1.0, clean_condition=True))
    """

    scale: float = 1.0
    offset: float = 0.0
    clean_condition: bool = False

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.offset == 0.0 and not self.clean_condition

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EncoderOutput:
    """What an encoder hands to its decoder: skip features (fine to coarse) and the bottleneck."""

    skips: list[torch.Tensor]
    bottleneck: torch.Tensor


class SwinEncoder(nn.Module):
    """The encoding half of MONAI's SwinUNETR: Swin transformer plus convolutional skip blocks.

    Args:
        swin: a freshly built :class:`monai.networks.nets.SwinUNETR` whose
            encoding submodules are taken over (names kept, so MONAI's
            ``load_from`` key layout still applies under ``encoder.``).

    Example::

        encoder = SwinEncoder(SwinUNETR(in_channels=1, out_channels=2, feature_size=24))
        out = encoder(torch.zeros(1, 1, 32, 96, 64))  # out.bottleneck: (1, 384, 1, 3, 2)
    """

    def __init__(self, swin: SwinUNETR) -> None:
        super().__init__()
        self.normalize = swin.normalize
        self.swinViT = swin.swinViT
        self.encoder1 = swin.encoder1
        self.encoder2 = swin.encoder2
        self.encoder3 = swin.encoder3
        self.encoder4 = swin.encoder4
        self.encoder10 = swin.encoder10

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        hidden = self.swinViT(image, self.normalize)
        skips = [
            self.encoder1(image),
            self.encoder2(hidden[0]),
            self.encoder3(hidden[1]),
            self.encoder4(hidden[2]),
            hidden[3],
        ]
        return EncoderOutput(skips=skips, bottleneck=self.encoder10(hidden[4]))


class SwinDecoder(nn.Module):
    """The decoding half of MONAI's SwinUNETR (``decoder5`` .. ``decoder1``).

    Args:
        swin: the SwinUNETR whose decoder blocks are taken over.

    Example::

        decoder = SwinDecoder(swin)
        features = decoder(encoder_output)  # (B, feature_size, *crop_shape)
    """

    def __init__(self, swin: SwinUNETR) -> None:
        super().__init__()
        self.decoder5 = swin.decoder5
        self.decoder4 = swin.decoder4
        self.decoder3 = swin.decoder3
        self.decoder2 = swin.decoder2
        self.decoder1 = swin.decoder1

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        enc0, enc1, enc2, enc3, hidden3 = encoded.skips
        x = self.decoder5(encoded.bottleneck, hidden3)
        x = self.decoder4(x, enc3)
        x = self.decoder3(x, enc2)
        x = self.decoder2(x, enc1)
        return self.decoder1(x, enc0)


class CnnEncoder(nn.Module):
    """A compact residual 3D encoder (four stride-2 stages) for CPU work.

    Args:
        feature_size: channels at full resolution; stage ``i`` has ``feature_size * 2**i``.
        dropout: dropout rate inside the residual blocks.

    Example::

        encoder = CnnEncoder(feature_size=8)
        out = encoder(torch.zeros(1, 1, 32, 96, 64))  # out.bottleneck: (1, 128, 2, 6, 4)
    """

    levels = 4

    def __init__(self, feature_size: int, dropout: float = 0.0, in_channels: int = 1) -> None:
        super().__init__()
        channels = [feature_size * 2**i for i in range(self.levels + 1)]
        self.stages = nn.ModuleList(
            [UnetResBlock(3, in_channels, channels[0], 3, 1, _NORM, dropout=dropout or None)]
            + [
                UnetResBlock(3, channels[i - 1], channels[i], 3, 2, _NORM, dropout=dropout or None)
                for i in range(1, self.levels + 1)
            ]
        )

    def forward(self, image: torch.Tensor) -> EncoderOutput:
        skips = []
        x = image
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return EncoderOutput(skips=skips[:-1], bottleneck=skips[-1])


class CnnDecoder(nn.Module):
    """The up-sampling path matching :class:`CnnEncoder` (transposed convolutions + skips).

    Args:
        feature_size: as for the encoder; the output has ``feature_size`` channels.
        dropout: dropout rate inside the residual blocks.

    Example::

        features = CnnDecoder(feature_size=8)(CnnEncoder(feature_size=8)(image))
    """

    def __init__(self, feature_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        levels = CnnEncoder.levels
        channels = [feature_size * 2**i for i in range(levels + 1)]
        self.stages = nn.ModuleList(
            UnetUpBlock(3, channels[i], channels[i - 1], 3, 1, 2, _NORM, dropout=dropout or None)
            for i in range(levels, 0, -1)
        )

    def forward(self, encoded: EncoderOutput) -> torch.Tensor:
        x = encoded.bottleneck
        for stage, skip in zip(self.stages, reversed(encoded.skips), strict=True):
            x = stage(x, skip)
        return x


class ClassificationHead(nn.Module):
    """Class logits (absent / present / prominent) from globally pooled bottleneck features.

    Args:
        in_channels: bottleneck channels.
        num_classes: number of classes.
        dropout: dropout rate before the last layer.

    Example::

        logits = ClassificationHead(384, 3)(bottleneck)  # (B, 3)
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = max(32, in_channels // 4)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.mlp = nn.Sequential(
            nn.Flatten(),
            nn.LayerNorm(in_channels),
            nn.Linear(in_channels, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, bottleneck: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.pool(bottleneck))


class PcsNetwork(nn.Module):
    """The multi-task network: ``encoder`` -> ``decoder`` -> ``heads``.

    Args:
        spec: the architecture and its hyper-parameters (see :class:`NetworkSpec`).

    Attributes:
        feature_channels: channels of ``features`` (full-resolution decoder output).
        bottleneck_channels: channels of ``bottleneck`` (and the size of ``condition``).
        skip_channels: channels of the encoder's skip features, fine to coarse.

    Example::

        net = build_network(settings.model, settings.crop.shape_vox)
        out = net(crops)                  # crops: (B, 1, 32, 96, 64)
        out["segmentation"]               # (B, 2, 32, 96, 64) voxel logits
        out["classification"]             # (B, 3) class logits
        out = net(crops, heads=False)     # only "features" and "bottleneck"
    """

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        size = spec.feature_size
        if spec.architecture == "swinunetr":
            swin = SwinUNETR(
                in_channels=spec.in_channels,
                out_channels=spec.segmentation_channels,
                feature_size=size,
                depths=spec.depths,
                num_heads=spec.num_heads,
                window_size=spec.window_size,
                drop_rate=spec.dropout,
                use_checkpoint=spec.use_checkpoint,
                spatial_dims=3,
            )
            # one fused attention kernel per window (docs/performance.md: a fifth
            # less CPU time per forward pass), in training and inference alike
            fuse_window_attention(swin)
            self.encoder: nn.Module = SwinEncoder(swin)
            self.decoder: nn.Module = SwinDecoder(swin)
            self.skip_channels = (size, size, 2 * size, 4 * size, 8 * size)
            self.bottleneck_channels = 16 * size
        else:
            self.encoder = CnnEncoder(size, spec.dropout, spec.in_channels)
            self.decoder = CnnDecoder(size, spec.dropout)
            self.skip_channels = tuple(size * 2**i for i in range(CnnEncoder.levels))
            self.bottleneck_channels = size * 2**CnnEncoder.levels
        self.feature_channels = size
        self._apply_clean_condition(spec.clean_condition)
        self.heads = nn.ModuleDict(
            {
                "segmentation": UnetOutBlock(3, size, spec.segmentation_channels),
                "classification": ClassificationHead(
                    self.bottleneck_channels, len(spec.classification_classes), spec.dropout
                ),
            }
        )

    def forward(
        self,
        image: torch.Tensor,
        condition: torch.Tensor | None = None,
        heads: bool = True,
    ) -> dict[str, torch.Tensor]:
        """Run the network.

        Args:
            image: crops, shape (B, 1, *crop_shape), intensity-normalised (the
                network applies its own :class:`InputConditioning`).
            condition: optional (B, bottleneck_channels) vector added to the
                bottleneck before decoding (a diffusion timestep embedding); it
                replaces the clean-image condition when the network has one.
            heads: compute the task heads; pre-training objectives pass False.

        Returns:
            ``features`` (B, feature_size, *crop_shape) and ``bottleneck``, plus
            ``segmentation`` (B, 2, *crop_shape) and ``classification`` (B, 3)
            logits when ``heads`` is true.
        """
        encoded = self.encode(image, condition)
        features = self.decoder(encoded)
        out = {"features": features, "bottleneck": encoded.bottleneck}
        if heads:
            out["segmentation"] = self.heads["segmentation"](features)
            out["classification"] = self.heads["classification"](encoded.bottleneck)
        return out

    def encode(self, image: torch.Tensor, condition: torch.Tensor | None = None,
               ) -> EncoderOutput:
        """The encoder's skips and (conditioned) bottleneck for ``image`` in crop units.

        ``network.decoder(network.encode(image))`` is the ``features`` of
        :meth:`forward`; objectives that need the skips call the two halves.
        """
        encoded = self.encoder(self.scale_input(image))
        if condition is None:
            condition = self.clean_condition
            if condition is not None:
                condition = condition[None]
        if condition is not None:
            # broadcast the per-sample vector over the bottleneck's voxels
            shift = condition.to(encoded.bottleneck.dtype)[:, :, None, None, None]
            encoded = EncoderOutput(encoded.skips, encoded.bottleneck + shift)
        return encoded

    # ------------------------------------------------------------ input conditioning
    @property
    def input_conditioning(self) -> InputConditioning:
        return self.spec.input_conditioning

    @property
    def clean_condition(self) -> torch.Tensor | None:
        """The learned clean-image condition (bottleneck_channels,), or ``None``."""
        return getattr(self.encoder, "clean_condition", None)

    def scale_input(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (crop units) as the encoder sees it."""
        spec = self.spec
        if spec.input_scale == 1.0 and spec.input_offset == 0.0:
            return image
        return image * spec.input_scale + spec.input_offset

    def unscale_input(self, scaled: torch.Tensor) -> torch.Tensor:
        """The crop-unit image that :meth:`scale_input` maps to ``scaled``."""
        spec = self.spec
        if spec.input_scale == 1.0 and spec.input_offset == 0.0:
            return scaled
        return (scaled - spec.input_offset) / spec.input_scale

    def set_input_conditioning(self, conditioning: InputConditioning) -> None:
        """Adopt ``conditioning`` (recorded in :attr:`spec`, hence in ``model.json``).

        A new clean-image condition starts at zero, so the network computes
        what it computed before; one dropped is removed with its parameter.
        """
        if conditioning.scale == 0:
            raise RecipeError("An input scale of 0 would erase every crop.")
        self.spec = replace(self.spec, input_scale=float(conditioning.scale),
                            input_offset=float(conditioning.offset),
                            clean_condition=bool(conditioning.clean_condition))
        self._apply_clean_condition(conditioning.clean_condition)

    def _apply_clean_condition(self, wanted: bool) -> None:
        present = self.clean_condition is not None
        if wanted and not present:
            reference = next(self.encoder.parameters())
            self.encoder.clean_condition = nn.Parameter(torch.zeros(
                self.bottleneck_channels, device=reference.device, dtype=reference.dtype))
        elif present and not wanted:
            del self.encoder.clean_condition

    def parameter_groups(self) -> dict[str, list[str]]:
        """Parameter names per group (``encoder``, ``decoder``, ``heads``)."""
        groups: dict[str, list[str]] = {"encoder": [], "decoder": [], "heads": []}
        for name, _ in self.named_parameters():
            groups[name.split(".", 1)[0]].append(name)
        return groups


def network_spec(model: ModelSettings, crop_shape: Sequence[int],
                 classes: Sequence[str] = PCS_CLASSES) -> NetworkSpec:
    """The :class:`NetworkSpec` of ``model`` settings for crops of ``crop_shape`` voxels."""
    shape = tuple(int(s) for s in crop_shape)
    spec = NetworkSpec(
        architecture=model.architecture,
        feature_size=int(model.feature_size),
        depths=tuple(model.depths),
        num_heads=tuple(model.num_heads),
        window_size=int(model.window_size),
        dropout=float(model.dropout),
        use_checkpoint=bool(model.use_checkpoint),
        crop_shape=shape,  # type: ignore[arg-type]
        classification_classes=tuple(classes),
    )
    check_spec(spec)
    return spec


def check_spec(spec: NetworkSpec) -> None:
    """Refuse, in one sentence, a network that cannot be built or cannot train on its crops."""
    if spec.architecture not in ARCHITECTURES:
        raise RecipeError(
            f"[model] architecture {spec.architecture!r} is unknown; use one of "
            f"{', '.join(ARCHITECTURES)}."
        )
    if len(spec.crop_shape) != 3:
        raise RecipeError(f"Crops must be 3D, not of shape {spec.crop_shape}.")
    if spec.architecture == "swinunetr":
        factor = 32  # patch size 2, then four merging stages
        if spec.feature_size % 12:
            raise RecipeError(
                f"[model] feature_size {spec.feature_size} must be a multiple of 12 for swinunetr."
            )
        if len(spec.depths) != 4 or len(spec.num_heads) != 4:
            raise RecipeError("[model] depths and num_heads need four values each for swinunetr.")
    else:
        factor = 2**CnnEncoder.levels
        if spec.feature_size < 1:
            raise RecipeError("[model] feature_size must be positive.")
    if any(s % factor for s in spec.crop_shape):
        raise RecipeError(
            f"Crop shape {spec.crop_shape} voxels does not suit {spec.architecture}: every side "
            f"must be a multiple of {factor}; change [crop] size_mm or voxel_mm."
        )
    bottleneck_voxels = 1
    for side in spec.crop_shape:
        bottleneck_voxels *= side // factor
    if bottleneck_voxels < 2:
        # instance normalisation of a 1-voxel bottleneck is undefined in training
        raise RecipeError(
            f"Crop shape {spec.crop_shape} voxels leaves a one-voxel bottleneck in "
            f"{spec.architecture}; make one side at least {2 * factor} voxels."
        )


def build_network(model: ModelSettings, crop_shape: Sequence[int],
                  classes: Sequence[str] = PCS_CLASSES) -> PcsNetwork:
    """The network described by ``model`` settings, for crops of ``crop_shape`` voxels.

    Args:
        model: ``settings.model``.
        crop_shape: ``settings.crop.shape_vox``.
        classes: class names of the classification head (``settings.labels.classes``).

    Returns:
        A freshly initialised :class:`PcsNetwork` (seed torch first for reproducibility).
    """
    return PcsNetwork(network_spec(model, crop_shape, classes))


def build_network_from_spec(spec: NetworkSpec | dict[str, Any]) -> PcsNetwork:
    """Rebuild a network from its spec (as stored in ``model.json``)."""
    if isinstance(spec, dict):
        spec = NetworkSpec.from_dict(spec)
    check_spec(spec)
    return PcsNetwork(spec)
