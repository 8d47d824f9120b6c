"""One interface for every way of enhancing speech: noisy STFTs in, real gains (estimate = gain × noisy STFT)
out, each item named by a key that seeds its random streams, so results do not depend on the batching.

The VEM over any DVAE prior (`VEMEnhancer`), posterior sampling by Langevin dynamics over any DVAE prior
(`LangevinEnhancer`) and the supervised mask estimator (`MaskEnhancer`) implement it; files, evaluations, the
listening page, the demo and `speechdvae.enhance` use only this interface.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from .. import stft
from ..baselines.mask_estimator import MaskEstimator, holds_mask_estimator, load_mask_estimator, masks
from ..checkpoints import checkpoint_path, load_model
from ..commands import ENGINES
from ..errors import UserError
from ..models.base import DVAE
from .common import EnhancementResult
from .langevin import LangevinConfig, enhance_by_sampling
from .vem import VEMConfig, enhance_spectrogram

# The settings of an inference engine over a DVAE prior; their type chooses the engine.
InferenceConfig = VEMConfig | LangevinConfig
# The engines by the name their settings carry (`VEMConfig.engine`, `LangevinConfig.engine`), the default first.
INFERENCE_CONFIGS: dict[str, type[InferenceConfig]] = {config.engine: config for config in (VEMConfig, LangevinConfig)}


@dataclass(frozen=True)
class InferenceRequest:
    """The inference asked of speech priors whose own settings may differ: an engine (None: each prior's own, the
    engine of its checkpoint's "inference" entry, else the VEM), whether to start from the official VEM settings
    instead of the prior's own, and settings (fields of the engine's config) that replace the starting ones."""

    engine: str | None = None
    official: bool = False
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.engine is not None and self.engine not in INFERENCE_CONFIGS:
            raise ValueError(f"the inference engine must be one of {', '.join(INFERENCE_CONFIGS)}, got {self.engine!r}")
        if self.official and self.engine not in (None, VEMConfig.engine):
            raise ValueError(f"the official settings are the VEM's, not {self.engine}'s")

    def for_prior(self, prior: DVAE) -> InferenceConfig:
        """The settings `prior` runs: the engine's official (VEM) or default settings, then the prior's own when they
        are for that engine (not with `official`), then `settings`; UserError if they do not fit together. A prior's
        own Langevin average (`wf_samples`) is cut to the iterations after the warm-up when `settings` ask for
        fewer iterations than it averages, so that asking a prior for fewer iterations needs no other option."""
        own = dict(prior.inference or {})
        own_engine = own.pop("engine", VEMConfig.engine)
        engine = self.engine or (VEMConfig.engine if self.official else own_engine)
        settings = dict(self.settings)
        if self.official:
            base = VEMConfig.official()
        else:
            base = INFERENCE_CONFIGS[engine]()
            if own_engine == engine:
                base = replace(base, **own)
                if isinstance(base, LangevinConfig) and "wf_samples" in own and "wf_samples" not in settings:
                    after_warmup = settings.get("niter", base.niter) - settings.get("warmup", base.warmup)
                    if 0 < after_warmup < base.wf_samples:
                        settings["wf_samples"] = after_warmup
        try:
            return settings_with(base, settings)
        except ValueError as err:
            raise UserError(f"{ENGINES[engine]} settings of the prior with {dict(self.settings)}: {err}") from err


def settings_with(config: InferenceConfig, settings: Mapping[str, Any]) -> InferenceConfig:
    """`config` with the fields in `settings` replaced; ValueError naming the engine for unknown ones or values of
    the wrong type, and the config's own error for invalid values."""
    known = {f.name for f in fields(config)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not settings of the {config.engine} engine (valid: {', '.join(sorted(known))})"
        )
    for name, value in settings.items():
        kind = type(getattr(config, name))
        if isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float) if kind is float else kind):
            raise ValueError(f"{config.engine} setting {name} must be of type {kind.__name__}, got {value!r}")
    return replace(config, **settings)


def describe_settings(config: InferenceConfig) -> str:
    """`config` in one line: the engine's name, then every setting as name=value."""
    return f"{ENGINES[config.engine]}, " + ", ".join(f"{f.name}={getattr(config, f.name)}" for f in fields(config))


