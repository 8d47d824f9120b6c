import math

import numpy as np
import pytest
import torch

from speechdvae import stft


def test_window_definition_and_cola():
    w = stft.sine_window(dtype=torch.float64)
    n = torch.arange(1024, dtype=torch.float64)
    assert torch.allclose(w, torch.sin(math.pi * (n + 0.5) / 1024))
    # squared windows overlap-add to a constant (2) at hop 256: exact inversion
    ola = sum(torch.roll(w**2, k * 256) for k in range(4))
    assert torch.allclose(ola, torch.full_like(ola, 2.0))


@pytest.mark.parametrize("n", [513, 4000, 16000, 16001])
def test_perfect_reconstruction(n):
    x = torch.randn(2, n, dtype=torch.float64)
    spec = stft.stft(x)
    assert spec.shape == (2, 1 + n // 256, 513)
    y = stft.istft(spec, length=n)
    assert torch.max(torch.abs(x - y)) < 1e-10


def test_matches_a_direct_dft_of_one_frame():
    x = torch.randn(8000, dtype=torch.float64)
    spec = stft.stft(x)
    t = 10  # a frame away from the padded edges: samples [t*256 - 512, t*256 + 512)
    frame = x[t * 256 - 512 : t * 256 + 512] * stft.sine_window(dtype=torch.float64)
    assert torch.allclose(spec[t], torch.fft.rfft(frame), atol=1e-9)


def test_power_matches_official_reference(official_dir):
    ref = np.load(official_dir / "reference" / "inputs.npz")
    power = stft.power_spectrogram(torch.from_numpy(ref["utt1_wave"])).float().numpy()
    assert power.shape == ref["utt1_power"].shape
    np.testing.assert_allclose(power, ref["utt1_power"], rtol=1e-5, atol=1e-6 * ref["utt1_power"].max())


def test_too_short_signal_is_a_clear_error():
    with pytest.raises(ValueError, match="too short"):
        stft.stft(torch.zeros(100))


@pytest.mark.parametrize("momentum, tolerance", [(0.0, 0.3), (0.99, 0.1)])
def test_griffin_lim_recovers_a_consistent_magnitude(momentum, tolerance):
    t = torch.arange(16000, dtype=torch.float64) / 16000
    x = torch.sin(2 * math.pi * 440 * t) + 0.5 * torch.sin(2 * math.pi * 1250 * t + 1.0)
    mag = stft.stft(x).abs()
    g = torch.Generator().manual_seed(0)
    y = stft.griffin_lim(mag, n_iter=60, momentum=momentum, length=len(x), generator=g)
    error = torch.linalg.norm(stft.stft(y).abs() - mag) / torch.linalg.norm(mag)
    assert error < tolerance


def test_fast_griffin_lim_converges_faster():
    x = torch.randn(16000, dtype=torch.float64)
    mag = stft.stft(x).abs()

    def spectral_error(momentum):
        y = stft.griffin_lim(
            mag, n_iter=30, momentum=momentum, length=len(x), generator=torch.Generator().manual_seed(1)
        )
        return float(torch.linalg.norm(stft.stft(y).abs() - mag) / torch.linalg.norm(mag))

    assert spectral_error(0.99) < spectral_error(0.0)
