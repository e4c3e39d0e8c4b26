"""From tissue levels to the intensities a scanner would have written.

Per acquisition: tissue intensities (a T1w contrast of an MPRAGE-like or
SPGR-like family: CSF dark, grey matter darker than white matter, fat
bright), a smooth multiplicative bias field (receive-coil inhomogeneity),
k-space artefacts (ringing, motion ghosts; :mod:`bids_pcs.synth.artefacts`),
Rician noise (the magnitude of a complex signal with Gaussian noise in both
channels), and a scaling to integers as a scanner stores them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bids_pcs.synth import anatomy
from bids_pcs.synth.artefacts import KspaceArtefacts
from bids_pcs.synth.deformation import separable_bspline_field

_LUT_STEP = 1.0 / 256


@dataclass(frozen=True)
class Contrast:
    """Intensities of one acquisition, relative to white matter = 1.

    Args:
        csf, gm, bright: intensities of CSF, grey matter and the brightest tissue.
        bias_coefficients: small grid of B-spline coefficients of log(bias).
        noise: standard deviation of the noise, relative to white matter.
        scale: white matter intensity in the stored integers.
    """

    csf: float
    gm: float
    bright: float
    bias_coefficients: np.ndarray
    noise: float
    scale: float

    def curve(self) -> tuple[list[float], list[float]]:
        """Levels and their intensities (piecewise-linear in between)."""
        levels = [anatomy.AIR, anatomy.CSF, anatomy.GM, anatomy.WM, anatomy.BRIGHTEST]
        return levels, [0.0, self.csf, self.gm, 1.0, self.bright]


# per family: ranges of CSF, grey matter and brightest-tissue intensity (white matter = 1).
# MPRAGE-like: dark CSF, strong grey/white contrast, fat not much brighter than
# white matter; SPGR-like: brighter CSF, weaker grey/white contrast, very bright
# fat; "mixed" spans both (the easy preset's single contrast model).
FAMILY_RANGES: dict[str, tuple[tuple[float, float], ...]] = {
    "mixed": ((0.12, 0.32), (0.55, 0.72), (1.25, 1.8)),
    "mprage": ((0.08, 0.20), (0.50, 0.62), (1.05, 1.40)),
    "spgr": ((0.20, 0.34), (0.64, 0.78), (1.50, 2.10)),
}


def draw_contrast(rng: np.random.Generator, *, noise_range: tuple[float, float],
                  bias_strength: float, family: str = "mixed") -> Contrast:
    """A plausible T1w contrast of ``family`` (see ``FAMILY_RANGES``), bias field and noise."""
    csf, gm, bright = FAMILY_RANGES[family]
    return Contrast(
        csf=float(rng.uniform(*csf)),
        gm=float(rng.uniform(*gm)),
        bright=float(rng.uniform(*bright)),
        bias_coefficients=rng.normal(0.0, bias_strength, size=(5, 5, 5)),
        noise=float(rng.uniform(*noise_range)),
        scale=float(rng.uniform(600.0, 2500.0)),
    )


def render(levels: np.ndarray, contrast: Contrast, rng: np.random.Generator,
           *, background_zero: np.ndarray | None = None,
           kspace: KspaceArtefacts | None = None) -> np.ndarray:
    """int16 image of ``levels`` under ``contrast`` (bias, artefacts, Rician noise, scaling).

    Args:
        levels: tissue levels on the scanner grid.
        contrast: the acquisition's intensities.
        rng: draws the noise.
        background_zero: where a skull-stripped image is exactly zero.
        kspace: ringing and motion ghosting, applied to the signal before the
            noise (the noise of a scanner is white in k-space, not ringing).
    """
    knots, values = contrast.curve()
    # a fine lookup table is ~20x faster than np.interp on millions of voxels
    steps = np.float32(1.0 / _LUT_STEP)
    table = np.interp(np.arange(0.0, knots[-1] + 2 * _LUT_STEP, _LUT_STEP), knots, values
                      ).astype(np.float32)
    index = np.multiply(levels, steps, dtype=np.float32)
    np.clip(index, 0, len(table) - 1, out=index)
    signal = table[index.astype(np.int32)]
    del index
    # B-spline weights are non-negative, so a field built from exp(coefficients)
    # is a smooth positive gain without an exp over millions of voxels
    signal *= separable_bspline_field(np.exp(contrast.bias_coefficients), levels.shape)
    if kspace is not None and kspace.any:
        signal = kspace.apply(signal)
    sigma = np.float32(contrast.noise)
    noise = rng.standard_normal(levels.shape, dtype=np.float32)
    noise *= sigma
    # the imaginary channel reuses the draws shifted by a prime number of voxels:
    # independent at every voxel, half the random numbers
    imag = np.roll(noise.ravel(), 7919).reshape(levels.shape)
    noise += signal
    del signal
    np.hypot(noise, imag, out=noise)
    del imag
    noise *= np.float32(contrast.scale)
    if background_zero is not None:
        noise[background_zero] = 0.0
    np.rint(noise, out=noise)
    return np.clip(noise, 0, np.iinfo(np.int16).max, out=noise).astype(np.int16)
