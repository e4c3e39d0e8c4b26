"""Crop geometry as typed interface inputs, shared by the interfaces that need it.

Settings dataclasses are not traits; each interface that needs the crop boxes
takes these four typed inputs and rebuilds :class:`~bids_pcs.config.CropSettings`.
"""

from __future__ import annotations

from typing import Any

from nipype.interfaces.base import traits

from bids_pcs.config import CropSettings


def add_crop_traits(spec: type) -> type:
    """Class decorator adding the crop geometry inputs to an input spec."""
    spec.add_class_trait(
        "crop_size_mm",
        traits.Tuple(traits.Int, traits.Int, traits.Int, mandatory=True,
                     desc="box size (mm) along x, y, z"),
    )
    spec.add_class_trait(
        "crop_voxel_mm", traits.Float(mandatory=True, desc="crop voxel size (mm)")
    )
    spec.add_class_trait(
        "crop_left_min_mm",
        traits.Tuple(traits.Float, traits.Float, traits.Float, mandatory=True,
                     desc="smallest-coordinate corner of the left box (template mm)"),
    )
    spec.add_class_trait(
        "mirror_right", traits.Bool(True, usedefault=True,
                                    desc="store the right crop flipped left-right")
    )
    return spec


def crop_inputs(crop: CropSettings) -> dict[str, Any]:
    """Interface input values describing ``crop``."""
    return {
        "crop_size_mm": tuple(int(v) for v in crop.size_mm),
        "crop_voxel_mm": float(crop.voxel_mm),
        "crop_left_min_mm": tuple(float(v) for v in crop.left_min_mm),
        "mirror_right": bool(crop.mirror_right),
    }


def crop_from_inputs(inputs: Any) -> CropSettings:
    """The :class:`CropSettings` described by an interface's inputs."""
    return CropSettings(
        size_mm=tuple(inputs.crop_size_mm),
        voxel_mm=float(inputs.crop_voxel_mm),
        left_min_mm=tuple(inputs.crop_left_min_mm),
        mirror_right=bool(inputs.mirror_right),
    )
