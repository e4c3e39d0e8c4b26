"""Acquisition sites: each one a T1w contrast family and a voxel size.

A participant is scanned at one site (``site`` in participants.tsv), so a
site is a shift a study can hold out (``[study] test_on = "site=B"``).
"""

from __future__ import annotations

from dataclasses import dataclass

CONTRAST_FAMILIES = ("mprage", "spgr", "mixed")


@dataclass(frozen=True)
class Site:
    """One scanner and protocol.

    Args:
        name: the ``site`` value in participants.tsv (letters and digits).
        contrast: ``mprage`` (dark CSF, strong grey/white contrast, fat close
            to white matter), ``spgr`` (brighter CSF, weaker grey/white
            contrast, very bright fat) or ``mixed`` (a range spanning both).
        voxel_mm: voxel size of every image of the site; ``None`` draws one per
            image from ``SynthOptions.voxel_sizes``.
        weight: relative share of participants scanned there.
    """

    name: str = "A"
    contrast: str = "mixed"
    voxel_mm: tuple[float, float, float] | None = None
    weight: float = 1.0

    def __post_init__(self) -> None:
        if self.voxel_mm is not None:  # TOML gives a list
            object.__setattr__(self, "voxel_mm", tuple(float(v) for v in self.voxel_mm))

    def describe(self) -> str:
        size = "x".join(f"{v:g}" for v in self.voxel_mm) + " mm" if self.voxel_mm else \
            "voxel size drawn per image"
        family = f"{self.contrast.upper()}-like T1w contrast" if self.contrast != "mixed" \
            else "T1w contrast from the MPRAGE-like to the SPGR-like range"
        return f"{family}, {size}"


# three sites: two MPRAGE-like at different resolutions, one SPGR-like
BENCHMARK_SITES: tuple[Site, ...] = (
    Site("A", "mprage", (1.0, 1.0, 1.0)),
    Site("B", "spgr", (0.94, 0.94, 1.2)),
    Site("C", "mprage", (1.2, 1.2, 1.2)),
)
ONE_SITE: tuple[Site, ...] = (Site("A", "mixed", None),)

