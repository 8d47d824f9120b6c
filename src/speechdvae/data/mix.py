"""Noisy speech mixtures at a loudness-based SNR, from corpus manifests or from the official WSJ0-QUT list.

Recipe of the SE paper (Bie et al., TASLP 2022, Sec. V-A): for each clean utterance (not trimmed), pick
a noise recording, a random noise segment of the utterance's length and an SNR, and add the noise scaled
so that the ITU-R BS.1770-4 integrated loudness of the speech minus that of the noise equals the SNR.

- Levels. Loudness is measured with pyloudnorm on a peak-normalised copy and shifted back by the peak's
  level, so the -70 LUFS absolute gate acts relative to the signal itself: a quietly recorded file is
  measured like a loud one, and the mixture scales exactly with its inputs. When the utterance is
  shorter than one 400-ms gating block, or a loudness is -inf, both signals are measured instead by
  their plain mean-square power (10 log10 mean x^2). Each mixture records which (`snr_method`
  "bs1770" or "power"). The paper notes that the BS.1770 SNR is about 2.5 dB below the power SNR on
  average; no offset is added in the fallback.
- Full scale. Clean and noise are written on the 16-bit grid so that, in the written files,
  noisy = clean + noise holds exactly. If the mixture (or the clean signal) would exceed full scale,
  both are divided by the same factor first (`scale` in the manifest), so the pair stays consistent
  and the SNR is unchanged.
- Balance and determinism. (noise type, SNR) pairs are dealt round-robin over all utterances and
  shuffled, then the recordings of each type are dealt the same way, then a start is drawn: all from
  `numpy.random.default_rng(seed)` over the manifests sorted by id, before any audio is read. A noise
  recording shorter than its utterance is looped (`noise_looped`).
- Resuming. An existing mixture is kept if its manifest entry has the same noise, start, SNR, seed,
  source checksums and output paths and its files still match their checksums. Progress is saved in
  `.manifest.partial.jsonl` while running; `manifest.jsonl` appears only when the set is complete.
  An utterance whose audio cannot be used is skipped with a warning.

Official lists (`wsj_test.json`, `vb_test.json`): `read_official_list` turns them into mixture
records for evaluation; `mix_from_official` regenerates the WSJ0-QUT mixtures from WSJ0 and QUT-NOISE.
The list's `noise_start` is read as a sample index at 16 kHz in the QUT file resampled to 16 kHz
(the list does not say; the largest start then falls 48 minutes into a file).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from itertools import product
from pathlib import Path
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from ..audio import SAMPLE_RATE, AudioError, read_audio, write_audio
from ..errors import SpeechDVAEError, needs_extra
from .manifest import REQUIRED_FIELDS, ManifestError, read_manifest, sha256_file, write_manifest

log = logging.getLogger(__name__)

DEFAULT_SNRS = (-5.0, 0.0, 5.0)
MANIFEST_NAME = "manifest.jsonl"
PARTIAL_NAME = ".manifest.partial.jsonl"
GATING_BLOCK_SECONDS = 0.4
PCM16_STEPS = 32768
# Largest mixture peak, in 16-bit steps, that stays in range after two roundings of half a step each.
PCM16_MAX_PEAK = 32766
CHECKPOINT_EVERY = 25
# A mixture on disk is reused only if all of these are unchanged.
IDENTITY_FIELDS = ("path", "clean_path", "noise_id", "noise_start", "snr", "seed", "speech_sha256", "noise_sha256")

T = TypeVar("T")


class MixError(SpeechDVAEError, ValueError):
    """Input that cannot make a mixture set (no noise, duplicate ids, malformed official list)."""


# ----------------------------------------------------------------------------------------- levels


def _peak(x: np.ndarray, what: str) -> float:
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    if peak == 0.0:
        raise AudioError(f"the {what} is silent (all samples are zero)")
    return peak


def loudness_db(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> float:
    """BS.1770-4 integrated loudness (LUFS) of x, measured on a peak-normalised copy, then shifted back.

    x must last at least one 400-ms gating block; returns -inf if every block falls below the gates.
    """
    x = np.asarray(x, dtype=np.float64)
    peak = _peak(x, "signal")
    with needs_extra("data", "Mixing at a BS.1770 loudness SNR"):
        import pyloudnorm
    return float(pyloudnorm.Meter(sample_rate).integrated_loudness(x / peak)) + 20 * math.log10(peak)


def power_db(x: np.ndarray) -> float:
    """Mean-square power in dB (full scale = 0 dB for a unit-amplitude square wave)."""
    x = np.asarray(x, dtype=np.float64)
    _peak(x, "signal")
    return 10 * math.log10(float(np.mean(x**2)))


def signal_levels(speech: np.ndarray, noise: np.ndarray, sample_rate: int = SAMPLE_RATE) -> tuple[float, float, str]:
    """Levels (dB) of speech and noise measured the same way, and the method: "bs1770" or "power"."""
    _peak(speech, "speech")
    _peak(noise, "noise segment")
    if len(speech) >= GATING_BLOCK_SECONDS * sample_rate:
        levels = loudness_db(speech, sample_rate), loudness_db(noise, sample_rate)
        if all(math.isfinite(level) for level in levels):
            return levels[0], levels[1], "bs1770"
    return power_db(speech), power_db(noise), "power"


def mix_at_snr(
    speech: np.ndarray, noise: np.ndarray, snr_db: float, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Scale `noise` so that level(speech) - level(noise) = snr_db; return (mixture, scaled noise, info).

    info holds `snr_method`, `noise_gain` and the measured `speech_level` / `noise_level` (dB).
    Raises AudioError if either signal is all zeros, ValueError if the lengths differ.
    """
    speech = np.asarray(speech, dtype=np.float64)
    noise = np.asarray(noise, dtype=np.float64)
    if speech.shape != noise.shape or speech.ndim != 1:
        raise ValueError(f"speech and noise must be 1-D of equal length, got {speech.shape} and {noise.shape}")
    speech_level, noise_level, method = signal_levels(speech, noise, sample_rate)
    gain = 10 ** ((speech_level - snr_db - noise_level) / 20)
    scaled = gain * noise
    info = {"snr_method": method, "noise_gain": gain, "speech_level": speech_level, "noise_level": noise_level}
    return speech + scaled, scaled, info


