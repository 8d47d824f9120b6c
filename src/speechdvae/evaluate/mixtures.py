"""Noisy mixture sets of the enhancement evaluations (records written by `speechdvae data mix`): reading,
balanced subsets over noise type × SNR, checksums and peak-normalised signal pairs."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .. import audio, stft
from ..data.manifest import read_manifest, sha256_file
from .common import EvaluationError, evenly_spaced

MIXTURE_FIELDS = ("id", "path", "clean_path", "noise_type", "snr")

Mixtures = str | os.PathLike | Sequence[dict]


def read_mixtures(source: Mixtures) -> list[dict]:
    """Mixture records from a manifest path or given as a list; each needs id, path, clean_path, noise_type, snr."""
    if isinstance(source, (str, os.PathLike)):
        return read_manifest(source, MIXTURE_FIELDS)
    records = list(source)
    for record in records:
        missing = [name for name in MIXTURE_FIELDS if name not in record]
        if missing:
            raise EvaluationError(f"mixture {record.get('id', '?')!r} lacks {', '.join(missing)}")
    return records


def condition(record: Mapping[str, object]) -> tuple[str, float]:
    """(noise type, SNR) of a mixture record."""
    return str(record["noise_type"]), float(record["snr"])  # type: ignore[arg-type]


def share_out(sizes: Sequence[int], n: int) -> list[int]:
    """Shares of `n` items over groups of the given sizes: equal, capped by each size (the excess going to the
    others), with the remainder one each to the first groups that still have room."""
    quotas = [0] * len(sizes)
    n = min(n, sum(sizes))
    while n:
        room = [g for g, size in enumerate(sizes) if quotas[g] < size]
        share = n // len(room)
        for g in room if share else room[:n]:
            add = min(max(share, 1), sizes[g] - quotas[g])
            quotas[g] += add
            n -= add
    return quotas


def balanced_subset(records: Sequence[dict], limit: int | None = None) -> list[dict]:
    """The records sorted by id, or `limit` of them balanced over the (noise type, SNR) conditions.

    Conditions get equal shares (`share_out`); the remainder goes to conditions taken along a diagonal of the
    type × SNR grid, so both margins stay balanced. Within a condition the mixtures are evenly spaced by id.
    """
    if limit is not None and limit < 1:
        raise EvaluationError(f"--limit must be positive, got {limit}")
    ordered = sorted(records, key=lambda r: r["id"])
    if limit is None or limit >= len(ordered):
        return ordered
    groups: dict[tuple[str, float], list[dict]] = {}
    for record in ordered:
        groups.setdefault(condition(record), []).append(record)
    types = sorted({t for t, _ in groups})
    snrs = sorted({s for _, s in groups})
    diagonal = sorted(
        groups, key=lambda c: ((types.index(c[0]) + snrs.index(c[1])) % len(snrs), types.index(c[0]), snrs.index(c[1]))
    )
    quotas = share_out([len(groups[c]) for c in diagonal], limit)
    chosen = [r for c, quota in zip(diagonal, quotas) if quota for r in evenly_spaced(groups[c], quota)]
    return sorted(chosen, key=lambda r: r["id"])


@dataclass
class Mixture:
    """A mixture record, the checksum of its noisy and clean files, or why they cannot be read."""

    record: dict
    digest: str = ""
    error: str = ""

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def duration(self) -> float:
        return float(self.record.get("duration") or 0.0)


def identify(record: dict) -> Mixture:
    """The mixture with the sha256 of its two files (which key its cached results)."""
    try:
        digests = [sha256_file(record[name]) for name in ("path", "clean_path")]
    except OSError as err:
        return Mixture(record, error=f"{err.filename}: cannot read ({err.strerror})")
    return Mixture(record, digest=hashlib.sha256("/".join(digests).encode()).hexdigest())


def read_pair(record: Mapping[str, object]) -> tuple[np.ndarray, np.ndarray]:
    """The noisy mixture divided by its peak and the clean reference scaled by the same factor (16 kHz)."""
    noisy = audio.read_audio(record["path"])[0]
    clean = audio.read_audio(record["clean_path"])[0]
    peak = float(np.abs(noisy).max())
    if peak == 0.0:
        raise audio.AudioError(f"{record['path']}: the mixture is silent (all samples are zero)")
    if len(noisy) < stft.min_samples():
        raise audio.AudioError(f"{record['path']}: too short ({len(noisy)} samples, need {stft.min_samples()})")
    return noisy / peak, clean / peak
