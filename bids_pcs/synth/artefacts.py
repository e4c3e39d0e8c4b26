"""Acquisition artefacts of a T1w image, each drawn with its own probability.

- **Ringing** (Gibbs): k-space is sampled to a finite extent; truncating it
  along one axis rings at sharp edges (skull, CSF) and blurs along that axis.
- **Motion ghosting**: the head moves periodically along the phase-encoding
  axis while k-space lines are acquired one after the other; each line then
  carries the phase of a shifted head, and faint copies of the head appear
  along that axis.
- **Strong intensity inhomogeneity**: a bias field of larger spread (a
  multi-channel head coil at high field) instead of the usual one.
- **Defacing**: face, eyes and nose removed (an anonymisation step many
  public data sets apply), as a plane cut in front of and below the brain.

Ringing and ghosting act on the image's signal before noise is added
(:func:`bids_pcs.synth.contrast.render`); the bias is drawn with the contrast;
defacing removes head tissue before resampling
(:meth:`bids_pcs.synth.anatomy.AnatomySource.face_mask`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import fft


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True)
class ArtefactOptions:
    """How often each artefact occurs per image, and how strong it is (see ``doc`` metadata)."""

    ringing_probability: float = field(default=0.0, metadata=_doc(
        "chance that an image rings (k-space truncated along one random axis)"))
    ringing_kept: tuple[float, float] = field(default=(0.5, 0.8), metadata=_doc(
        "share of k-space kept along the ringing axis (lower: stronger ringing and blur)"))
    ghosting_probability: float = field(default=0.0, metadata=_doc(
        "chance of motion ghosts along the phase-encoding axis (anterior-posterior or "
        "superior-inferior)"))
    ghosting_mm: tuple[float, float] = field(default=(0.1, 0.5), metadata=_doc(
        "amplitude of the periodic head motion during the scan (mm)"))
    ghosting_cycles: tuple[float, float] = field(default=(2.0, 12.0), metadata=_doc(
        "motion periods per scan (the ghosts' spacing)"))
    strong_bias_probability: float = field(default=0.0, metadata=_doc(
        "chance of a strong intensity inhomogeneity instead of the usual bias field"))
    strong_bias_strength: float = field(default=0.3, metadata=_doc(
        "spread of the log-bias coefficients of a strong inhomogeneity"))
    deface_probability: float = field(default=0.0, metadata=_doc(
        "chance that an image with skull is defaced (face, eyes and nose removed)"))


@dataclass(frozen=True)
class KspaceArtefacts:
    """What happens in k-space to one image.

    Args:
        voxel_mm: voxel size of the image (RAS axes).
        ringing_axis, ringing_kept: axis truncated and share kept (``None``: no ringing).
        ghost_axis, ghost_mm, ghost_cycles, ghost_phase: periodic motion along
            the phase-encoding axis (``None``: no ghosts).
    """

    voxel_mm: tuple[float, float, float]
    ringing_axis: int | None = None
    ringing_kept: float = 1.0
    ghost_axis: int | None = None
    ghost_mm: float = 0.0
    ghost_cycles: float = 0.0
    ghost_phase: float = 0.0

    @property
    def any(self) -> bool:
        return self.ringing_axis is not None or self.ghost_axis is not None

    def apply(self, signal: np.ndarray) -> np.ndarray:
        """``signal`` (float32, RAS axes) with ringing and ghosts."""
        if self.ringing_axis is not None:
            signal = _truncate_kspace(signal, self.ringing_axis, self.ringing_kept)
        if self.ghost_axis is not None:
            signal = _ghosts(signal, self.ghost_axis, self.voxel_mm[self.ghost_axis],
                             self.ghost_mm, self.ghost_cycles, self.ghost_phase)
        return signal

    def truth(self) -> dict[str, Any]:
        """The sidecar record (axes named as in RAS)."""
        names = "xyz"
        return {
            "Ringing": None if self.ringing_axis is None else {
                "Axis": names[self.ringing_axis], "KspaceKept": round(self.ringing_kept, 3)},
            "MotionGhosts": None if self.ghost_axis is None else {
                "PhaseEncodingAxis": names[self.ghost_axis],
                "AmplitudeMm": round(self.ghost_mm, 2),
                "CyclesPerScan": round(self.ghost_cycles, 2)},
        }


@dataclass(frozen=True)
class DrawnArtefacts:
    """The artefacts of one acquisition (drawn by :func:`draw_artefacts`)."""

    kspace: KspaceArtefacts
    strong_bias: bool = False
    defaced: bool = False


def draw_artefacts(rng: np.random.Generator, options: ArtefactOptions,
                   voxel_mm: tuple[float, float, float], *, skull: bool) -> DrawnArtefacts:
    """Which artefacts one image has; no random number is drawn for a zero probability."""
    changes: dict[str, Any] = {}
    if _happens(rng, options.ringing_probability):
        changes.update(ringing_axis=int(rng.integers(3)),
                       ringing_kept=float(rng.uniform(*options.ringing_kept)))
    if _happens(rng, options.ghosting_probability):
        changes.update(ghost_axis=int(rng.choice([1, 2])),
                       ghost_mm=float(rng.uniform(*options.ghosting_mm)),
                       ghost_cycles=float(rng.uniform(*options.ghosting_cycles)),
                       ghost_phase=float(rng.uniform(0.0, 2 * np.pi)))
    strong = _happens(rng, options.strong_bias_probability)
    defaced = skull and _happens(rng, options.deface_probability)
    return DrawnArtefacts(KspaceArtefacts(tuple(voxel_mm), **changes), strong, defaced)


def _happens(rng: np.random.Generator, probability: float) -> bool:
    return probability > 0 and bool(rng.uniform() < probability)


def _truncate_kspace(signal: np.ndarray, axis: int, kept: float) -> np.ndarray:
    n = signal.shape[axis]
    spectrum = fft.rfft(signal, axis=axis, workers=1)
    cut = max(2, int(round(kept * spectrum.shape[axis])))
    index = [slice(None)] * signal.ndim
    index[axis] = slice(cut, None)
    spectrum[tuple(index)] = 0
    out = fft.irfft(spectrum, n=n, axis=axis, workers=1).astype(np.float32)
    return np.maximum(out, 0.0, out=out)


def _ghosts(signal: np.ndarray, axis: int, voxel_mm: float, amplitude_mm: float,
            cycles: float, phase: float) -> np.ndarray:
    n = signal.shape[axis]
    frequencies = fft.fftfreq(n, d=voxel_mm)  # cycles per mm
    # lines are acquired from -k_max to +k_max; the head sits at d(t) during line t
    order = np.argsort(np.argsort(frequencies))
    shift = amplitude_mm * np.sin(2 * np.pi * cycles * order / n + phase)
    ramp = np.exp(-2j * np.pi * frequencies * shift).astype(np.complex64)
    shape = [1] * signal.ndim
    shape[axis] = n
    spectrum = fft.fft(signal, axis=axis, workers=1)
    spectrum *= ramp.reshape(shape)
    return np.abs(fft.ifft(spectrum, axis=axis, workers=1, overwrite_x=True)).astype(np.float32)