def power_snr_db(clean: np.ndarray, noise: np.ndarray) -> float:
    """Plain power SNR in dB: 10 log10(sum clean^2 / sum noise^2); +inf for an all-zero noise."""
    noise_energy = float(np.sum(np.square(noise, dtype=np.float64)))
    if noise_energy == 0.0:
        return math.inf
    return 10 * math.log10(float(np.sum(np.square(clean, dtype=np.float64))) / noise_energy)


def fit_pcm16(clean: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Scale clean and noise by one factor (<= 1) so clean + noise fits 16 bits, and round both to the grid.

    Returns (clean, noise, factor); clean + noise is then exactly representable in a 16-bit file.
    """
    peak = max(float(np.max(np.abs(clean + noise))), float(np.max(np.abs(clean))))
    factor = min(1.0, PCM16_MAX_PEAK / (PCM16_STEPS * peak))
    return (
        np.rint(clean * factor * PCM16_STEPS) / PCM16_STEPS,
        np.rint(noise * factor * PCM16_STEPS) / PCM16_STEPS,
        factor,
    )


def noise_segment(noise: np.ndarray, start: int, length: int) -> tuple[np.ndarray, bool]:
    """`length` samples of `noise` from `start`, wrapping around its end; also whether it wrapped."""
    return noise[(start + np.arange(length)) % len(noise)], start + length > len(noise)


# ------------------------------------------------------------------------------------------- plan


def balanced_sequence(items: Sequence[T], n: int, rng: np.random.Generator) -> list[T]:
    """n draws in random order in which every item occurs floor(n/k) or ceil(n/k) times."""
    order = rng.permutation(len(items))
    dealt = [items[order[i % len(items)]] for i in range(n)]
    return [dealt[i] for i in rng.permutation(n)]


def _sorted_unique(records: Iterable[dict], what: str) -> list[dict]:
    records = sorted(records, key=lambda r: r["id"])
    duplicates = sorted(i for i, c in Counter(r["id"] for r in records).items() if c > 1)
    if duplicates:
        raise MixError(f"duplicate {what} ids: {', '.join(duplicates[:5])}")
    if not records:
        raise MixError(f"no {what} records")
    return records


def _samples(record: dict) -> int:
    return max(1, round(float(record["duration"]) * SAMPLE_RATE))


def _draw_start(rng: np.random.Generator, noise_length: int, length: int) -> int:
    """A segment start inside the noise, or any offset of a noise shorter than the segment (looped)."""
    high = noise_length - length + 1 if noise_length >= length else noise_length
    return int(rng.integers(0, high))


def plan_mixtures(
    speech_records: Iterable[dict], noise_records: Iterable[dict], snrs: Sequence[float] = DEFAULT_SNRS, seed: int = 0
) -> list[dict]:
    """Assign a noise recording, start (16 kHz samples) and SNR to every utterance, balanced and seeded.

    Uses only the records' ids, durations and noise types, so the plan is known before any audio is read.
    """
    speech = _sorted_unique(speech_records, "speech")
    by_type: dict[str, list[dict]] = defaultdict(list)
    for record in _sorted_unique(noise_records, "noise"):
        by_type[record["noise_type"]].append(record)
    if not snrs:
        raise MixError("no SNRs given")
    rng = np.random.default_rng(seed)
    conditions = list(product(sorted(by_type), [float(s) for s in snrs]))
    assigned = balanced_sequence(conditions, len(speech), rng)
    per_type = Counter(noise_type for noise_type, _ in assigned)
    dealt = {t: iter(balanced_sequence(by_type[t], per_type[t], rng)) for t in sorted(by_type)}
    plan = []
    for utterance, (noise_type, snr) in zip(speech, assigned):
        noise = next(dealt[noise_type])
        plan.append(
            {
                "id": utterance["id"],
                "speech_path": utterance["path"],
                "speech_sha256": utterance.get("sha256"),
                "noise_id": noise["id"],
                "noise_path": noise["path"],
                "noise_sha256": noise.get("sha256"),
                "noise_type": noise_type,
                "noise_start": _draw_start(rng, _samples(noise), _samples(utterance)),
                "snr": snr,
                "seed": seed,
                "speaker": utterance.get("speaker"),
                "language": utterance.get("language"),
                "split": utterance.get("split"),
            }
        )
    return plan


# -------------------------------------------------------------------------------------- execution


def file_stems(ids: Sequence[str]) -> list[str]:
    """File-system-safe names for ids; raises MixError if two ids map to the same name."""
    stems = [re.sub(r"[^\w.-]+", "_", i) for i in ids]
    clashes = sorted(s for s, c in Counter(stems).items() if c > 1)
    if clashes:
        raise MixError(f"ids that differ only in special characters give the same file name: {clashes[:5]}")
    return stems


def _previous_records(manifest_path: Path) -> dict[str, dict]:
    """Entries of an earlier complete or interrupted run in the same folder, by id."""
    previous: dict[str, dict] = {}
    for path in (manifest_path, manifest_path.with_name(PARTIAL_NAME)):
        if path.is_file():
            try:
                previous.update((r["id"], r) for r in read_manifest(path))
            except ManifestError as err:
                log.warning("ignoring unreadable earlier manifest: %s", err)
    return previous


def _is_complete(job: dict, old: dict | None) -> bool:
    """True if `old` describes this very mixture and both of its files are intact."""
    if old is None or any(old.get(key) != job.get(key) for key in IDENTITY_FIELDS):
        return False
    files = ((old["path"], old.get("sha256")), (old["clean_path"], old.get("clean_sha256")))
    return all(Path(path).is_file() and sha256_file(path) == digest for path, digest in files)


class _NoiseCache:
    """Keeps the last noise file read (or its read error), since jobs are processed grouped by noise."""

    def __init__(self) -> None:
        self.path: str | None = None
        self.value: np.ndarray | AudioError | None = None

    def get(self, path: str) -> np.ndarray:
        if path != self.path:
            self.path, self.value = path, None
            try:
                self.value = read_audio(path)[0]
            except AudioError as err:
                self.value = err
        if isinstance(self.value, AudioError):
            raise self.value
        return self.value


def _mix_job(job: dict, noise: np.ndarray, allow_loop: bool) -> dict:
    """Make and write one noisy/clean pair; return its complete manifest record."""
    speech = read_audio(job["speech_path"])[0]
    segment, looped = noise_segment(noise, job["noise_start"], len(speech))
    if looped and not allow_loop:
        raise AudioError(
            f"{job['noise_path']}: the segment at sample {job['noise_start']} (16 kHz) of "
            f"length {len(speech)} runs past the end of the noise ({len(noise)} samples)"
        )
    try:
        _, scaled, info = mix_at_snr(speech, segment, job["snr"])
    except AudioError as err:
        raise AudioError(f"{job['speech_path']} with {job['noise_path']}: {err}") from err
    clean, added, factor = fit_pcm16(speech, scaled)
    write_audio(job["clean_path"], clean)
    write_audio(job["path"], clean + added)
    return {
        **job,
        "noise_looped": looped,
        "snr_method": info["snr_method"],
        "noise_gain": info["noise_gain"],
        "scale": factor,
        "snr_power": power_snr_db(clean, added),
        "duration": len(speech) / SAMPLE_RATE,
        "sha256": sha256_file(job["path"]),
        "clean_sha256": sha256_file(job["clean_path"]),
    }


def output_jobs(plan: Sequence[dict], out_dir: Path) -> list[dict]:
    """Plan entries with their output paths `out_dir/noisy/<id>.flac` and `out_dir/clean/<id>.flac`."""
    return [
        {
            **entry,
            "path": str(out_dir / "noisy" / f"{stem}.flac"),
            "clean_path": str(out_dir / "clean" / f"{stem}.flac"),
        }
        for entry, stem in zip(plan, file_stems([entry["id"] for entry in plan]))
    ]


def run_jobs(jobs: Sequence[dict], manifest_path: Path, allow_loop: bool = True) -> Path:
    """Make every planned mixture not already on disk and write the set's manifest (in plan order).

    Each job holds the plan fields plus output `path` and `clean_path`. Unusable audio is skipped
    with a warning; progress is saved every few mixtures so an interrupted run resumes.
    """
    previous = _previous_records(manifest_path)
    done = {job["id"]: previous[job["id"]] for job in jobs if _is_complete(job, previous.get(job["id"]))}
    todo = sorted((job for job in jobs if job["id"] not in done), key=lambda j: (j["noise_path"], j["id"]))
    partial = manifest_path.with_name(PARTIAL_NAME)
    cache = _NoiseCache()
    skipped = 0
    for count, job in enumerate(tqdm(todo, desc=f"mixing {manifest_path.parent.name}", unit="mix"), 1):
        try:
            done[job["id"]] = _mix_job(job, cache.get(job["noise_path"]), allow_loop)
        except AudioError as err:
            skipped += 1
            log.warning("skipped %s: %s", job["id"], err)
        if count % CHECKPOINT_EVERY == 0:
            write_manifest(partial, done.values())
    write_manifest(manifest_path, (done[job["id"]] for job in jobs if job["id"] in done))
    partial.unlink(missing_ok=True)
    if skipped:
        log.warning("%d of %d mixtures skipped; %s lists the others", skipped, len(jobs), manifest_path)
    return manifest_path


def build_mixtures(
    speech_manifest: str | os.PathLike,
    noise_manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    snrs: Sequence[float] = DEFAULT_SNRS,
    seed: int = 0,
    limit: int | None = None,
) -> Path:
    """Mix every utterance of a speech manifest with noise of a noise manifest; return the mixture manifest.

    Writes `out_dir/noisy/<id>.flac`, `out_dir/clean/<id>.flac` and `out_dir/manifest.jsonl`.
    `limit` keeps the first utterances by id (the plan is then balanced over those).
    """
    speech = sorted(read_manifest(speech_manifest, REQUIRED_FIELDS), key=lambda r: r["id"])
    noise = read_manifest(noise_manifest, REQUIRED_FIELDS + ("noise_type",))
    plan = plan_mixtures(speech[:limit] if limit is not None else speech, noise, snrs, seed)
    out_dir = Path(out_dir).resolve()
    return run_jobs(output_jobs(plan, out_dir), out_dir / MANIFEST_NAME, allow_loop=True)


# ---------------------------------------------------------------------------------- official lists


def _fill(template: str, name: str, root: str | os.PathLike) -> str:
    return template.replace("{" + name + "}", str(root))


def _official_record(key: str, entry: dict, noisy_root: str | os.PathLike, clean_root: str | os.PathLike) -> dict:
    record = {
        "id": key,
        "path": _fill(entry["noisy_wav"], "noisy_root", noisy_root),
        "clean_path": _fill(entry["clean_wav"], "clean_root", clean_root),
        "duration": float(entry["length"]),
        "speaker": str(entry["p_id"]),
        "language": "en",
        "split": "test",
        "noise_type": str(entry["noise_type"]),
        "snr": float(entry["snr"]),
    }
    if "noise_start" in entry:
        record["noise_start"] = int(entry["noise_start"])
    return record


def read_official_list(
    json_path: str | os.PathLike, noisy_root: str | os.PathLike, clean_root: str | os.PathLike
) -> list[dict]:
    """Records in mixture-manifest form from an official test list (wsj_test.json, vb_test.json).

    `{noisy_root}` / `{clean_root}` are filled in, `snr` becomes a float, `speaker` is the list's p_id.
    """
    try:
        entries = json.loads(Path(json_path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MixError(f"{json_path}: cannot read the official list ({err})") from err
    if not isinstance(entries, dict):
        raise MixError(f"{json_path}: expected a JSON object mapping utterance names to entries")
    records = []
    for key, entry in entries.items():
        try:
            records.append(_official_record(key, entry, noisy_root, clean_root))
        except (KeyError, TypeError, ValueError) as err:
            raise MixError(f"{json_path}: entry {key!r} is malformed ({err!r})") from err
    return records


def mix_from_official(
    json_path: str | os.PathLike,
    clean_root: str | os.PathLike,
    noise_root: str | os.PathLike,
    out_root: str | os.PathLike,
) -> Path:
    """Regenerate the WSJ0-QUT test mixtures of an official list from WSJ0 and QUT-NOISE.

    Noise is `<noise_root>/<noise_type>.wav` (QUT-NOISE names, any rate and channel count); outputs follow
    the list's templates with `{noisy_root}` = out_root/noisy and `{clean_root}` = out_root/clean, plus
    out_root/manifest.jsonl. Entries whose segment runs past the end of the noise file are skipped.
    """
    out_root = Path(out_root).resolve()
    targets = read_official_list(json_path, out_root / "noisy", out_root / "clean")
    sources = read_official_list(json_path, out_root / "noisy", Path(clean_root))
    missing = [t["id"] for t in targets if "noise_start" not in t]
    if missing:
        raise MixError(
            f"{json_path}: entries without noise_start (e.g. {missing[0]}); only lists with "
            "noise segments, such as wsj_test.json, can be regenerated"
        )
    jobs = [
        {
            **target,
            "speech_path": source["clean_path"],
            "speech_sha256": None,
            "noise_id": target["noise_type"],
            "noise_sha256": None,
            "seed": None,
            "noise_path": str(Path(noise_root) / f"{target['noise_type']}.wav"),
        }
        for target, source in zip(targets, sources)
    ]
    return run_jobs(jobs, out_root / MANIFEST_NAME, allow_loop=False)
