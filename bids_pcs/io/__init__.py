"""Reading BIDS inputs and writing BIDS derivatives."""