# What the enhancers of priors are asked for: exact settings, or a request resolved for each prior.
Inference = InferenceConfig | InferenceRequest


def inference_for(prior: DVAE, inference: Inference | None) -> InferenceConfig:
    """The settings `prior` runs for `inference`: exact settings as given, a request resolved for the prior
    (`InferenceRequest.for_prior`); None asks for the prior's own."""
    if isinstance(inference, InferenceRequest | None):
        return (inference or InferenceRequest()).for_prior(prior)
    return inference


@dataclass
class Gains:
    """What an enhancer gives a batch: one real gain (T, F) on the CPU per noisy STFT, the iterations each item
    ran (None for enhancers that do not iterate), the enhancer's time for the batch, and the gains of the
    snapshots asked for: what the same enhancer stopped after k iterations gives (iterative enhancers only)."""

    gains: list[torch.Tensor]
    iterations: list[int | None]
    seconds: float = math.nan
    snapshots: dict[int, Gains] = field(default_factory=dict)


class Enhancer(Protocol):
    """Anything that enhances noisy speech."""

    network: nn.Module  # the trained network: its config and weights identify cached results
    prior: DVAE | None  # the speech prior it is built on (None for a supervised enhancer)
    settings: Any  # a dataclass of the settings besides the weights that shape results, or None

    def gains(
        self,
        spectra: Sequence[torch.Tensor],
        keys: Sequence[str],
        progress: bool = False,
        snapshots: Sequence[int] = (),
    ) -> Gains:
        """Gains (T, F) of noisy STFTs (T, F) of any lengths, enhanced as one batch; `keys` name the items.
        Iterative enhancers add the gains after each of `snapshots` iterations; the others ignore them."""
        ...


# An engine run on a padded batch: (X (B, T, F), lengths, keys) -> its result.
Engine = Callable[[torch.Tensor, list[int], list[str]], EnhancementResult]


def engine_gains(
    spectra: Sequence[torch.Tensor], keys: Sequence[str], engine: Engine, snapshots: Sequence[int]
) -> Gains:
    """Wiener gains of noisy STFTs enhanced by `engine` as one padded batch, with the `snapshots` it took; all-zero
    STFTs get zero gains without running it."""
    active = [b for b, s in enumerate(spectra) if bool(s.abs().amax() > 0)]
    lengths = [spectra[b].shape[0] for b in active]

    def scatter(wiener: torch.Tensor | None, iterations: Sequence[int], seconds: float) -> Gains:
        out = Gains([torch.zeros(s.shape, dtype=torch.float32) for s in spectra], [0] * len(spectra), seconds)
        for j, b in enumerate(active):
            out.gains[b] = wiener[j, : lengths[j]].cpu()
            out.iterations[b] = iterations[j]
        return out

    if not active:
        zeros = scatter(None, [], 0.0)
        return replace(zeros, snapshots=dict.fromkeys(snapshots, zeros))
    X = torch.zeros(len(active), max(lengths), spectra[0].shape[-1], dtype=spectra[0].dtype)
    for j, b in enumerate(active):
        X[j, : lengths[j]] = spectra[b]
    result = engine(X, lengths, [keys[b] for b in active])
    gains = scatter(result.wiener_gain, result.iterations.tolist(), result.seconds)
    for k, (wiener, seconds) in result.snapshots.items():
        gains.snapshots[k] = scatter(wiener, result.iterations.clamp(max=k).tolist(), seconds)
    return gains


class PriorEnhancer:
    """An inference engine over a DVAE speech prior with an NMF noise model (`engine`, e.g. `enhance_spectrogram`,
    called with the prior, a padded batch and `settings`): Wiener gains."""

    engine: Callable[..., EnhancementResult]

    def __init__(self, prior: DVAE, settings: InferenceConfig) -> None:
        self.network = self.prior = prior.eval()
        self.settings = settings

    def gains(
        self,
        spectra: Sequence[torch.Tensor],
        keys: Sequence[str],
        progress: bool = False,
        snapshots: Sequence[int] = (),
    ) -> Gains:
        """Wiener gains of one padded batch."""
        return engine_gains(
            spectra,
            keys,
            lambda X, lengths, names: type(self).engine(
                self.prior, X, self.settings, lengths=lengths, keys=names, progress=progress, snapshots=snapshots
            ),
            snapshots,
        )


