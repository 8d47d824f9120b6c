"""Speech enhancement: the enhancer interface, the VEM with any DVAE prior and an NMF noise model, and files."""

from .nmf import NMFNoise, m_step, wiener_gain
from .vem import VEMConfig, VEMResult, enhance_spectrogram

__all__ = ["NMFNoise", "m_step", "wiener_gain", "VEMConfig", "VEMResult", "enhance_spectrogram"]
