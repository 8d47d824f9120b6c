"""Audio in and out: any file soundfile reads -> mono float32 at 16 kHz; VAD trim; peak normalisation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from .atomic import atomic_path
from .errors import SpeechDVAEError

SAMPLE_RATE = 16000
# File suffixes of audio searched in folders (case-insensitive): the formats libsndfile reads, plus the NIST
# SPHERE names used by LDC corpora.
AUDIO_SUFFIXES = frozenset(
    {
        ".wav",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".aif",
        ".aiff",
        ".aifc",
        ".au",
        ".snd",
        ".caf",
        ".w64",
        ".rf64",
        ".sph",
        ".nist",
        ".voc",
        ".wv1",
        ".wv2",
    }
)
# Defaults of librosa.effects.trim, which the papers' preprocessing used.
TRIM_TOP_DB = 30.0
TRIM_FRAME_LENGTH = 2048
TRIM_HOP_LENGTH = 512


class AudioError(SpeechDVAEError, ValueError):
    """A file that cannot be used as audio input (unreadable, empty, silent, non-finite)."""


def to_mono(x: np.ndarray) -> np.ndarray:
    """Average the channels of a (samples, channels) array; pass 1-D arrays through."""
    return x.mean(axis=1) if x.ndim == 2 else x


def resample(x: np.ndarray, sr_in: float, sr_out: float) -> np.ndarray:
    """High-quality resampling (soxr, VHQ) of a 1-D signal; identity if the rates agree."""
    if sr_in == sr_out:
        return x
    return soxr.resample(x, sr_in, sr_out, quality="VHQ").astype(x.dtype, copy=False)


def read_audio(path: str | os.PathLike, sample_rate: int | None = SAMPLE_RATE) -> tuple[np.ndarray, int]:
    """Read any soundfile-supported file as mono float32, resampled to `sample_rate`.

    Returns (signal, original sample rate). `sample_rate=None` keeps the file's rate.
    Raises AudioError with the file name for anything unreadable, empty or non-finite.
    """
    path = Path(path)
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        raise AudioError(f"{path}: cannot read audio ({err})") from err
    if x.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples")
    x = to_mono(x)
    if not np.all(np.isfinite(x)):
        raise AudioError(f"{path}: the audio contains NaN or infinite samples")
    if sample_rate is not None:
        x = resample(x, sr, sample_rate)
    return np.ascontiguousarray(x, dtype=np.float32), sr


def write_audio(
    path: str | os.PathLike, x: np.ndarray, sample_rate: int = SAMPLE_RATE, subtype: str | None = None
) -> None:
    """Write a mono signal atomically; the signal is scaled down (never clipped) if it exceeds ±1.

    Integer formats (the default for wav is PCM_16) cannot hold values beyond full scale, so a
    signal whose peak exceeds 1 is divided by its peak first.
    """
    x = np.asarray(x, dtype=np.float32)
    peak = float(np.max(np.abs(x))) if x.size else 0.0
    if peak > 1.0:
        x = x / peak
    with atomic_path(path) as tmp:
        sf.write(str(tmp), x, sample_rate, subtype=subtype)


def frame_rms(x: np.ndarray, frame_length: int = TRIM_FRAME_LENGTH, hop_length: int = TRIM_HOP_LENGTH) -> np.ndarray:
    """RMS of centred, zero-padded frames (the framing of librosa.feature.rms)."""
    pad = frame_length // 2
    xp = np.pad(np.asarray(x, dtype=np.float64), (pad, pad))
    n_frames = 1 + (len(xp) - frame_length) // hop_length
    idx = np.arange(frame_length)[None, :] + hop_length * np.arange(n_frames)[:, None]
    return np.sqrt(np.mean(xp[idx] ** 2, axis=1))


def trim_bounds(
    x: np.ndarray, top_db: float = TRIM_TOP_DB, frame_length: int = TRIM_FRAME_LENGTH, hop_length: int = TRIM_HOP_LENGTH
) -> tuple[int, int]:
    """[start, end) keeping every frame within `top_db` dB of the loudest frame.

    Same rule as librosa.effects.trim: frame energies in dB relative to the maximum
    (floor 1e-10), non-silent frames are those above -top_db, and the kept range runs from
    the first non-silent frame's start to the last one's end (both on the hop grid).
    """
    if len(x) == 0:
        return 0, 0
    power = frame_rms(x, frame_length, hop_length) ** 2
    amin = 1e-10
    db = 10 * np.log10(np.maximum(amin, power)) - 10 * np.log10(max(amin, float(power.max())))
    nonsilent = np.flatnonzero(db > -top_db)
    if nonsilent.size == 0:
        return 0, 0
    start = int(nonsilent[0] * hop_length)
    end = min(len(x), int((nonsilent[-1] + 1) * hop_length))
    return start, end


def trim(x: np.ndarray, top_db: float = TRIM_TOP_DB) -> np.ndarray:
    """Remove leading and trailing silence (30 dB below the peak frame by default)."""
    start, end = trim_bounds(x, top_db)
    return x[start:end]


def peak_normalize(x: np.ndarray) -> np.ndarray:
    """Divide by the maximum absolute value; raises AudioError on an all-zero signal."""
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak == 0.0:
        raise AudioError("the signal is silent (all samples are zero)")
    return x / peak


def noise_floor_db(x: np.ndarray, quantile: float = 0.05, frame_length: int = 320, hop_length: int = 160) -> float:
    """Level in dBFS of the quietest `quantile` of 20-ms frames: the recording's noise floor.

    Used to reject recordings with audible background noise: a clean studio recording
    reaches well below -45 dBFS in its pauses.
    """
    if len(x) == 0 or not np.any(x):
        return -np.inf
    rms = frame_rms(x, frame_length, hop_length)
    return float(20 * np.log10(max(float(np.quantile(rms, quantile)), 1e-10)))