class VEMEnhancer(PriorEnhancer):
    """The variational EM (SE paper, Algorithm 1) with a DVAE speech prior and an NMF noise model: Wiener gains."""

    engine = enhance_spectrogram

    def __init__(self, prior: DVAE, config: VEMConfig | None = None) -> None:
        super().__init__(prior, config or VEMConfig())


class LangevinEnhancer(PriorEnhancer):
    """Posterior sampling of a DVAE prior's latents by Langevin dynamics with an NMF noise model, no fine-tuning
    (`enhancement.langevin`): Wiener gains averaged over the last samples."""

    engine = enhance_by_sampling

    def __init__(self, prior: DVAE, config: LangevinConfig | None = None) -> None:
        super().__init__(prior, config or LangevinConfig())


def prior_enhancer(prior: DVAE, inference: Inference | None = None) -> VEMEnhancer | LangevinEnhancer:
    """A speech prior as an enhancer by the engine and settings `inference` gives it (`inference_for`; None: the
    prior's own)."""
    config = inference_for(prior, inference)
    if isinstance(config, LangevinConfig):
        return LangevinEnhancer(prior, config)
    return VEMEnhancer(prior, config)


class MaskEnhancer:
    """The supervised baseline: the mask a `MaskEstimator` reads from the noisy magnitudes is the gain."""

    prior = None
    settings = None

    def __init__(self, estimator: MaskEstimator) -> None:
        self.network = estimator.eval()

    def gains(
        self,
        spectra: Sequence[torch.Tensor],
        keys: Sequence[str],
        progress: bool = False,
        snapshots: Sequence[int] = (),
    ) -> Gains:
        """Masks of one padded batch (the keys are unused: the estimator draws nothing at random)."""
        start = time.perf_counter()
        estimated = masks(self.network, [s.abs() for s in spectra])
        return Gains(estimated, [None] * len(spectra), time.perf_counter() - start)


EnhancerSource = str | os.PathLike | DVAE | MaskEstimator


def load_enhancer(
    source: EnhancerSource, inference: Inference | None = None, device: str | torch.device | None = None
) -> Enhancer:
    """The enhancer of a shipped name, a checkpoint folder or a network in memory: for a speech prior the engine
    and settings `inference` gives it (`prior_enhancer`; None: the prior's own), the mask itself for a mask
    estimator."""
    if isinstance(source, (str, os.PathLike)):
        path = checkpoint_path(source)
        source = load_mask_estimator(path, device) if holds_mask_estimator(path) else load_model(path, device)
    return source.enhancer(inference)


@dataclass
class Estimates:
    """Speech estimates of a batch of waveforms (float32, each of its input's length), the iterations each ran
    (None for enhancers that do not iterate), the time of the enhancer and the inverse STFTs, and the estimates
    of the snapshots asked for (`Gains.snapshots`)."""

    waves: list[np.ndarray]
    iterations: list[int | None]
    seconds: float
    snapshots: dict[int, Estimates] = field(default_factory=dict)


def enhance_waves(
    enhancer: Enhancer, waves: Sequence[np.ndarray], keys: Sequence[str], snapshots: Sequence[int] = ()
) -> Estimates:
    """Enhance 16 kHz waveforms as one batch (and, for iterative enhancers, after each of `snapshots` iterations)."""
    spectra = [stft.stft(torch.from_numpy(np.asarray(x, dtype=np.float64))) for x in waves]

    def estimates(gains: Gains) -> Estimates:
        start = time.perf_counter()
        out = [
            stft.istft(s * g, length=len(x)).to(torch.float32).numpy() for s, g, x in zip(spectra, gains.gains, waves)
        ]
        return Estimates(out, gains.iterations, gains.seconds + time.perf_counter() - start)

    result = enhancer.gains(spectra, keys, snapshots=snapshots)
    return replace(estimates(result), snapshots={k: estimates(g) for k, g in result.snapshots.items()})
