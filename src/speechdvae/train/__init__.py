"""Training: the speech priors (`dvae`) and the supervised baseline (UMX, `baseline`), each writing a run folder
that resumes exactly and exports its best model as it improves (`run`)."""
