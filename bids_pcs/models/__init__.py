"""The multi-task PCS network and its model files.

- :mod:`bids_pcs.models.network`: :func:`build_network` (SwinUNETR or a small
  CNN; submodules ``encoder``, ``decoder``, ``heads``).
- :mod:`bids_pcs.models.model_io`: ``model.safetensors`` + ``model.json``
  (:func:`save_model`, :func:`load_model`, :func:`load_pretrained`).
- :mod:`bids_pcs.models.tensor_file`: safetensors written atomically and read
  only after their SHA-256 and format are checked.
"""
