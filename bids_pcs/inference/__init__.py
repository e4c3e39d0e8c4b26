"""Inference: the network on new images' crops, back to the T1w grid, into derivatives.

Modules, one job each:

- :mod:`~bids_pcs.inference.model`: check (before any work) and load a fine-tuned model;
- :mod:`~bids_pcs.inference.predict`: both crops as one batch, optional flip TTA;
- :mod:`~bids_pcs.inference.native`: probabilities on the T1w grid, dseg, measures
  (length and volume from :mod:`bids_pcs.morphometry`);
- :mod:`~bids_pcs.inference.writer`: dseg, probsegs and result tables, atomically;
- :mod:`~bids_pcs.inference.pipeline`: all of it over a list of preprocessed images.

Heavy modules (ANTs, Nipype through :mod:`bids_pcs.preprocess`) load on first use.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "InferenceModel": "bids_pcs.inference.model",
    "check_inference_model": "bids_pcs.inference.model",
    "load_inference_model": "bids_pcs.inference.model",
    "model_provenance": "bids_pcs.inference.model",
    "HemispherePrediction": "bids_pcs.inference.predict",
    "predict_hemispheres": "bids_pcs.inference.predict",
    "ImageInference": "bids_pcs.inference.pipeline",
    "infer_images": "bids_pcs.inference.pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'bids_pcs.inference' has no attribute {name!r}")
