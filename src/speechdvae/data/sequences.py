"""Training data: fixed-length power-spectrogram sequences, computed once and memory-mapped.

Preprocessing follows the papers: trim leading/trailing silence (30 dB), normalise each file by
its peak, power STFT. The spectrograms of all files are stored back to back in one float32 file of
shape (frames, 513) under the cache folder, keyed by the manifest content and the preprocessing
settings, so a second run (or another process) reuses them at no cost.

Each file is then cut into non-overlapping sequences of T frames (the remainder is dropped), or,
with `random_crop`, one random T-frame window per such sequence slot is drawn anew each epoch. With
`join_speakers`, each speaker's files are cut as one stream instead, as if their prompts had been
recorded back to back, so that files shorter than T frames are used too. With `warp`, each
training sequence's frequency axis is warped by its own random factor (`warp_frequencies`), a cheap
stand-in for more speakers. With `speeds` (speed perturbation, Ko et al. 2015), the cache also holds every file
resampled to play at each of these speeds (pitch, formants and tempo scaled together), each speed of a speaker
counting as a speaker of its own; unlike `warp`, the spectrograms keep the statistics of a real STFT. With
`floor_db`, white noise at that level (dBFS, of the peak-normalised waveform) is added to every sequence's power
(`add_floor`): a recording's noise floor, which fills the codec holes and digital silence of compressed or
synthetic-quiet recordings.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Iterator
from itertools import groupby
from pathlib import Path

import numpy as np
import torch

from .. import audio, stft
from ..atomic import atomic_path, write_json_atomic
from .manifest import read_manifest

CACHE_VERSION = 1

# Vocal tract length perturbation (Jaitly & Hinton 2013): frequencies up to this fraction of the band (4.8 kHz at
# 16 kHz) are scaled by the warp factor, the rest mapped linearly so that the band edge stays in place.
WARP_BOUNDARY = 0.6


def preprocess(x: np.ndarray, trim: bool = True) -> np.ndarray:
    """Trim + peak-normalise a 16 kHz waveform and return its power spectrogram (T, F) float32."""
    if trim:
        x = audio.trim(x)
    x = audio.peak_normalize(x)
    spec = stft.power_spectrogram(torch.from_numpy(np.asarray(x, dtype=np.float64)))
    return spec.to(torch.float32).numpy()


def check_speeds(speeds: tuple[float, ...]) -> None:
    """ValueError unless `speeds` are distinct factors in [0.5, 2]."""
    if not speeds or not all(0.5 <= s <= 2 for s in speeds) or len(set(speeds)) < len(speeds):
        raise ValueError(f"speeds must be distinct factors in [0.5, 2], got {speeds!r}")


def at_speed(name: str, speed: float) -> str:
    """The id (or speaker) of a file played at `speed`: the name itself at speed 1."""
    return name if speed == 1 else f"{name}@{speed:g}"


def change_speed(x: np.ndarray, speed: float) -> np.ndarray:
    """A 16 kHz waveform played `speed` times faster: read as if sampled at `speed` × 16 kHz and resampled to
    16 kHz (1 / `speed` times as many samples)."""
    return x if speed == 1 else audio.resample(x, audio.SAMPLE_RATE * speed, audio.SAMPLE_RATE)


class SpectrogramCache:
    """All spectrograms of a manifest (each file at each of `speeds`), back to back in one memory-mapped (frames, F)
    array."""

    def __init__(
        self,
        manifest: str | os.PathLike,
        cache_dir: str | os.PathLike,
        trim: bool = True,
        show_progress: bool = True,
        speeds: tuple[float, ...] = (1.0,),
    ) -> None:
        check_speeds(speeds)
        records = read_manifest(manifest)
        settings = {
            "version": CACHE_VERSION,
            "trim": trim,
            "n_fft": stft.N_FFT,
            "hop": stft.HOP_LENGTH,
            "files": [(r["id"], r.get("sha256") or r["path"]) for r in records],
        }
        if tuple(speeds) != (1.0,):  # left out at its neutral value, so caches built before speeds stay valid
            settings["speeds"] = list(speeds)
        key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
        self.folder = Path(cache_dir) / f"{Path(manifest).stem}-{key}"
        if not (self.folder / "index.json").is_file():
            self._build(records, trim, show_progress, speeds)
        index = json.loads((self.folder / "index.json").read_text())
        self.ids: list[str] = index["ids"]
        speakers = {at_speed(r["id"], s): at_speed(r.get("speaker", r["id"]), s) for r in records for s in speeds}
        self.speakers: list[str] = [speakers[i] for i in self.ids]  # a file without a speaker is its own
        self.offsets = np.asarray(index["offsets"], dtype=np.int64)
        self.lengths = np.asarray(index["lengths"], dtype=np.int64)
        self.skipped: list[str] = index["skipped"]
        total = int(self.lengths.sum())
        self.frames = (
            np.memmap(self.folder / "spec.f32", dtype=np.float32, mode="r", shape=(total, stft.N_FREQ))
            if total
            else np.zeros((0, stft.N_FREQ), np.float32)
        )

    def _build(self, records: list[dict], trim: bool, show_progress: bool, speeds: tuple[float, ...]) -> None:
        from tqdm import tqdm

        self.folder.mkdir(parents=True, exist_ok=True)
        ids, lengths, skipped = [], [], []
        with atomic_path(self.folder / "spec.f32") as tmp, open(tmp, "wb") as f:
            for r in tqdm(records, desc=f"spectrograms {self.folder.name}", unit="file", disable=not show_progress):
                try:
                    x, _ = audio.read_audio(r["path"])
                    specs = [preprocess(change_speed(x, s), trim) for s in speeds]
                except (audio.AudioError, ValueError) as err:
                    skipped.append(f"{r['id']}: {err}")
                    continue
                for s, spec in zip(speeds, specs, strict=True):
                    f.write(spec.tobytes())
                    ids.append(at_speed(r["id"], s))
                    lengths.append(spec.shape[0])
        if skipped:
            warnings.warn(
                f"{len(skipped)} file(s) skipped while computing spectrograms, e.g. {skipped[0]}", stacklevel=2
            )
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).tolist() if lengths else []
        write_json_atomic(
            self.folder / "index.json", {"ids": ids, "offsets": offsets, "lengths": lengths, "skipped": skipped}
        )


def floor_power(floor_db: float) -> float:
    """Expected power per bin of white noise at `floor_db` dBFS in the project's STFT (sum of the squared sine
    window: N_FFT / 2)."""
    return 10 ** (floor_db / 10) * stft.N_FFT / 2


def add_floor(power: torch.Tensor, floor_db: float, generator: torch.Generator) -> torch.Tensor:
    """Power spectrograms plus white noise at `floor_db` dBFS, added as power: each bin draws an exponential
    power, as white Gaussian noise's STFT bins do (the cross term with the speech, which averages to zero, is
    left out)."""
    noise = torch.empty_like(power).exponential_(generator=generator)
    return power + floor_power(floor_db) * noise


def warp_frequencies(power: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Power spectrograms (B, T, F) with sequence b's frequency axis warped by factors[b] (VTLP): a bin at
    frequency f moves to alpha f below the boundary (WARP_BOUNDARY of the band, times min(alpha, 1)), and
    linearly from there to the band edge, which stays. Each output bin interpolates the input linearly between
    the two bins its frequency comes from; a factor of 1 returns the input."""
    bins = power.shape[-1]
    edge = bins - 1.0
    alpha = factors.to(power.dtype)[:, None]  # (B, 1)
    knee = WARP_BOUNDARY * edge * alpha.clamp(max=1.0)  # the knee in output frequency
    out = torch.arange(bins, dtype=power.dtype, device=power.device)[None]  # (1, F) output frequencies
    below = out / alpha
    above = edge - (edge - out) * (edge - knee / alpha) / (edge - knee)
    source = torch.where(out <= knee, below, above).clamp(0.0, edge)  # (B, F) input frequency of each output bin
    low = source.floor().long().clamp(max=bins - 2)
    weight = (source - low)[:, None, :]
    index = low[:, None, :].expand(-1, power.shape[1], -1)
    return torch.lerp(power.gather(-1, index), power.gather(-1, index + 1), weight)


