"""The one training engine shared by pre-training and fine-tuning.

- :mod:`bids_pcs.training.engine`: :class:`Engine`, :class:`TrainConfig`, :class:`TrainResult`.
- :mod:`bids_pcs.training.objective`: the :class:`Objective` protocol methods implement.
- :mod:`bids_pcs.training.data`: crops cached in memory (:class:`CropSet`, :func:`load_crop_set`).
- :mod:`bids_pcs.training.checkpoint`: pickle-free checkpoints (safetensors + JSON).
- :mod:`bids_pcs.training.distributed`: ``torchrun`` / DDP set-up (NCCL on CUDA, gloo on CPU).
- :mod:`bids_pcs.training.plots`: the loss-curve figure.
"""
