"""speechdvae: dynamical variational autoencoders for speech modelling and unsupervised enhancement."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

__version__ = "0.1.0"
__all__ = ["__version__", "enhance"]


def enhance(
    wave: np.ndarray,
    sample_rate: int,
    model: str | os.PathLike | Any = "default",
    device: str | torch.device | None = None,
    inference: str | None = None,
    **settings: Any,
) -> np.ndarray:
    """Enhance a noisy waveform (frames,) or (frames, channels) at any sample rate: returns float32 speech of the
    same shape. `model` is a shipped name, a checkpoint folder or a network (a DVAE prior or the supervised
    baseline (UMX)); a prior enhances by the `inference` engine, "vem" or "langevin" (default: the one chosen
    for the prior, else the VEM), with the prior's own settings for it replaced by `settings` (fields of
    `enhancement.vem.VEMConfig` or `enhancement.langevin.LangevinConfig`, e.g. niter=100, seed=1)."""
    from .enhancement.enhancer import InferenceRequest, load_enhancer
    from .enhancement.files import enhance_wave

    return enhance_wave(wave, sample_rate, load_enhancer(model, InferenceRequest(inference, settings=settings), device))
