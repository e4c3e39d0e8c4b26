"""Interfaces: Nipype interfaces with typed specs (antspyx underneath)."""

import os

# Nipype may ask the network whether a newer release exists; BIDS Apps run offline
os.environ.setdefault("NIPYPE_NO_ET", "1")
