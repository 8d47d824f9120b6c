"""Generation evaluation of speech priors: FD-DNSMOS (HiT-DVAE paper Sec. 3.6, Table 3).

Each prior generates 1.6-s power spectrograms by ancestral sampling (`DVAE.sample_prior`, 101 frames; a
hierarchical model draws its sequence latent w from its prior too). Their magnitude sqrt(v) is given a phase by
fast Griffin-Lim (`stft.griffin_lim`, seeded random start) and inverted to 25,600 samples at 16 kHz. Every clip is
embedded by the DNSMOS network (`dnsmos_features`); the metric is the Fréchet distance between Gaussian fits
(mean, covariance) of the embeddings of the generated clips and of a reference set: random 1.6-s windows of the
training speech, trimmed and peak-normalised as the training data. The paper's FDSD used DeepSpeech2 features,
which cannot be had here, so the values are on another scale than Table 3; the ranking is what compares.

Two rows calibrate the scale: windows of test speech with their exact phase, and the same windows with the phase
re-estimated by Griffin-Lim from their magnitude. Every row is evaluated on `draws` independent sets of
`samples` clips against one fixed reference set; the table gives the mean FD ± the 95 % confidence half-width
t(0.975, K-1)·s/√K over the K draws. FD estimates are biased upwards by a term that shrinks as 1/N, so only
values with the same numbers of clips compare.

Every draw's Gaussian fit is appended to `generation_cache.jsonl` as soon as it is computed, keyed by the model's
weights (or the manifest's files), the draw and the settings that shape it, so an interrupted run resumes and a
prior added later costs only its own draws. Outputs in the output folder: `generation.md` (the table, timing and
method), `generation.csv` (one row per model), `generation_draws.csv` (one FD per draw) and `generation.png`
(a generated spectrogram per prior next to a training crop).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import audio, stft
from ..checkpoints import default_device
from ..commands import generate_command
from ..data.manifest import read_manifest
from ..errors import needs_extra
from ..models import DVAE
from .common import EvaluationError, Labelled, ModelSource, ResultCache, load_source, model_fingerprint
from .dnsmos_features import DnsmosFeatures
from .report import escape_cell, save_figure, write_csv, write_markdown
from .resynthesis import prepare

with needs_extra("eval", "The generation report (matplotlib, scipy)"):
    from matplotlib.figure import Figure
    from scipy import stats

CLIP_SECONDS = 1.6
CLIP_SAMPLES = round(CLIP_SECONDS * audio.SAMPLE_RATE)  # 25,600
CLIP_FRAMES = 1 + CLIP_SAMPLES // stft.HOP_LENGTH  # 101 frames of the centred STFT
CHUNK_CLIPS = 64  # clips sampled and phase-retrieved at once
CACHE_VERSION = 1
TEST_EXACT, TEST_GRIFFIN_LIM = "test speech (exact phase)", "test speech (Griffin-Lim)"
REFERENCE_STREAM, MODEL_STREAM, TEST_STREAM, EXAMPLE_STREAM = 1, 2, 3, 4  # independent random streams
MARKDOWN_NAME, SUMMARY_NAME, DRAWS_NAME = "generation.md", "generation.csv", "generation_draws.csv"
FIGURE_NAME, CACHE_NAME = "generation.png", "generation_cache.jsonl"
TIMING_PARTS = ("sampling", "griffin_lim", "features")


class GenerationError(EvaluationError):
    """Options or inputs that cannot make an evaluation (bad counts, reserved label, no usable speech)."""


@dataclass(frozen=True)
class GenerationSettings:
    """How many clips are drawn and how their phase is made (the defaults run in minutes per prior on a CPU)."""

    samples: int = 512  # clips per draw (the paper: 10,240)
    draws: int = 5  # independent draws per row, for the confidence interval
    reference_samples: int = 2048  # training-speech crops of the fixed reference set
    seed: int = 0
    gl_iterations: int = 32
    gl_momentum: float = 0.99

    def check(self) -> None:
        for name in ("samples", "draws", "reference_samples", "gl_iterations"):
            if getattr(self, name) < 1:
                raise GenerationError(f"{name.replace('_', ' ')} must be positive, got {getattr(self, name)}")
        if not 0.0 <= self.gl_momentum < 1.0:
            raise GenerationError(f"the Griffin-Lim momentum must lie in [0, 1), got {self.gl_momentum}")

    def clip_settings(self) -> dict[str, object]:
        """The settings that shape a draw of generated or test clips (the cache key of its results)."""
        return {
            "samples": self.samples,
            "seed": self.seed,
            "gl_iterations": self.gl_iterations,
            "gl_momentum": self.gl_momentum,
            "clip_samples": CLIP_SAMPLES,
        }


# ---------------------------------------------------------------------------------------------
# Clips: generated, and cut from speech files
# ---------------------------------------------------------------------------------------------


def derived_seed(*parts: int) -> int:
    """A 32-bit seed determined by `parts` (seed, stream, draw, ...), so every random stream is independent."""
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


@contextlib.contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """The global torch generator (which `sample_prior` draws from) seeded for a block, then restored."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


