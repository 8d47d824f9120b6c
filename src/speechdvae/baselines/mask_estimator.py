"""The supervised baseline (UMX): an Open-Unmix-style mask estimator (SE paper Sec. V, "UMX retrain").

The network reads the magnitude STFT |X| of a noisy mixture (the project's STFT: 513 bins), normalises every
frequency with a learned shift and scale (initialised from training statistics), maps each frame to a hidden
size (linear + layer norm + tanh), runs a bidirectional LSTM whose output is concatenated with its input (skip
connection), and maps back to 513 bins (linear + layer norm + ReLU + linear); a sigmoid gives a mask in [0, 1].
The speech estimate is mask × X (the noisy phase), inverted to the input's length. Unlike the DVAE priors it is
trained on noisy/clean pairs (`train.baseline`) and needs no iterative inference.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence

from .. import stft
from ..checkpoints import CheckpointError, load_weights, read_checkpoint_config
from ..models.base import Configured

if TYPE_CHECKING:
    from ..enhancement.enhancer import MaskEnhancer

NORM_EPS = 1e-8


class MaskEstimator(Configured):
    """|X| (B, T, F) -> mask (B, T, F) in [0, 1]; `lengths` marks the valid frames of a padded batch."""

    name: ClassVar[str] = "umx"
    input_description: ClassVar[str] = "magnitude spectrogram |STFT| of the noisy mixture, shape (T, 513)"

    def __init__(self, n_freq: int = stft.N_FREQ, hidden_size: int = 128, lstm_layers: int = 3) -> None:
        super().__init__()
        if hidden_size < 2 or hidden_size % 2:
            raise ValueError(
                f"hidden_size must be an even number (two LSTM directions of half the size), got {hidden_size}"
            )
        self.n_freq = n_freq
        self.input_mean = nn.Parameter(torch.zeros(n_freq))
        self.input_scale = nn.Parameter(torch.ones(n_freq))
        self.encoder = nn.Sequential(nn.Linear(n_freq, hidden_size, bias=False), nn.LayerNorm(hidden_size), nn.Tanh())
        self.lstm = nn.LSTM(hidden_size, hidden_size // 2, num_layers=lstm_layers, bidirectional=True, batch_first=True)
        self.decoder = nn.Sequential(
            nn.Linear(2 * hidden_size, hidden_size, bias=False),
            nn.LayerNorm(hidden_size),
            nn.ReLU(),
            nn.Linear(hidden_size, n_freq),
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> MaskEstimator:
        """The model a `config` describes; ValueError for another model's or a malformed config."""
        kwargs = dict(config)
        if kwargs.pop("name", None) != cls.name:
            raise ValueError(f"not a {cls.name!r} mask estimator config (model {config.get('name')!r})")
        try:
            return cls(**kwargs)
        except TypeError as err:
            raise ValueError(f"invalid config for model {cls.name!r}: {err}") from None

    @property
    def device(self) -> torch.device:
        return self.input_mean.device

    @torch.no_grad()
    def init_normalisation(self, magnitude: torch.Tensor) -> None:
        """Set the input shift and scale to the mean and 1/std per frequency of mixture magnitudes (..., F)."""
        frames = magnitude.reshape(-1, self.n_freq).to(self.device, torch.float32)
        self.input_mean.copy_(frames.mean(0))
        self.input_scale.copy_(1.0 / (frames.std(0) + NORM_EPS))

    def forward(self, magnitude: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        hidden = self.encoder((magnitude - self.input_mean) * self.input_scale)
        if lengths is None:
            recurrent, _ = self.lstm(hidden)
        else:  # packed, so that a sequence's backward pass starts at its own last frame, not in the padding
            packed = pack_padded_sequence(hidden, lengths.cpu(), batch_first=True, enforce_sorted=False)
            recurrent, _ = pad_packed_sequence(self.lstm(packed)[0], batch_first=True, total_length=hidden.shape[1])
        return torch.sigmoid(self.decoder(torch.cat([hidden, recurrent], dim=-1)))

    def enhancer(self, config: object = None) -> MaskEnhancer:
        """This estimator as an enhancer (`enhancement.enhancer`); VEM settings do not apply to it."""
        from ..enhancement.enhancer import MaskEnhancer

        return MaskEnhancer(self)


@torch.no_grad()
def masks(model: MaskEstimator, magnitudes: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Masks (T, F), float32 on the CPU, of magnitude spectrograms (T, F) of any lengths, estimated as one
    padded batch (the result does not depend on the batching, up to rounding)."""
    lengths = torch.tensor([m.shape[0] for m in magnitudes])
    padded = pad_sequence([m.to(torch.float32) for m in magnitudes], batch_first=True)
    mask = model(padded.to(model.device), lengths).cpu()
    return [mask[b, :T] for b, T in enumerate(lengths.tolist())]


def holds_mask_estimator(path: str | os.PathLike) -> bool:
    """True if `path` is a checkpoint folder of the supervised baseline (UMX) rather than of a DVAE prior."""
    try:
        model = read_checkpoint_config(path).get("model")
    except CheckpointError:
        return False
    return isinstance(model, dict) and model.get("name") == MaskEstimator.name


def load_mask_estimator(path: str | os.PathLike, device: str | torch.device | None = None) -> MaskEstimator:
    """The supervised baseline (UMX) stored in checkpoint folder `path`, in eval mode (default device: CUDA if
    available)."""
    return load_weights(path, MaskEstimator.from_config, device)  # type: ignore[return-value]
