"""The supervised baseline of the SE paper: an Open-Unmix-style mask estimator and its training."""