def griffin_lim_waves(power: torch.Tensor, settings: GenerationSettings, seed: int) -> np.ndarray:
    """(B, 25,600) float32 waveforms whose STFT magnitude approaches sqrt(power) (B, 101, F), by fast Griffin-Lim."""
    generator = torch.Generator().manual_seed(seed)
    waves = stft.griffin_lim(
        power.sqrt(), settings.gl_iterations, settings.gl_momentum, length=CLIP_SAMPLES, generator=generator
    )
    return waves.to(torch.float32).cpu().numpy()


def generate_clips(
    model: DVAE, n: int, settings: GenerationSettings, seed: int
) -> Iterator[tuple[np.ndarray, dict[str, float]]]:
    """`n` generated 1.6-s waveforms, in chunks, each with the seconds spent sampling and in Griffin-Lim."""
    for start in range(0, n, CHUNK_CLIPS):
        began = time.perf_counter()
        with seeded(derived_seed(seed, start), model.device):
            power = model.sample_prior(min(CHUNK_CLIPS, n - start), CLIP_FRAMES)
        sampled = time.perf_counter()
        waves = griffin_lim_waves(power, settings, derived_seed(seed, start, 1))
        yield waves, {"sampling": sampled - began, "griffin_lim": time.perf_counter() - sampled}


def manifest_digest(records: Sequence[dict]) -> str:
    """sha256 of a manifest's ids and file checksums (paths when a record has none)."""
    files = sorted((str(r["id"]), str(r.get("sha256") or r["path"])) for r in records)
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


class SpeechCrops:
    """Random 1.6-s windows of the files of a speech manifest, trimmed and peak-normalised as the training data.

    Files shorter than 1.6 s (by their manifest duration, or after trimming), silent or unreadable are skipped
    and counted, never fatal.
    """

    def __init__(self, manifest: str | os.PathLike) -> None:
        self.name = os.fspath(manifest)
        self.records = sorted(read_manifest(manifest), key=lambda r: str(r["id"]))
        if not self.records:
            raise GenerationError(f"{self.name}: the manifest lists no files")
        self.digest = manifest_digest(self.records)
        self.skipped: dict[str, str] = {}  # id -> why it cannot give a crop

    def _read(self, record: dict) -> np.ndarray | None:
        """The prepared waveform, or None (the reason kept in `skipped`) if it cannot give a 1.6-s window."""
        if float(record.get("duration") or math.inf) < CLIP_SECONDS:
            self.skipped[record["id"]] = "shorter than 1.6 s"
            return None
        try:
            wave = prepare(audio.read_audio(record["path"])[0])
        except audio.AudioError as err:
            self.skipped[record["id"]] = str(err)
            return None
        if len(wave) < CLIP_SAMPLES:
            self.skipped[record["id"]] = "shorter than 1.6 s after trimming"
            return None
        return wave

    def crops(self, n: int, seed: int) -> Iterator[np.ndarray]:
        """`n` windows in (up to 64, 25,600) float32 chunks: one per usable file, the files in a seeded random
        order, going round them again while more windows are needed."""
        rng = np.random.default_rng(seed)
        order = [self.records[i] for i in rng.permutation(len(self.records))]
        chunk: list[np.ndarray] = []
        produced = 0
        while order:
            usable = []
            for record in order:
                wave = self._read(record)
                if wave is None:
                    continue
                usable.append(record)
                start = int(rng.integers(0, len(wave) - CLIP_SAMPLES + 1))
                chunk.append(wave[start : start + CLIP_SAMPLES].astype(np.float32))
                produced += 1
                if len(chunk) == CHUNK_CLIPS or produced == n:
                    yield np.stack(chunk)
                    chunk = []
                if produced == n:
                    return
            order = usable
        raise GenerationError(f"{self.name}: no file lasts {CLIP_SECONDS} s after trimming (or is readable)")


