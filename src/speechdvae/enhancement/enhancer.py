"""One interface for every way of enhancing speech: noisy STFTs in, real gains (estimate = gain × noisy STFT)
out, each item named by a key that seeds its random streams, so results do not depend on the batching.

The VEM over any DVAE prior (`VEMEnhancer`), posterior sampling by Langevin dynamics over any DVAE prior
(`LangevinEnhancer`) and the supervised mask estimator (`MaskEnhancer`) implement it; files, evaluations, the
listening page, the demo and `speechdvae.enhance` use only this interface.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .. import stft
from ..baselines.mask_estimator import MaskEstimator, holds_mask_estimator, load_mask_estimator, masks
from ..checkpoints import checkpoint_path, load_model
from ..models.base import DVAE
from .common import EnhancementResult
from .langevin import LangevinConfig, enhance_by_sampling
from .vem import VEMConfig, enhance_spectrogram

# The settings of an inference engine over a DVAE prior; their type chooses the engine.
InferenceConfig = VEMConfig | LangevinConfig
# The engines by the name their settings carry (`VEMConfig.engine`, `LangevinConfig.engine`).
INFERENCE_CONFIGS: dict[str, type[InferenceConfig]] = {config.engine: config for config in (VEMConfig, LangevinConfig)}


@dataclass
class Gains:
    """What an enhancer gives a batch: one real gain (T, F) on the CPU per noisy STFT, and the iterations each item
    ran (None for enhancers that do not iterate)."""

    gains: list[torch.Tensor]
    iterations: list[int | None]


class Enhancer(Protocol):
    """Anything that enhances noisy speech."""

    network: nn.Module  # the trained network: its config and weights identify cached results
    prior: DVAE | None  # the speech prior it is built on (None for a supervised enhancer)
    settings: Any  # a dataclass of the settings besides the weights that shape results, or None

    def gains(self, spectra: Sequence[torch.Tensor], keys: Sequence[str], progress: bool = False) -> Gains:
        """Gains (T, F) of noisy STFTs (T, F) of any lengths, enhanced as one batch; `keys` name the items."""
        ...


# An engine run on a padded batch: (X (B, T, F), lengths, keys) -> its result.
Engine = Callable[[torch.Tensor, list[int], list[str]], EnhancementResult]


def engine_gains(spectra: Sequence[torch.Tensor], keys: Sequence[str], engine: Engine) -> Gains:
    """Wiener gains of noisy STFTs enhanced by `engine` as one padded batch; all-zero STFTs get zero gains
    without running it."""
    gains = [torch.zeros(s.shape, dtype=torch.float32) for s in spectra]
    iterations: list[int | None] = [0] * len(spectra)
    active = [b for b, s in enumerate(spectra) if bool(s.abs().amax() > 0)]
    if not active:
        return Gains(gains, iterations)
    lengths = [spectra[b].shape[0] for b in active]
    X = torch.zeros(len(active), max(lengths), spectra[0].shape[-1], dtype=spectra[0].dtype)
    for j, b in enumerate(active):
        X[j, : lengths[j]] = spectra[b]
    result = engine(X, lengths, [keys[b] for b in active])
    for j, b in enumerate(active):
        gains[b] = result.wiener_gain[j, : lengths[j]].cpu()
        iterations[b] = int(result.iterations[j])
    return Gains(gains, iterations)


class VEMEnhancer:
    """The variational EM (SE paper, Algorithm 1) with a DVAE speech prior and an NMF noise model: Wiener gains."""

    def __init__(self, prior: DVAE, config: VEMConfig | None = None) -> None:
        self.network = self.prior = prior.eval()
        self.settings = (config or VEMConfig()).for_model(prior)

    def gains(self, spectra: Sequence[torch.Tensor], keys: Sequence[str], progress: bool = False) -> Gains:
        """Wiener gains of one padded VEM batch."""
        return engine_gains(
            spectra,
            keys,
            lambda X, lengths, names: enhance_spectrogram(
                self.prior, X, self.settings, lengths=lengths, keys=names, progress=progress
            ),
        )


class LangevinEnhancer:
    """Posterior sampling of a DVAE prior's latents by Langevin dynamics with an NMF noise model, no fine-tuning
    (`enhancement.langevin`): Wiener gains averaged over the last samples."""

    def __init__(self, prior: DVAE, config: LangevinConfig | None = None) -> None:
        self.network = self.prior = prior.eval()
        self.settings = config or LangevinConfig()

    def gains(self, spectra: Sequence[torch.Tensor], keys: Sequence[str], progress: bool = False) -> Gains:
        """Wiener gains of one padded batch of Markov chains."""
        return engine_gains(
            spectra,
            keys,
            lambda X, lengths, names: enhance_by_sampling(
                self.prior, X, self.settings, lengths=lengths, keys=names, progress=progress
            ),
        )


def prior_enhancer(prior: DVAE, config: InferenceConfig | None = None) -> VEMEnhancer | LangevinEnhancer:
    """A speech prior as an enhancer: posterior sampling with a `LangevinConfig`, else the VEM with `config`
    (default settings if None)."""
    if isinstance(config, LangevinConfig):
        return LangevinEnhancer(prior, config)
    return VEMEnhancer(prior, config)


class MaskEnhancer:
    """The supervised baseline: the mask a `MaskEstimator` reads from the noisy magnitudes is the gain."""

    prior = None
    settings = None

    def __init__(self, estimator: MaskEstimator) -> None:
        self.network = estimator.eval()

    def gains(self, spectra: Sequence[torch.Tensor], keys: Sequence[str], progress: bool = False) -> Gains:
        """Masks of one padded batch (the keys are unused: the estimator draws nothing at random)."""
        return Gains(masks(self.network, [s.abs() for s in spectra]), [None] * len(spectra))


EnhancerSource = str | os.PathLike | DVAE | MaskEstimator


def load_enhancer(
    source: EnhancerSource, config: InferenceConfig | None = None, device: str | torch.device | None = None
) -> Enhancer:
    """The enhancer of a shipped name, a checkpoint folder or a network in memory: for a speech prior the engine
    that `config` sets (the VEM with default settings if None, `prior_enhancer`), the mask itself for a mask
    estimator."""
    if isinstance(source, (str, os.PathLike)):
        path = checkpoint_path(source)
        source = load_mask_estimator(path, device) if holds_mask_estimator(path) else load_model(path, device)
    return source.enhancer(config)


def enhance_waves(
    enhancer: Enhancer, waves: Sequence[np.ndarray], keys: Sequence[str]
) -> tuple[list[np.ndarray], list[int | None]]:
    """Speech estimates (float32, each of its input's length) of 16 kHz waveforms enhanced as one batch, and the
    iterations each ran (None for enhancers that do not iterate)."""
    spectra = [stft.stft(torch.from_numpy(np.asarray(x, dtype=np.float64))) for x in waves]
    result = enhancer.gains(spectra, keys)
    estimates = [
        stft.istft(s * g, length=len(x)).to(torch.float32).numpy() for s, g, x in zip(spectra, result.gains, waves)
    ]
    return estimates, result.iterations
