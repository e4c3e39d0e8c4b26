"""Workflows: Nipype workflows built by init_*_wf factories."""

import os

# Nipype may ask the network whether a newer release exists; BIDS Apps run offline
os.environ.setdefault("NIPYPE_NO_ET", "1")
