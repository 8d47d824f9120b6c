"""The one STFT of the project: sine window of 1024 samples, hop 256, 513 bins, centred.

Spectrograms are time-major, shape (..., T, F), to match the batch-first (B, T, F) layout of
the models. Padding is `reflect`, as in the papers' code (librosa < 0.10 and their torch.stft).
"""

from __future__ import annotations

import math

import torch

N_FFT = 1024
HOP_LENGTH = 256
N_FREQ = N_FFT // 2 + 1


def sine_window(device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """w[n] = sin(pi (n + 1/2) / N): its squares overlap-add to a constant at 75 % overlap."""
    n = torch.arange(N_FFT, device=device, dtype=torch.float64)
    return torch.sin(math.pi * (n + 0.5) / N_FFT).to(dtype)


def min_samples() -> int:
    """Shortest signal the centred, reflect-padded STFT accepts."""
    return N_FFT // 2 + 1


def stft(x: torch.Tensor) -> torch.Tensor:
    """Complex STFT of (..., N) real signals -> (..., T, F) with T = 1 + N // 256."""
    if x.shape[-1] < min_samples():
        raise ValueError(f"signal too short for the STFT: {x.shape[-1]} samples, need at least {min_samples()}")
    lead = x.shape[:-1]
    spec = torch.stft(
        x.reshape(-1, x.shape[-1]),
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        win_length=N_FFT,
        window=sine_window(x.device, x.dtype),
        center=True,
        pad_mode="reflect",
        normalized=False,
        onesided=True,
        return_complex=True,
    )
    return spec.transpose(-1, -2).reshape(*lead, spec.shape[-1], N_FREQ)


def istft(spec: torch.Tensor, length: int | None = None) -> torch.Tensor:
    """Inverse of `stft` (exact up to rounding): (..., T, F) complex -> (..., N) real."""
    lead = spec.shape[:-2]
    flat = spec.reshape(-1, *spec.shape[-2:]).transpose(-1, -2)
    real_dtype = flat.real.dtype
    x = torch.istft(
        flat,
        n_fft=N_FFT,
        hop_length=HOP_LENGTH,
        win_length=N_FFT,
        window=sine_window(spec.device, real_dtype),
        center=True,
        normalized=False,
        onesided=True,
        length=length,
    )
    return x.reshape(*lead, x.shape[-1])


def power_spectrogram(x: torch.Tensor) -> torch.Tensor:
    """|STFT|^2, shape (..., T, F): the input of every model."""
    return stft(x).abs().square()


def griffin_lim(
    magnitude: torch.Tensor,
    n_iter: int = 100,
    momentum: float = 0.99,
    length: int | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Waveform whose STFT magnitude approaches `magnitude` (..., T, F).

    Fast Griffin-Lim (Perraudin et al., 2013): projections alternate between consistent
    spectrograms and the target magnitude, with the momentum term `momentum` (0 gives the
    original algorithm). The phase starts random (seeded by `generator`).
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
    n_samples = length if length is not None else (magnitude.shape[-2] - 1) * HOP_LENGTH
    phase = torch.rand(magnitude.shape, generator=generator, dtype=magnitude.dtype, device="cpu").to(
        magnitude.device
    ) * (2 * math.pi)
    estimate = magnitude * torch.exp(1j * phase)
    previous = torch.zeros_like(estimate)
    for _ in range(n_iter):
        rebuilt = stft(istft(estimate, length=n_samples))
        accelerated = rebuilt - (momentum / (1.0 + momentum)) * previous if momentum else rebuilt
        previous = rebuilt
        estimate = magnitude * torch.exp(1j * torch.angle(accelerated))
    return istft(estimate, length=n_samples)
