"""Shared fixtures: paths to the optional shared reference data and small synthetic signals."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
OFFICIAL = SHARED / "official-dvae-se"


@pytest.fixture
def official_dir() -> Path:
    if not OFFICIAL.is_dir():
        pytest.skip("../shared/official-dvae-se is not available")
    return OFFICIAL


@pytest.fixture(scope="module")
def one_thread():
    """Step-by-step recursions on small batches run faster (and steadier on a busy machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tone_burst(sr: int = 16000, seconds: float = 1.0, lead: float = 0.3, tail: float = 0.4,
               amplitude: float = 0.5, floor: float = 0.0, seed: int = 0) -> np.ndarray:
    """Silence (or a noise floor) - a 440 Hz burst - silence: a signal with a known active span."""
    rng = np.random.default_rng(seed)
    n_lead, n_on, n_tail = int(lead * sr), int(seconds * sr), int(tail * sr)
    t = np.arange(n_on) / sr
    x = np.concatenate([np.zeros(n_lead), amplitude * np.sin(2 * np.pi * 440 * t), np.zeros(n_tail)])
    return (x + floor * rng.standard_normal(len(x))).astype(np.float32)
