"""The supervised baseline (UMX) of the SE paper: an Open-Unmix-style mask estimator, trained by `train.baseline`."""
