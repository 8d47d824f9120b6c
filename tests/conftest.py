"""Shared fixtures: paths to the optional shared reference data and small synthetic signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL = SHARED / "official-dvae-se"


@pytest.fixture(scope="session")
def official_dir() -> Path:
    """The original authors' release (checkpoints and reference outputs); tests needing it are marked `official`."""
    if not OFFICIAL.is_dir():
        pytest.skip("../shared/official-dvae-se is not available")
    return OFFICIAL


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark `official` every test that reads the official release, directly or through another fixture."""
    for item in items:
        if "official_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.official)


VAE_CONFIG = {"name": "vae", "z_dim": 4, "dense_x_z": [16]}
SRNN_CONFIG = {
    "name": "srnn",
    "z_dim": 4,
    "dense_x_h": [16],
    "dim_rnn_h": 8,
    "dense_hx_g": [16],
    "dim_rnn_g": 8,
    "dense_gz_z": [8],
    "dense_hz_x": [16],
    "dense_hz_z": [8],
}

DKF_CONFIG = {
    "name": "dkf",
    "z_dim": 4,
    "dense_x_gx": [16],
    "dim_rnn_gx": 8,
    "dense_ztm1_g": [8],
    "dense_g_z": [8],
    "dense_z_x": [16],
}
RVAE_CONFIG = {"name": "rvae", "z_dim": 4, "dim_rnn_g_x": 8, "dim_rnn_g_z": 8, "dim_rnn_h": 8}
TINY_CONFIGS = {"vae": VAE_CONFIG, "dkf": DKF_CONFIG, "rvae": RVAE_CONFIG, "srnn": SRNN_CONFIG}


def tiny_model(kind: str):
    """A tiny random prior of each family (`TINY_CONFIGS`, or a one-layer HiT-DVAE for "transformer"), in eval mode."""
    from speechdvae.models import build_model
    from speechdvae.models.transformer import TransformerDVAE

    torch.manual_seed(0)
    if kind == "transformer":
        return TransformerDVAE(z_dim=4, w_dim=4, d_model=8, num_layers=1, dim_feedforward=16, dim_rnn_w=8).eval()
    return build_model(TINY_CONFIGS[kind]).eval()


def noisy_stfts(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """Complex STFTs of harmonic 'speech' plus white noise, zero-padded to the longest length."""
    from speechdvae.stft import stft

    gen = torch.Generator().manual_seed(seed)
    X = torch.zeros(len(lengths), max(lengths), 513, dtype=torch.complex64)
    for b, T in enumerate(lengths):
        n = torch.arange((T - 1) * 256, dtype=torch.float64) / 16000
        f0 = 120.0 + 40.0 * b
        speech = sum(torch.sin(2 * torch.pi * k * f0 * n) / k for k in range(1, 8)) * torch.sin(3 * n) ** 2
        noise = 0.3 * torch.randn(n.shape, generator=gen, dtype=torch.float64)
        X[b, :T] = stft((speech + noise).float())
    return X


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny random VAE and SRNN saved as checkpoints."""
    from speechdvae.checkpoints import save_model
    from speechdvae.models import build_model

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models")
    return {
        name: save_model(build_model(config), folder / name)
        for name, config in (("VAE", VAE_CONFIG), ("SRNN", SRNN_CONFIG))
    }


@pytest.fixture(scope="module")
def one_thread():
    """Step-by-step recursions on small batches run faster (and steadier on a busy machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tone_burst(
    sr: int = 16000,
    seconds: float = 1.0,
    lead: float = 0.3,
    tail: float = 0.4,
    amplitude: float = 0.5,
    floor: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """Silence (or a noise floor) - a 440 Hz burst - silence: a signal with a known active span."""
    rng = np.random.default_rng(seed)
    n_lead, n_on, n_tail = int(lead * sr), int(seconds * sr), int(tail * sr)
    t = np.arange(n_on) / sr
    x = np.concatenate([np.zeros(n_lead), amplitude * np.sin(2 * np.pi * 440 * t), np.zeros(n_tail)])
    return (x + floor * rng.standard_normal(len(x))).astype(np.float32)
