"""bids_pcs: a BIDS App that finds and classifies the paracingulate sulcus (PCS).

Reproduces, as a tool, the study of Mamalakis et al., "Contrastive-Adversarial
and Diffusion: Exploring pre-training and fine-tuning strategies for sulcal
identification" (arXiv 2405.19204).
"""

__version__ = "0.1.0"
APP_NAME = "bids_pcs"
CODE_URL = "https://github.com/bids-pcs/bids_pcs"
