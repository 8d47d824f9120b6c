"""Unsupervised speech enhancement: NMF noise model and the VEM with any DVAE prior."""
from .nmf import NMFNoise, m_step, wiener_gain
from .vem import VEMConfig, VEMResult, enhance_spectrogram

__all__ = ["NMFNoise", "m_step", "wiener_gain", "VEMConfig", "VEMResult", "enhance_spectrogram"]
