"""Speech enhancement: the enhancer interface, the VEM and Langevin posterior sampling with any DVAE prior and an
NMF noise model, and files."""

from .langevin import LangevinConfig, LangevinResult, enhance_by_sampling
from .nmf import NMFNoise, m_step, wiener_gain
from .vem import VEMConfig, VEMResult, enhance_spectrogram

__all__ = [
    "NMFNoise",
    "m_step",
    "wiener_gain",
    "VEMConfig",
    "VEMResult",
    "enhance_spectrogram",
    "LangevinConfig",
    "LangevinResult",
    "enhance_by_sampling",
]
