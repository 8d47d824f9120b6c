"""Training of the supervised baseline (UMX): the Open-Unmix-style mask estimator of `baselines.mask_estimator`
(the SE paper's "UMX retrain"), on pairs mixed on the fly.

Each training example is a `crop_seconds` crop of a clean training utterance (placed at a random offset in
silence when shorter) plus a random segment of a training noise recording (looped when shorter) at an SNR drawn
uniformly from `snr_db` (BS.1770 loudness, `data.mix.mix_at_snr`); the pair is divided by the mixture's peak,
as the evaluation does, then scaled by a random gain from `gain_db`. Only the training noise manifest is read:
validation and test noise recordings are never seen. Audio is decoded once and kept in memory as 16-bit samples.
The loss is the mean squared error between the masked noisy magnitude and the clean magnitude (as Open-Unmix),
optimised with Adam. Every `valid_every` steps the same loss is measured on the fixed validation mixtures
(`speechdvae data mix` output, peak-normalised as in `eval enhance`); the best weights go to RUN_DIR/model.

The run folder is that of every trainer (`train.run`): config.json, state.pt (written every `checkpoint_every`
steps and at every validation), log.jsonl / log.csv (one row per validation) and model/. A batch depends only on
the seed and its step number, so a run continued with `--resume` after an interruption (even kill -9) repeats
exactly what an uninterrupted run does; only `steps` may change.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import checkpoints, stft
from ..audio import SAMPLE_RATE, AudioError, read_audio
from ..baselines.mask_estimator import MaskEstimator, masks
from ..data.manifest import read_manifest
from ..data.mix import mix_at_snr, noise_segment
from ..errors import SpeechDVAEError
from ..evaluate.mixtures import balanced_subset, read_mixtures, read_pair
from .run import RunTrainer, option_defaults

TRAIN_STREAM, STATS_STREAM = 0, 1  # random streams of the training batches and of the normalisation batches
MAX_DRAWS = 100  # attempts at a crop pair that is not silent
PCM16_SCALE = 32768.0
VALID_BATCH = 16


class BaselineError(SpeechDVAEError, ValueError):
    """Options or data that cannot train the supervised baseline (UMX), reported before any work starts."""


@dataclass(frozen=True)
class BaselineConfig:
    """Everything that defines a training run of the supervised baseline (UMX)."""

    speech_manifest: str
    noise_manifest: str
    valid_manifest: str
    hidden_size: int = 128
    lstm_layers: int = 3
    batch_size: int = 16
    crop_seconds: float = 2.5
    snr_db: tuple[float, float] = (-5.0, 5.0)
    gain_db: tuple[float, float] = (-10.0, 0.0)
    lr: float = 1e-3
    steps: int = 2000
    valid_every: int = 100
    valid_limit: int | None = None  # validate on this many mixtures, balanced over noise type × SNR
    checkpoint_every: int = 25
    stats_batches: int = 8  # batches whose mixtures initialise the input normalisation
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("batch_size", "valid_every", "checkpoint_every", "stats_batches", "hidden_size", "lstm_layers"):
            if getattr(self, name) < 1:
                raise BaselineError(f"{name} must be positive, got {getattr(self, name)}")
        if self.steps < 0 or self.lr <= 0 or self.crop_seconds * SAMPLE_RATE < stft.min_samples():
            raise BaselineError(f"need steps >= 0, lr > 0 and crops of at least {stft.min_samples()} samples")
        for name in ("snr_db", "gain_db"):
            low, high = getattr(self, name)
            if low > high:
                raise BaselineError(f"{name}: the range ({low}, {high}) is empty")

    @property
    def manifests(self) -> dict[str, str]:
        return {"speech": self.speech_manifest, "noise": self.noise_manifest, "validation": self.valid_manifest}

    def to_json(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @property
    def crop_samples(self) -> int:
        return round(self.crop_seconds * SAMPLE_RATE)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class AudioBank:
    """The waveforms of a manifest, decoded once and kept as one 16-bit array (half the memory of float32)."""

    def __init__(self, waves: Iterable[np.ndarray]) -> None:
        pcm = [np.clip(np.rint(x * PCM16_SCALE), -PCM16_SCALE, PCM16_SCALE - 1).astype(np.int16) for x in waves]
        self.offsets = np.cumsum([0, *(len(x) for x in pcm)])
        self.samples = np.concatenate(pcm)

    @classmethod
    def from_manifest(cls, path: str | os.PathLike, what: str, progress: bool) -> AudioBank:
        records = read_manifest(path)
        if not records:
            raise BaselineError(f"{path}: the {what} manifest lists no files")
        return cls(
            read_audio(r["path"])[0]
            for r in tqdm(records, desc=f"loading {what}", unit="file", disable=not progress, leave=False)
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.samples[self.offsets[index] : self.offsets[index + 1]].astype(np.float32) / PCM16_SCALE


def crop_or_pad(x: np.ndarray, length: int, rng: np.random.Generator) -> np.ndarray:
    """A random `length`-sample crop of x, or x at a random offset in silence when it is shorter."""
    if len(x) >= length:
        start = int(rng.integers(len(x) - length + 1))
        return x[start : start + length]
    out = np.zeros(length, dtype=x.dtype)
    start = int(rng.integers(length - len(x) + 1))
    out[start : start + len(x)] = x
    return out


def draw_pair(
    speech: AudioBank, noise: AudioBank, config: BaselineConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One training example (noisy, clean), float32 of `crop_samples`, scaled as described in the module doc."""
    length = config.crop_samples
    for _ in range(MAX_DRAWS):
        clean = crop_or_pad(speech[int(rng.integers(len(speech)))], length, rng)
        recording = noise[int(rng.integers(len(noise)))]
        segment, _ = noise_segment(recording, int(rng.integers(len(recording))), length)
        try:
            noisy, _, _ = mix_at_snr(clean, segment, float(rng.uniform(*config.snr_db)))
        except AudioError:
            continue  # a silent crop of speech or noise: draw again
        gain = 10 ** (rng.uniform(*config.gain_db) / 20) / np.abs(noisy).max()
        return (noisy * gain).astype(np.float32), (clean * gain).astype(np.float32)
    raise BaselineError(f"{MAX_DRAWS} draws in a row gave a silent speech or noise crop; check the manifests")