class SequenceDataset:
    """T-frame sequences of a SpectrogramCache, served as whole (B, T, F) batches.

    Batches are gathered with one fancy-indexing read of the memory map, which is much faster
    than collating items one by one. `rank`/`world_size` shard the sequences for DDP.
    """

    def __init__(
        self,
        cache: SpectrogramCache,
        seq_len: int,
        random_crop: bool = False,
        warp: float = 0.0,
        join_speakers: bool = False,
        floor_db: float | None = None,
    ) -> None:
        if seq_len < 1:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        if not 0 <= warp < 0.5:
            raise ValueError(f"warp must lie in [0, 0.5), got {warp}")
        self.cache = cache
        self.seq_len = seq_len
        self.random_crop = random_crop
        self.warp = warp
        self.floor_db = floor_db
        # streams: each file on its own, or each speaker's files back to back in manifest order; `rows` maps the
        # streams' frames, one stream after the other, to rows of the cache
        files = np.arange(len(cache.ids))
        if join_speakers:
            speaker_of = {s: k for k, s in enumerate(dict.fromkeys(cache.speakers))}
            files = files[np.argsort([speaker_of[s] for s in cache.speakers], kind="stable")]
            groups = [list(g) for _, g in groupby(files, key=lambda f: cache.speakers[f])]
        else:
            groups = [[f] for f in files]
        self.rows = (
            np.concatenate([np.arange(cache.offsets[f], cache.offsets[f] + cache.lengths[f]) for f in files])
            if len(files)
            else np.zeros(0, np.int64)
        )
        lengths = np.asarray([cache.lengths[g].sum() for g in groups], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.stream_lengths, self.stream_offsets = lengths, offsets
        n_chunks = lengths // seq_len
        self.stream_of = np.repeat(np.arange(len(n_chunks)), n_chunks)
        chunk_in_stream = np.concatenate([np.arange(n) for n in n_chunks]) if len(n_chunks) else np.zeros(0, int)
        self.starts = offsets[self.stream_of] + chunk_in_stream * seq_len

    def __len__(self) -> int:
        return len(self.starts)

    def frames(self) -> int:
        return len(self) * self.seq_len

    def sequence_starts(self, rng: np.random.Generator | None) -> np.ndarray:
        """Start of every sequence in the streams' frames (`rows`): fixed chunks, or random windows inside the same
        streams."""
        if not self.random_crop or rng is None:
            return self.starts
        streams = self.stream_of
        span = self.stream_lengths[streams] - self.seq_len
        return self.stream_offsets[streams] + (rng.random(len(streams)) * (span + 1)).astype(np.int64)

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        skip: int = 0,
    ) -> Iterator[torch.Tensor]:
        """Yield (B, T, F) float32 tensors; the order (and the warp factors, drawn from U[1 - warp, 1 + warp] per
        sequence, and the noise floor) depends only on (seed, epoch), so it can resume.

        `skip` batches are skipped without being read (resuming mid-epoch).
        """
        rng = np.random.default_rng([seed, epoch])
        starts = self.sequence_starts(rng)
        order = rng.permutation(len(starts)) if shuffle else np.arange(len(starts))
        factors = torch.from_numpy(rng.uniform(1 - self.warp, 1 + self.warp, len(starts))) if self.warp else None
        order = order[: len(order) - len(order) % world_size][rank::world_size]  # equal shares for DDP
        n_batches = len(order) // batch_size if drop_last else -(-len(order) // batch_size)
        floor_seed = int(rng.integers(2**62))
        window = np.arange(self.seq_len)
        for b in range(skip, n_batches):
            chosen = order[b * batch_size : (b + 1) * batch_size]
            rows = self.rows[starts[chosen][:, None] + window]
            batch = torch.from_numpy(np.ascontiguousarray(self.cache.frames[rows]))
            if factors is not None:
                batch = warp_frequencies(batch, factors[chosen])
            if self.floor_db is not None:
                batch = add_floor(batch, self.floor_db, torch.Generator().manual_seed(floor_seed + b))
            yield batch

    def num_batches(self, batch_size: int, world_size: int = 1, drop_last: bool = False) -> int:
        n = len(self) // world_size
        return n // batch_size if drop_last else -(-n // batch_size)