# ---------------------------------------------------------------------------------------------
# Gaussian fits and the Fréchet distance
# ---------------------------------------------------------------------------------------------


@dataclass
class GaussianFit:
    """Mean and covariance of the finite feature vectors of a set of clips; `dropped` counts non-finite ones."""

    mean: np.ndarray
    cov: np.ndarray
    n: int
    dropped: int = 0

    @classmethod
    def of(cls, features: np.ndarray) -> GaussianFit:
        features = np.asarray(features, dtype=np.float64)
        finite = features[np.isfinite(features).all(axis=1)]
        if len(finite) < 2:
            nan = np.full(features.shape[1], math.nan)
            return cls(nan, np.outer(nan, nan), len(finite), len(features) - len(finite))
        return cls(finite.mean(axis=0), np.cov(finite, rowvar=False), len(finite), len(features) - len(finite))

    def to_json(self) -> dict[str, object]:
        return {"mean": self.mean.tolist(), "cov": self.cov.tolist(), "n": self.n, "dropped": self.dropped}

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> GaussianFit:
        return cls(
            np.asarray(data["mean"], dtype=np.float64),
            np.asarray(data["cov"], dtype=np.float64),
            int(data["n"]),
            int(data["dropped"]),
        )  # type: ignore[arg-type]


def psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The symmetric square root of a covariance matrix; round-off negative eigenvalues count as zero."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: GaussianFit, b: GaussianFit) -> float:
    """||μa − μb||² + tr Σa + tr Σb − 2 tr (Σa^½ Σb Σa^½)^½ between two Gaussian fits.

    The cross term has the eigenvalues of Σa Σb but is symmetric, so eigen-decompositions give it without the
    complex round-off of a general matrix square root, also for singular covariances (fewer clips than
    dimensions); the result is never negative. NaN if either fit is undefined.
    """
    if not (np.isfinite(a.cov).all() and np.isfinite(b.cov).all()):
        return math.nan
    root = psd_sqrt(a.cov)
    cross = root @ b.cov @ root
    trace_root = float(np.sqrt(np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0.0, None)).sum())
    distance = float(np.sum((a.mean - b.mean) ** 2) + np.trace(a.cov) + np.trace(b.cov) - 2.0 * trace_root)
    return max(distance, 0.0)


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """Mean of the finite values and the half-width t(0.975, K-1)·s/√K of its 95 % confidence interval (NaN
    half-width with fewer than two values)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    return float(x.mean()), float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


def result_key(kind: str, source: str, draw: int | None, settings: Mapping[str, object], features: str) -> str:
    """The cache key of one fit: what was measured (reference / model / test), its weights or files, the draw,
    the settings that shape it and the feature extractor."""
    identity = {
        "version": CACHE_VERSION,
        "kind": kind,
        "source": source,
        "draw": draw,
        "settings": settings,
        "features": features,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


class _Evaluation:
    """Finds each fit in the cache or computes it (caching it at once); counts the fits computed per row."""

    def __init__(self, settings: GenerationSettings, cache: ResultCache, features: DnsmosFeatures) -> None:
        self.settings, self.cache, self.features = settings, cache, features
        self.computed: dict[str, int] = {}  # row label -> fits computed in this run

    # -- keys ------------------------------------------------------------------------------
    def reference_key(self, crops: SpeechCrops) -> str:
        shape = {"samples": self.settings.reference_samples, "seed": self.settings.seed, "clip_samples": CLIP_SAMPLES}
        return result_key("reference", crops.digest, None, shape, self.features.identity)

    def model_key(self, prior: Labelled, draw: int) -> str:
        return result_key("model", prior.fingerprint, draw, self.settings.clip_settings(), self.features.identity)

    def test_keys(self, crops: SpeechCrops, draw: int) -> list[str]:
        return [
            result_key(kind, crops.digest, draw, self.settings.clip_settings(), self.features.identity)
            for kind in ("test-exact", "test-griffin-lim")
        ]

    def pending_clips(self, priors: Sequence[Labelled], reference: SpeechCrops, test: SpeechCrops | None) -> int:
        """How many clips are still to be made and embedded (the progress bar's total)."""

        def missing(keys: Sequence[str]) -> bool:
            return any(self.cache.get(key) is None for key in keys)

        total = self.settings.reference_samples * missing([self.reference_key(reference)])
        for draw in range(self.settings.draws):
            groups = [[self.model_key(p, draw)] for p in priors] + ([self.test_keys(test, draw)] if test else [])
            total += self.settings.samples * sum(missing(keys) for keys in groups)
        return total

    # -- fits ------------------------------------------------------------------------------
    def run(
        self, priors: Sequence[Labelled], reference: SpeechCrops, test: SpeechCrops | None, progress: tqdm
    ) -> tuple[dict, list[dict]]:
        """The reference fit and every draw's fit (models in order, then the test rows)."""
        reference_entry = self.reference(reference, progress)
        draws = [self.model_draw(prior, draw, progress) for prior in priors for draw in range(self.settings.draws)]
        if test is not None:
            for draw in range(self.settings.draws):
                draws += self.test_draw(test, draw, default_device(), progress)
        return reference_entry, draws

    def _embed(self, waves: np.ndarray, timing: dict[str, float]) -> np.ndarray:
        began = time.perf_counter()
        out = self.features(waves)
        timing["features"] = timing.get("features", 0.0) + time.perf_counter() - began
        return out

    def _cached(self, key: str, row: str) -> dict | None:
        """A copy of the cached fit under this run's row label (the key holds weights, not labels)."""
        cached = self.cache.get(key)
        return None if cached is None else {**cached, "row": row}

    def _store(
        self,
        key: str,
        row: str,
        draw: int | None,
        features: list[np.ndarray],
        timing: dict[str, float],
        skipped: int | None = None,
    ) -> dict:
        entry = {
            "key": key,
            "row": row,
            "draw": draw,
            **GaussianFit.of(np.concatenate(features)).to_json(),
            "seconds": timing,
            "skipped_files": skipped,
        }
        self.cache.add([entry])
        self.computed[row] = self.computed.get(row, 0) + 1
        return dict(entry)

    def reference(self, crops: SpeechCrops, progress: tqdm) -> dict:
        """The fit of the fixed reference set of training-speech crops."""
        key = self.reference_key(crops)
        if (cached := self._cached(key, "reference")) is not None:
            return cached
        timing: dict[str, float] = {}
        features = []
        for chunk in crops.crops(self.settings.reference_samples, derived_seed(self.settings.seed, REFERENCE_STREAM)):
            features.append(self._embed(chunk, timing))
            progress.update(len(chunk))
        return self._store(key, "reference", None, features, timing, len(crops.skipped))

    def model_draw(self, prior: Labelled, draw: int, progress: tqdm) -> dict:
        """The fit of one draw of clips generated by a prior."""
        key = self.model_key(prior, draw)
        if (cached := self._cached(key, prior.label)) is not None:
            return cached
        timing = dict.fromkeys(TIMING_PARTS, 0.0)
        features = []
        seed = derived_seed(self.settings.seed, MODEL_STREAM, draw)
        for waves, seconds in generate_clips(prior.model, self.settings.samples, self.settings, seed):
            for part, value in seconds.items():
                timing[part] += value
            features.append(self._embed(waves, timing))
            progress.update(len(waves))
        return self._store(key, prior.label, draw, features, timing)

    def test_draw(self, crops: SpeechCrops, draw: int, device: torch.device, progress: tqdm) -> list[dict]:
        """The fits of one draw of test-speech crops, with their exact phase and with Griffin-Lim phase."""
        keys = self.test_keys(crops, draw)
        cached = [self._cached(key, row) for key, row in zip(keys, (TEST_EXACT, TEST_GRIFFIN_LIM))]
        if cached[0] is not None and cached[1] is not None:
            return cached
        exact_timing: dict[str, float] = {}
        gl_timing = {"griffin_lim": 0.0}
        exact, rebuilt = [], []
        seed = derived_seed(self.settings.seed, TEST_STREAM, draw)
        for index, chunk in enumerate(crops.crops(self.settings.samples, seed)):
            exact.append(self._embed(chunk, exact_timing))
            began = time.perf_counter()
            power = stft.power_spectrogram(torch.from_numpy(chunk).to(device))
            waves = griffin_lim_waves(power, self.settings, derived_seed(seed, index, 1))
            gl_timing["griffin_lim"] += time.perf_counter() - began
            rebuilt.append(self._embed(waves, gl_timing))
            progress.update(len(chunk))
        skipped = len(crops.skipped)
        return [
            self._store(keys[0], TEST_EXACT, draw, exact, exact_timing, skipped),
            self._store(keys[1], TEST_GRIFFIN_LIM, draw, rebuilt, gl_timing, skipped),
        ]


def evaluate_generation(
    models: Mapping[str, ModelSource],
    reference_manifest: str | os.PathLike,
    test_manifest: str | os.PathLike | None,
    out_dir: str | os.PathLike,
    settings: GenerationSettings = GenerationSettings(),
    *,
    progress: bool = True,
    command: str | None = None,
) -> list[dict[str, object]]:
    """FD-DNSMOS of every prior (label -> model or checkpoint folder) and of the test-speech rows (unless
    `test_manifest` is None) against crops of the speech in `reference_manifest`, reusing the fits cached in
    `out_dir`.

    Writes the report files into `out_dir` and returns one summary row per model or test row: `fd` (mean over
    draws), `fd_ci` (95 % half-width), the draws, the clips per draw, the non-finite clips dropped and the
    seconds per clip spent sampling, in Griffin-Lim and in DNSMOS. DNSMOS runs on as many threads as torch.
    """
    settings.check()
    reserved = sorted({TEST_EXACT, TEST_GRIFFIN_LIM, "reference"} & set(models))
    if reserved:
        raise GenerationError(f"the label {reserved[0]!r} is reserved for a reference row")
    if not models and test_manifest is None:
        raise GenerationError("nothing to evaluate: give at least one model or a test manifest")
    features = DnsmosFeatures(threads=torch.get_num_threads())
    reference = SpeechCrops(reference_manifest)
    test = SpeechCrops(test_manifest) if test_manifest is not None else None
    priors = [
        Labelled(label, model, model_fingerprint(model))
        for label, model in ((label, load_source(source)) for label, source in models.items())
    ]
    out_dir = Path(out_dir)
    evaluation = _Evaluation(settings, ResultCache(out_dir / CACHE_NAME), features)
    total = evaluation.pending_clips(priors, reference, test)
    with tqdm(total=total, unit="clip", desc="generation", disable=not progress) as bar:
        reference_entry, draws = evaluation.run(priors, reference, test, bar)
    reference_fit = GaussianFit.from_json(reference_entry)
    for entry in draws:
        entry["fd"] = frechet_distance(GaussianFit.from_json(entry), reference_fit)
    rows = [
        {"row": e["row"], "draw": e["draw"], "fd": e["fd"], "clips": e["n"], "dropped": e["dropped"]} for e in draws
    ]
    summary = _summary(draws)
    if command is None:
        command = generate_command(models, reference_manifest, test_manifest, out_dir, settings)
    intro = [
        f"Regenerate with: `{command}`",
        _describe_method(settings),
        _describe_sets(reference, reference_entry, test, draws, settings),
        _describe_cache(evaluation.computed, len(draws) + 1),
    ]
    _write_report(out_dir, rows, summary, intro, _examples(priors, reference, settings))
    return summary


def _summary(draws: Sequence[dict]) -> list[dict[str, object]]:
    """One row per model or test row, in the order of the draws: FD mean ± CI, counts and time per clip."""
    groups: dict[str, list[dict]] = {}
    for entry in draws:
        groups.setdefault(entry["row"], []).append(entry)
    summary = []
    for label, entries in groups.items():
        fd, ci = mean_ci([e["fd"] for e in entries])
        clips = sum(e["n"] + e["dropped"] for e in entries)
        row: dict[str, object] = {
            "model": label,
            "fd": fd,
            "fd_ci": ci,
            "draws": len(entries),
            "clips_per_draw": clips // len(entries),
            "dropped": sum(e["dropped"] for e in entries),
        }
        for part in TIMING_PARTS:
            seconds = [e["seconds"].get(part) for e in entries]
            row[f"{part}_seconds_per_clip"] = sum(seconds) / clips if clips and None not in seconds else math.nan
        summary.append(row)
    return summary


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _describe_method(settings: GenerationSettings) -> str:
    return (
        "**Method:** each prior samples 1.6-s power spectrograms v (101 frames, `sample_prior`: ancestral "
        "sampling, hierarchical models drawing w from its prior); sqrt(v) is given a phase by fast Griffin-Lim "
        f"({settings.gl_iterations} iterations, momentum {settings.gl_momentum}, seeded random start) and "
        "inverted to 25,600 samples at 16 kHz, without renormalisation. **FD-DNSMOS** is the Fréchet distance "
        "between Gaussian fits of clip embeddings: the 64-d output of the global max pooling over time and "
        "frequency of the DNSMOS P.835 network (`sig_bak_ovr.onnx` of the `speechmos` package), the vector "
        "its MOS head reads. Each 1.6-s clip is embedded at its own length (the network's framing rewritten "
        "to accept any length; on its native 9.01-s input it gives the published values exactly) rather than "
        "tiled to 9.01 s. The paper's FDSD used DeepSpeech2 features: values are on another scale than its "
        "Table 3. Each row gives the mean over K independent draws ± the 95 % half-width "
        "t(0.975, K−1)·s/√K; FD is biased upwards by a term that shrinks with the number of clips, so only "
        "rows with the same numbers of clips compare."
    )


def _describe_sets(
    reference: SpeechCrops,
    reference_entry: Mapping[str, object],
    test: SpeechCrops | None,
    draws: Sequence[dict],
    settings: GenerationSettings,
) -> str:
    text = (
        f"**Reference:** {reference_entry['n']} random 1.6-s windows of `{reference.name}` "
        f"({len(reference.records)} files listed; one window per file in a seeded random order, going round "
        "again if more are needed; files trimmed at 30 dB and peak-normalised as the training data; "
        f"{reference_entry['skipped_files']} files skipped on the way: shorter than 1.6 s, silent or "
        "unreadable)."
    )
    if test is not None:
        skipped = max((e["skipped_files"] for e in draws if e["row"] == TEST_EXACT), default=0)
        text += (
            f" **Test rows:** {settings.samples} windows of `{test.name}` per draw, chosen the same way "
            f"({skipped} files skipped), scored with their exact phase and with the phase re-estimated by "
            "Griffin-Lim from their magnitude (the same settings as the generated clips)."
        )
    return text


def _describe_cache(computed: Mapping[str, int], n_fits: int) -> str:
    done = sum(computed.values())
    return (
        f"**Cache:** `{CACHE_NAME}` keeps the Gaussian fit of every draw, keyed by the model's weights (or the "
        f"manifest's files), the draw, the settings and the DNSMOS network; this run computed {done} and reused "
        f"{n_fits - done} of the {n_fits} fits."
    )


def _fd_cell(row: Mapping[str, object]) -> str:
    """ "mean ± CI" of a summary row (the mean alone after a single draw)."""
    fd, ci = float(row["fd"]), float(row["fd_ci"])  # type: ignore[arg-type]
    if math.isnan(fd):
        return "NaN"
    return f"{fd:.2f}" if math.isnan(ci) else f"{fd:.2f} ± {ci:.2f}"


def results_table(summary: Sequence[Mapping[str, object]]) -> str:
    lines = ["| model | FD-DNSMOS ↓ | draws | clips per draw | non-finite clips |", "|---|---|---|---|---|"]
    lines += [
        f"| {escape_cell(row['model'])} | {_fd_cell(row)} | {row['draws']} | {row['clips_per_draw']} "
        f"| {row['dropped']} |"
        for row in summary
    ]
    return "\n".join(lines) + "\n"


def _seconds_cell(value: object) -> str:
    return "—" if math.isnan(float(value)) else f"{float(value) * 1000:.1f}"  # type: ignore[arg-type]


def _timing_table(summary: Sequence[Mapping[str, object]]) -> str:
    lines = ["| model | sampling | Griffin-Lim | DNSMOS |", "|---|---|---|---|"]
    lines += [
        f"| {escape_cell(row['model'])} | "
        + " | ".join(_seconds_cell(row[f"{part}_seconds_per_clip"]) for part in TIMING_PARTS)
        + " |"
        for row in summary
    ]
    return "\n".join(lines) + "\n"


def _examples(
    priors: Sequence[Labelled], reference: SpeechCrops, settings: GenerationSettings
) -> dict[str, np.ndarray]:
    """Power spectrograms (101, F) for the figure: a training crop, then one seeded sample per prior."""
    crop = next(reference.crops(1, derived_seed(settings.seed, REFERENCE_STREAM)))
    examples = {"training speech": stft.power_spectrogram(torch.from_numpy(crop[0])).numpy()}
    for prior in priors:
        with seeded(derived_seed(settings.seed, EXAMPLE_STREAM), prior.model.device):
            examples[prior.label] = prior.model.sample_prior(1, CLIP_FRAMES)[0].float().cpu().numpy()
    return examples


def spectrogram_figure(examples: Mapping[str, np.ndarray], columns: int = 4) -> Figure:
    """Power spectrograms (frames, bins) in dB, one panel each, on a common 80-dB colour scale."""
    db = {label: 10 * np.log10(np.maximum(power, 1e-12)) for label, power in examples.items()}
    top = max(float(np.nanmax(x)) for x in db.values())
    rows = math.ceil(len(db) / columns)
    fig = Figure(figsize=(3.4 * min(columns, len(db)) + 1.0, 2.6 * rows), layout="constrained")
    axes = fig.subplots(rows, min(columns, len(db)), squeeze=False).ravel()
    extent = (0.0, CLIP_SECONDS, 0.0, audio.SAMPLE_RATE / 2000)
    image = None
    for ax, (label, values) in zip(axes, db.items()):
        image = ax.imshow(
            values.T, origin="lower", aspect="auto", extent=extent, vmin=top - 80.0, vmax=top, cmap="magma"
        )
        ax.set_title(label, fontsize="medium")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("frequency (kHz)")
    for ax in axes[len(db) :]:
        ax.set_visible(False)
    fig.colorbar(image, ax=axes.tolist(), label="power (dB)")
    return fig


def _write_report(
    out_dir: Path,
    rows: list[dict],
    summary: list[dict[str, object]],
    intro: list[str],
    examples: Mapping[str, np.ndarray],
) -> None:
    """The CSV files and the figure, then the Markdown report that refers to them."""
    write_csv(out_dir / DRAWS_NAME, rows, ["row", "draw", "fd", "clips", "dropped"])
    write_csv(out_dir / SUMMARY_NAME, summary)
    save_figure(spectrogram_figure(examples), out_dir / FIGURE_NAME)
    sections = [
        ("FD-DNSMOS, mean ± 95 % CI over draws (as Table 3 of the HiT-DVAE paper)", results_table(summary)),
        ("Time per clip in ms (sampling, Griffin-Lim, DNSMOS embedding)", _timing_table(summary)),
        (
            "Generated spectrograms (one seeded sample per prior, next to a training crop)",
            f"![generated spectrograms]({FIGURE_NAME})",
        ),
    ]
    write_markdown(out_dir / MARKDOWN_NAME, "Speech generation (FD-DNSMOS)", intro, sections)