def draw_batch(
    speech: AudioBank, noise: AudioBank, config: BaselineConfig, stream: int, index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch `index` of a random stream, (noisy, clean) of shape (B, N): a function of the seed and index only."""
    rng = np.random.default_rng([config.seed, stream, index])
    noisy, clean = zip(*(draw_pair(speech, noise, config, rng) for _ in range(config.batch_size)))
    return torch.from_numpy(np.stack(noisy)), torch.from_numpy(np.stack(clean))


def read_validation(config: BaselineConfig, progress: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Noisy and clean magnitude spectrograms (T, F) of the validation mixtures, peak-normalised as in the
    evaluation, longest first."""
    records = balanced_subset(read_mixtures(config.valid_manifest), config.valid_limit)
    if not records:
        raise BaselineError(f"{config.valid_manifest}: no validation mixtures listed")
    spectra = []
    for record in tqdm(records, desc="loading validation mixtures", unit="file", disable=not progress, leave=False):
        noisy, clean = read_pair(record)
        spectra.append(tuple(stft.stft(torch.from_numpy(x)).abs() for x in (noisy, clean)))
    return sorted(spectra, key=lambda pair: -pair[0].shape[0])


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


def magnitude_loss(model: MaskEstimator, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """Mean squared error between |mask × X| and |S| over the time-frequency bins of waveforms (B, N)."""
    noisy_mag, clean_mag = (stft.stft(x).abs() for x in (noisy, clean))
    return (model(noisy_mag) * noisy_mag - clean_mag).square().mean()


def validation_loss(model: MaskEstimator, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The same error over all bins of the validation mixtures (each at its own length)."""
    total, bins = 0.0, 0
    for start in range(0, len(pairs), VALID_BATCH):
        batch = pairs[start : start + VALID_BATCH]
        for (noisy, clean), mask in zip(batch, masks(model, [noisy for noisy, _ in batch])):
            total += float((mask * noisy - clean).square().sum())
            bins += noisy.numel()
    return total / bins


# ---------------------------------------------------------------------------------------------
# Trainer
# ---------------------------------------------------------------------------------------------


class BaselineTrainer(RunTrainer):
    """Trains the supervised baseline (UMX) described by a BaselineConfig, writing into `run_dir`."""

    error = BaselineError
    budget = ("steps",)
    defaults = option_defaults(BaselineConfig)
    state_keys = (*RunTrainer.state_keys, "train_sum", "train_count", "best_step")
    config: BaselineConfig
    model: MaskEstimator

    def __init__(
        self,
        config: BaselineConfig,
        run_dir: str | os.PathLike,
        resume: bool = False,
        progress: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(config, run_dir, torch.device(device) if device is not None else checkpoints.default_device())
        self.progress = progress
        state = self._open(resume)
        self.speech = AudioBank.from_manifest(config.speech_manifest, "speech", progress)
        self.noise = AudioBank.from_manifest(config.noise_manifest, "noise", progress)
        self.valid = read_validation(config, progress)
        torch.manual_seed(config.seed)
        self.model = MaskEstimator(hidden_size=config.hidden_size, lstm_layers=config.lstm_layers).to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        self.train_sum, self.train_count = 0.0, 0  # training losses since the last validation
        self.best_step = -1
        if state is None:
            self._init_normalisation()
        self._start(state)

    def _init_normalisation(self) -> None:
        """Input shift and scale from the magnitudes of `stats_batches` batches of training mixtures."""
        noisy = [
            draw_batch(self.speech, self.noise, self.config, STATS_STREAM, i)[0]
            for i in range(self.config.stats_batches)
        ]
        self.model.init_normalisation(stft.stft(torch.cat(noisy)).abs())

    # -- loop ----------------------------------------------------------------------------
    def train(self) -> Path:
        """Run to the step budget, validating every `valid_every` steps; returns the exported model folder."""
        config = self.config
        bar = tqdm(
            total=config.steps,
            initial=min(self.step, config.steps),
            unit="step",
            desc="UMX",
            disable=not self.progress,
        )
        clock = time.time()
        while self.step < config.steps:
            noisy, clean = draw_batch(self.speech, self.noise, config, TRAIN_STREAM, self.step)
            loss = self._train_step(noisy.to(self.device), clean.to(self.device))
            self.step += 1
            self.train_sum, self.train_count = self.train_sum + loss, self.train_count + 1
            bar.update()
            bar.set_postfix(loss=f"{loss:.4f}")
            if self.step % config.valid_every == 0 or self.step == config.steps:
                self.elapsed, clock = self.elapsed + time.time() - clock, time.time()
                self._validate()
            elif self.step % config.checkpoint_every == 0:
                self.elapsed, clock = self.elapsed + time.time() - clock, time.time()
                self._save_state()
        bar.close()
        if self.best_state is None:  # a budget reached before any validation
            self._validate()
        return self._export()

    def _train_step(self, noisy: torch.Tensor, clean: torch.Tensor) -> float:
        self.model.train()
        loss = magnitude_loss(self.model, noisy, clean)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(loss.detach())

    def _validate(self) -> None:
        """Log the mean training loss since the last validation and the validation loss; keep the best weights."""
        self.model.eval()
        valid = validation_loss(self.model, self.valid)
        improved = valid < self.best_loss
        if improved:
            self.best_step = self.step
            self._keep_best(valid)
        train = self.train_sum / self.train_count if self.train_count else math.nan
        self.history.append(
            {
                "step": self.step,
                "train_loss": train,
                "valid_loss": valid,
                "best": improved,
                "seconds": round(self.elapsed, 1),
            }
        )
        tqdm.write(
            f"step {self.step}: train {train:.4f}  valid {valid:.4f}{'  *' if improved else ''}  ({self.elapsed:.0f} s)"
        )
        self.train_sum, self.train_count = 0.0, 0
        self._save_state()

    def _new_model(self) -> MaskEstimator:
        return MaskEstimator.from_config(self.model.config)

    def _training_record(self) -> dict[str, Any]:
        return {
            "best_step": self.best_step,
            "best_valid_loss": self.best_loss,
            "steps": self.step,
            "seconds": round(self.elapsed, 1),
            "device": self.device.type,
            "config": self.config.to_json(),
        }
