"""Enhance audio files with a DVAE speech prior: files, folders or manifests in, enhanced files out.

Each file is read at its own sample rate. Its channels are averaged, resampled to 16 kHz and
peak-normalised for the VEM, and the Wiener gain (eq. 36) found for that mono mix is applied to the
STFT of every channel at its original level, so the output keeps the input's sample rate, channel
count and loudness. The prior models 16 kHz speech: content above 8 kHz is removed. Any enhancer
(`enhancement.enhancer`) may take the place of the VEM, e.g. the supervised baseline (UMX), whose mask is
then the gain.

Long files are cut into overlapping chunks at 16 kHz, enhanced a group at a time and joined with
raised-cosine cross-fades while the output is written, so memory does not grow with the file's
length. With several workers, the groups of every file are the units of work: the main process reads
them, the workers enhance them, and the main process joins them in order, so one long file keeps all
cores busy. Outputs are written atomically, existing outputs are skipped (resume), and a file that
cannot be enhanced (unreadable, silent, too short, NaN) is reported while the others are processed.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from itertools import groupby, islice
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
import soxr
import torch
from tqdm.auto import tqdm

from ..atomic import atomic_path, stale_temporaries, write_text_atomic
from ..audio import AUDIO_SUFFIXES, SAMPLE_RATE, AudioError
from ..checkpoints import default_device
from ..data.manifest import read_manifest
from ..errors import SpeechDVAEError
from ..stft import HOP_LENGTH, N_FFT, istft, min_samples, stft
from .enhancer import Enhancer, EnhancerSource, Inference, load_enhancer

# Output formats kept from the input; any other input is written as WAV.
OUTPUT_FORMATS = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}
FLOAT_SUBTYPES = frozenset({"FLOAT", "DOUBLE", "VORBIS", "OPUS"})
MANIFEST_SUFFIX = ".jsonl"
DEFAULT_CHUNK_SECONDS = 20.0
DEFAULT_OVERLAP_SECONDS = 1.0
READ_BLOCK_FRAMES = 1 << 16
# What enhancing one file can fail with; such a failure is reported and the other files go on.
FILE_ERRORS = (ValueError, RuntimeError, OSError, MemoryError)
# Chunk groups each worker has queued beyond the one it enhances: enough to stay busy while the main
# process writes, few enough to bound the memory held for results waiting to be joined in order.
GROUPS_AHEAD_PER_WORKER = 2
T = TypeVar("T")


class EnhanceError(SpeechDVAEError, ValueError):
    """Inputs or outputs that cannot be used as a whole (missing input, clashing or unsafe outputs)."""


@dataclass(frozen=True)
class Job:
    """One input file and the output it is enhanced into; `key` names its random streams."""

    source: Path
    target: Path
    key: str


@dataclass
class EnhanceReport:
    """What a run did: outputs written, outputs already there (skipped), and failures with reasons."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)  # temporaries an interrupted run left next to outputs
    audio_seconds: float = 0.0  # duration of the inputs enhanced in this run
    elapsed: float = 0.0  # wall-clock seconds of the run
    failed_list: Path | None = None  # the JSONL listing the failures, if any

    @property
    def real_time_factor(self) -> float:
        """Processing time per second of audio enhanced (below 1: faster than real time)."""
        return self.elapsed / self.audio_seconds if self.audio_seconds else float("nan")

    def summary(self) -> str:
        """One line per kind of outcome, for the console."""
        lines = [
            f"enhanced {len(self.written)} file(s)"
            + (
                f": {self.audio_seconds:.1f} s of audio in {self.elapsed:.1f} s (real-time factor "
                f"{self.real_time_factor:.2f})"
                if self.written
                else ""
            )
        ]
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} file(s) whose output already exists")
        if self.removed:
            lines.append(f"removed {len(self.removed)} temporary file(s) left by an interrupted run")
        if self.failed:
            lines.append(f"FAILED {len(self.failed)} file(s), listed in {self.failed_list}")
        return "\n".join(lines)


@dataclass(frozen=True)
class Chunking:
    """Chunk and overlap lengths in 16 kHz samples, multiples of the STFT hop so chunk frames share
    one time grid."""

    length: int
    overlap: int

    @classmethod
    def from_seconds(cls, chunk_seconds: float, overlap_seconds: float = DEFAULT_OVERLAP_SECONDS) -> Chunking:
        """Round to whole hops; the overlap must span an STFT window and leave room between two overlaps."""
        length, overlap = (HOP_LENGTH * round(s * SAMPLE_RATE / HOP_LENGTH) for s in (chunk_seconds, overlap_seconds))
        if overlap < N_FFT or length <= 2 * overlap:
            raise EnhanceError(
                f"chunks of {chunk_seconds} s with {overlap_seconds} s overlap: the overlap must "
                f"be at least {N_FFT / SAMPLE_RATE} s and a chunk longer than twice the overlap"
            )
        return cls(length, overlap)

    @property
    def hop(self) -> int:
        return self.length - self.overlap

    def count(self, samples: int) -> int:
        """The number of chunks `overlapping_chunks` cuts from a stream of `samples` samples."""
        return max(1, math.ceil((samples - self.overlap) / self.hop))


# -- inputs and outputs --------------------------------------------------------------------------


def collect_jobs(inputs: Iterable[str | os.PathLike], out_dir: str | os.PathLike) -> list[Job]:
    """Jobs for files (-> OUTDIR/<name>), folders (searched recursively, structure mirrored) and
    JSONL manifests (-> OUTDIR/<id>), sorted by output. Refuses clashing outputs and any output
    that would replace an input."""
    inputs, out_dir = [Path(item) for item in inputs], Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise EnhanceError(f"{out_dir}: the output folder is an existing file")
    jobs: dict[Path, Job] = {}
    for item in inputs:
        for source, relative in _expand(item, out_dir):
            target = out_dir / output_name(relative)
            job = Job(source, target, target.relative_to(out_dir).as_posix())
            other = jobs.setdefault(target.resolve(), job)
            if other.source.resolve() != source.resolve():
                raise EnhanceError(
                    f"{other.source} and {source} would both be written to {target}; "
                    "enhance them into different output folders"
                )
    if not jobs:
        raise EnhanceError(f"no audio files found in {', '.join(map(str, inputs))}")
    sources = {job.source.resolve() for job in jobs.values()}
    clash = sorted(str(job.source) for resolved, job in jobs.items() if resolved in sources)
    if clash:
        raise EnhanceError(
            f"the output folder {out_dir} would overwrite input files (e.g. {clash[0]}); choose another output folder"
        )
    return sorted(jobs.values(), key=lambda job: job.key)


def output_name(relative: Path) -> Path:
    """The output's relative path: the input's suffix for WAV, FLAC and Ogg, else `.wav`."""
    suffix = relative.suffix.lower()
    return relative.with_suffix(suffix if suffix in OUTPUT_FORMATS else ".wav")


def _expand(item: Path, out_dir: Path) -> Iterator[tuple[Path, Path]]:
    """(source file, relative output path) pairs of one command-line input."""
    if item.is_dir():
        yield from _folder_files(item, out_dir)
    elif item.is_file() and item.suffix.lower() == MANIFEST_SUFFIX:
        yield from _manifest_files(item)
    elif item.is_file():
        yield item, Path(item.name)
    else:
        raise EnhanceError(f"{item}: no such file or folder")


def _folder_files(folder: Path, out_dir: Path) -> Iterator[tuple[Path, Path]]:
    """Audio files under `folder` by suffix, leaving out hidden files and an output folder inside it."""
    out_root = out_dir.resolve()
    nested = folder.resolve() in out_root.parents
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        hidden = any(part.startswith(".") for part in relative.parts)
        if (
            path.is_file()
            and not hidden
            and path.suffix.lower() in AUDIO_SUFFIXES
            and not (nested and out_root in path.resolve().parents)
        ):
            yield path, relative


def _manifest_files(manifest: Path) -> Iterator[tuple[Path, Path]]:
    """Each record's `path`, written under its `id` (which may hold sub-folders)."""
    for record in read_manifest(manifest):
        name, suffix = str(record["id"]), Path(record["path"]).suffix
        relative = Path(name if name.lower().endswith(suffix.lower()) else name + suffix)
        if relative.is_absolute() or ".." in relative.parts or not relative.name:
            raise EnhanceError(f"{manifest}: id {record['id']!r} is not a relative output name")
        yield Path(record["path"]), relative


def _inspect(path: Path) -> sf._SoundFileInfo:
    """The file's header; AudioError if unreadable or shorter than one STFT at 16 kHz."""
    try:
        info = sf.info(str(path))
    except Exception as err:  # soundfile raises several types (LibsndfileError, RuntimeError, ...)
        raise AudioError(f"{path}: cannot read audio ({err})") from err
    if round(info.frames * SAMPLE_RATE / info.samplerate) < min_samples():
        raise AudioError(
            f"{path}: too short ({info.frames / info.samplerate:.3f} s; at least "
            f"{min_samples() / SAMPLE_RATE:.3f} s needed)"
        )
    return info


def _blocks(path: Path) -> Iterator[np.ndarray]:
    """(frames, channels) float32 blocks of the whole file; decoding errors become AudioError."""
    try:
        with sf.SoundFile(str(path)) as f:
            yield from f.blocks(READ_BLOCK_FRAMES, dtype="float32", always_2d=True)
    except (RuntimeError, sf.SoundFileError) as err:
        raise AudioError(f"{path}: cannot decode audio ({err})") from err


def mono_peak(path: Path) -> float:
    """Largest magnitude of the channel average, read block by block; AudioError on silence or NaN."""
    peak = 0.0
    for block in _blocks(path):
        if not np.isfinite(block).all():
            raise AudioError(f"{path}: the audio contains NaN or infinite samples")
        peak = max(peak, float(np.abs(block.mean(1)).max(initial=0.0)))
    if peak == 0.0:
        raise AudioError(f"{path}: the audio is silent (all samples are zero)")
    return peak


class _Resampler:
    """Streaming resampling of (frames, channels) blocks (soxr, VHQ); the identity at equal rates."""

    def __init__(self, rate_in: int, rate_out: int, channels: int) -> None:
        self.channels = channels
        self.stream = (
            soxr.ResampleStream(rate_in, rate_out, channels, dtype="float32", quality="VHQ")
            if rate_in != rate_out
            else None
        )

    def __call__(self, block: np.ndarray, last: bool = False) -> np.ndarray:
        if self.stream is None:
            return block
        return self.stream.resample_chunk(np.ascontiguousarray(block, dtype=np.float32), last=last)

    def flush(self) -> np.ndarray:
        return self(np.zeros((0, self.channels), np.float32), last=True)


def _to_16k(blocks: Iterable[np.ndarray], rate: int, channels: int) -> Iterator[np.ndarray]:
    """(frames, channels) blocks at `rate` as 16 kHz blocks, streamed."""
    resampler = _Resampler(rate, SAMPLE_RATE, channels)
    for block in blocks:
        yield resampler(block)
    yield resampler.flush()


def overlapping_chunks(blocks: Iterable[np.ndarray], chunking: Chunking) -> Iterator[tuple[np.ndarray, bool]]:
    """(chunk, is_last) pairs: chunk k covers samples [k hop, k hop + length) of the stream, the last one
    ends with the stream. At most one chunk plus one block is held at a time."""
    buffer: np.ndarray | None = None
    for block in blocks:
        buffer = block if buffer is None else np.concatenate([buffer, block])
        while len(buffer) > chunking.length:
            yield buffer[: chunking.length], False
            buffer = buffer[chunking.hop :]
    if buffer is not None and len(buffer):
        yield buffer, True


def fade_in(length: int) -> np.ndarray:
    """Raised-cosine ramp sin^2 from 0 to 1; with its complement cos^2 it sums to one at every sample."""
    return np.sin(0.5 * np.pi * (np.arange(length) + 0.5) / length).astype(np.float32) ** 2


class CrossFader:
    """Joins enhanced overlapping chunks into one stream, cross-fading each overlap."""

    def __init__(self, overlap: int) -> None:
        self.overlap = overlap
        self.ramp = fade_in(overlap)[:, None]
        self.tail: np.ndarray | None = None

    def push(self, chunk: np.ndarray, last: bool) -> np.ndarray:
        """The samples of `chunk` (frames, channels) now final; the chunk's last overlap is held back
        for the next chunk unless `last`."""
        if self.tail is not None:
            head = self.tail * (1.0 - self.ramp) + chunk[: self.overlap] * self.ramp
            chunk = np.concatenate([head, chunk[self.overlap :]])
        if last:
            self.tail = None
            return chunk
        self.tail = chunk[-self.overlap :]
        return chunk[: -self.overlap]


class _Sink:
    """Writes blocks to an open SoundFile, exactly `frames` frames in all, clipping integer formats."""

    def __init__(self, file: sf.SoundFile, frames: int) -> None:
        self.file, self.frames, self.written = file, frames, 0
        self.clip = file.subtype not in FLOAT_SUBTYPES

    def write(self, block: np.ndarray) -> None:
        block = block[: self.frames - self.written]
        self.file.write(np.clip(block, -1.0, 1.0) if self.clip else block)
        self.written += len(block)

    def finish(self) -> None:
        """Pad the last few frames the resampler may leave out."""
        self.write(np.zeros((self.frames - self.written, self.file.channels), np.float32))


# -- enhancement -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChunkGroup:
    """Consecutive 16 kHz chunks (frames, channels) of one stream, enhanced together: the unit of work the workers
    share. `lasts` marks the stream's last chunk and `seconds` is the input the group completes."""

    chunks: list[np.ndarray]
    keys: list[str]
    lasts: list[bool]
    seconds: float


# Submits a chunk group and its scale for enhancement; the future gives the group enhanced.
Submit = Callable[[ChunkGroup, float], Future[ChunkGroup]]


def chunk_groups(
    blocks: Iterable[np.ndarray], rate: int, channels: int, chunking: Chunking, batch_size: int, key: str
) -> Iterator[ChunkGroup]:
    """The stream of (frames, channels) blocks at `rate` as groups of `batch_size` overlapping chunks at 16 kHz,
    keyed KEY#<chunk index> so that each chunk draws the same random numbers wherever it is enhanced."""
    chunks = enumerate(overlapping_chunks(_to_16k(blocks, rate, channels), chunking))
    while group := list(islice(chunks, batch_size)):
        yield ChunkGroup(
            [chunk for _, (chunk, _) in group],
            [f"{key}#{index}" for index, _ in group],
            [last for _, (_, last) in group],
            sum(len(chunk) if last else chunking.hop for _, (chunk, last) in group) / SAMPLE_RATE,
        )


def enhance_chunks(
    enhancer: Enhancer, chunks: Sequence[np.ndarray], keys: Sequence[str], scale: float, progress: bool = False
) -> list[np.ndarray]:
    """Enhance 16 kHz chunks (frames, channels): the enhancer's gains for the channel mean times `scale` are
    applied to every channel."""
    spectra = [stft(torch.from_numpy(np.ascontiguousarray(chunk.T))) for chunk in chunks]  # (C, T, F)
    gains = enhancer.gains([s.mean(0) * scale for s in spectra], keys, progress).gains
    return [istft(s * g, length=len(chunk)).T.numpy() for s, g, chunk in zip(spectra, gains, chunks)]


def enhance_group(enhancer: Enhancer, group: ChunkGroup, scale: float, progress: bool = False) -> ChunkGroup:
    """The group with its chunks enhanced (see `enhance_chunks`)."""
    return replace(group, chunks=enhance_chunks(enhancer, group.chunks, group.keys, scale, progress))


def joined_blocks(
    groups: Iterable[ChunkGroup],
    rate: int,
    channels: int,
    chunking: Chunking,
    on_progress: Callable[[float], None] | None = None,
) -> Iterator[np.ndarray]:
    """Enhanced chunk groups of one stream, in order, as blocks at `rate`: cross-faded, then resampled (a few frames
    may be left out at the end by the resampler); `on_progress` receives the input seconds of each group."""
    to_input_rate = _Resampler(SAMPLE_RATE, rate, channels)
    fader = CrossFader(chunking.overlap)
    for group in groups:
        for signal, last in zip(group.chunks, group.lasts):
            yield to_input_rate(fader.push(signal, last))
        if on_progress is not None:
            on_progress(group.seconds)
    yield to_input_rate.flush()


def check_settings(chunk_seconds: float, batch_size: int) -> Chunking:
    """The chunking of `chunk_seconds`; EnhanceError for unusable chunk or batch sizes."""
    if batch_size < 1:
        raise EnhanceError(f"the batch size must be positive, got {batch_size}")
    return Chunking.from_seconds(chunk_seconds)


def _open(source: Path, target: Path) -> tuple[sf._SoundFileInfo, float]:
    """The input's header and the scale that peak-normalises its channel mean; an error if it cannot be enhanced."""
    if target.exists() and target.resolve() == source.resolve():
        raise EnhanceError(f"{target}: refusing to replace the input file with its enhanced version")
    info = _inspect(source)
    return info, 1.0 / mono_peak(source)


def _write(
    target: Path,
    info: sf._SoundFileInfo,
    groups: Iterable[ChunkGroup],
    chunking: Chunking,
    on_progress: Callable[[float], None] | None = None,
) -> float:
    """Join the enhanced chunk groups of the input described by `info` into `target` (format from its suffix,
    written atomically, replaced if present); returns the input's duration in seconds."""
    fmt = OUTPUT_FORMATS.get(target.suffix.lower(), "WAV")
    subtype = info.subtype if sf.check_format(fmt, info.subtype) else None
    with (
        atomic_path(target) as tmp,
        sf.SoundFile(str(tmp), "w", info.samplerate, info.channels, subtype, format=fmt) as out,
    ):
        sink = _Sink(out, info.frames)
        for block in joined_blocks(groups, info.samplerate, info.channels, chunking, on_progress):
            sink.write(block)
        sink.finish()
    return info.frames / info.samplerate


def enhance_file(
    source: str | os.PathLike,
    target: str | os.PathLike,
    enhancer: Enhancer,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    batch_size: int = 1,
    key: str | None = None,
    progress: bool = False,
    on_progress: Callable[[float], None] | None = None,
) -> float:
    """Enhance one file into `target` (format from its suffix, written atomically, replaced if present) in this
    process; returns the input's duration in seconds. `key` names the random streams (default: the file name),
    `on_progress` receives the seconds of input done after each group of `batch_size` chunks."""
    source, target = Path(source), Path(target)
    chunking = check_settings(chunk_seconds, batch_size)
    info, scale = _open(source, target)
    groups = chunk_groups(_blocks(source), info.samplerate, info.channels, chunking, batch_size, key or source.name)
    return _write(target, info, (enhance_group(enhancer, g, scale, progress) for g in groups), chunking, on_progress)


def enhance_wave(
    wave: np.ndarray,
    sample_rate: int,
    enhancer: Enhancer,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    batch_size: int = 1,
    key: str = "wave",
    progress: bool = False,
) -> np.ndarray:
    """The enhanced version of a waveform (frames,) or (frames, channels) at any `sample_rate`, float32 of the
    same shape, made as `enhance_file` makes a file's; AudioError if it is too short, silent or not finite."""
    signal = np.asarray(wave, dtype=np.float32)
    if signal.ndim not in (1, 2) or sample_rate <= 0:
        raise AudioError(
            f"expected a waveform (frames,) or (frames, channels) and a positive sample rate, got "
            f"shape {signal.shape} at {sample_rate} Hz"
        )
    frames = signal.reshape(len(signal), -1)
    if round(len(frames) * SAMPLE_RATE / sample_rate) < min_samples():
        raise AudioError(
            f"the waveform is too short ({len(frames) / sample_rate:.3f} s; at least "
            f"{min_samples() / SAMPLE_RATE:.3f} s needed)"
        )
    if not np.isfinite(frames).all():
        raise AudioError("the waveform contains NaN or infinite samples")
    peak = float(np.abs(frames.mean(1)).max())
    if peak == 0.0:
        raise AudioError("the waveform is silent (all samples are zero)")
    chunking = check_settings(chunk_seconds, batch_size)
    groups = chunk_groups([frames], sample_rate, frames.shape[1], chunking, batch_size, key)
    enhanced = (enhance_group(enhancer, group, 1.0 / peak, progress) for group in groups)
    joined = np.concatenate(list(joined_blocks(enhanced, sample_rate, frames.shape[1], chunking)))[: len(frames)]
    joined = np.pad(joined, ((0, len(frames) - len(joined)), (0, 0)))
    return joined.reshape(signal.shape)


def enhance_files(
    inputs: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    model: EnhancerSource = "default",
    inference: Inference | None = None,
    chunk_seconds: float = DEFAULT_CHUNK_SECONDS,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    progress: bool = True,
    overwrite: bool = False,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
) -> EnhanceReport:
    """Enhance files, folders and manifests into `out_dir` with a prior (by the engine and settings `inference` gives
    it; None: its own) or the supervised baseline (UMX) (shipped name, checkpoint folder or network). Existing
    outputs are skipped unless `overwrite`, and temporaries that a killed run left next to them are removed; failures
    are printed on stderr, listed in OUTDIR/failed.jsonl and do not stop the run. `shard` (index, count) takes every
    count-th file. `workers` > 1 shares the chunk groups of all files, the chunks of one long file included, among
    that many processes of one CPU thread each (the outputs are the same)."""
    start = time.perf_counter()
    jobs = shard_jobs(collect_jobs(inputs, out_dir), shard)
    chunking = check_settings(chunk_seconds, batch_size)  # before any work
    if workers < 1:
        raise EnhanceError(f"workers must be positive, got {workers}")
    enhancer = load_enhancer(model, inference, device)
    report = EnhanceReport()
    todo = []
    for job in jobs:
        for stale in stale_temporaries(job.target):
            stale.unlink(missing_ok=True)
            report.removed.append(stale)
        if job.target.exists() and not overwrite:
            report.skipped.append(job.target)
        else:
            todo.append(job)
    durations = {job: _duration(job.source) for job in todo}
    todo.sort(key=lambda job: -durations[job])  # longest first: the workers finish close together
    groups = sum(math.ceil(chunking.count(round(d * SAMPLE_RATE)) / batch_size) for d in durations.values())
    workers = min(workers, groups)
    with (
        tqdm(
            total=sum(durations.values()),
            unit="s",
            desc="enhance",
            disable=not progress,
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s of audio [{elapsed}<{remaining}]",
        ) as bar,
        _submitter(workers, enhancer, progress) as submit,
    ):
        failed: set[Job] = set()
        submitted = _submitted(todo, chunking, batch_size, submit, failed)
        ahead = GROUPS_AHEAD_PER_WORKER * workers if workers > 1 else 0
        for job, parts in groupby(_ahead(submitted, ahead), itemgetter(0)):
            end = bar.n + durations[job]
            try:
                enhanced = (future.result() for _, future in parts)
                report.audio_seconds += _write(
                    job.target, _inspect(job.source), enhanced, chunking, partial(_advance, bar, end)
                )
                report.written.append(job.target)
            except FILE_ERRORS as err:
                failed.add(job)
                _report_failure(report, job, err)
            _advance(bar, end, durations[job])
    report.failed_list = _write_failures(Path(out_dir), report.failed, shard)
    report.elapsed = time.perf_counter() - start
    return report


def _submitted(
    jobs: Iterable[Job],
    chunking: Chunking,
    batch_size: int,
    submit: Submit,
    failed: set[Job],
) -> Iterator[tuple[Job, Future[ChunkGroup]]]:
    """The chunk groups of each job in order, submitted for enhancement as they are read; a job whose input cannot
    be read ends with the error in place of a result, and one that has failed meanwhile is read no further."""
    for job in jobs:
        try:
            info, scale = _open(job.source, job.target)
            for group in chunk_groups(
                _blocks(job.source), info.samplerate, info.channels, chunking, batch_size, job.key
            ):
                if job in failed:
                    break
                yield job, submit(group, scale)
        except FILE_ERRORS as err:
            error: Future[ChunkGroup] = Future()
            error.set_exception(err)
            yield job, error


def _ahead(items: Iterable[T], count: int) -> Iterator[T]:
    """`items` in order, each handed on once `count` more have been drawn: work submitted ahead of the one being
    written keeps the workers busy."""
    waiting: deque[T] = deque()
    for item in items:
        waiting.append(item)
        if len(waiting) > count:
            yield waiting.popleft()
    yield from waiting


@contextmanager
def _submitter(workers: int, enhancer: Enhancer, progress: bool) -> Iterator[Submit]:
    """A function that submits a chunk group and its scale for enhancement: to `workers` processes of one thread
    holding the enhancer, or, with one worker, to this process (with the enhancer's own progress bar)."""
    if workers <= 1:
        yield partial(_run_here, partial(enhance_group, enhancer, progress=progress))
        return
    context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive a fork
    with ProcessPoolExecutor(workers, context, _init_worker, (enhancer,)) as pool:
        yield partial(pool.submit, _enhance_in_worker)


def _run_here(fn: Callable[..., T], *args: Any) -> Future[T]:
    """`fn(*args)` run now, as a finished future whose `result()` raises its error, as a worker's would."""
    future: Future[T] = Future()
    try:
        future.set_result(fn(*args))
    except Exception as err:  # noqa: BLE001 - raised again by result(), where the caller handles it
        future.set_exception(err)
    return future


_WORKER: dict[str, Enhancer] = {}


def _init_worker(enhancer: Enhancer) -> None:
    """Set up a pool process: one torch thread and the enhancer, received once."""
    torch.set_num_threads(1)
    _WORKER["enhancer"] = enhancer


def _enhance_in_worker(group: ChunkGroup, scale: float) -> ChunkGroup:
    """One chunk group enhanced in a pool process."""
    return enhance_group(_WORKER["enhancer"], group, scale)


def _advance(bar: tqdm, end: float, seconds: float) -> None:
    """Move the bar `seconds` forward, never past the end of the current file."""
    bar.update(max(0.0, min(seconds, end - bar.n)))


def _report_failure(report: EnhanceReport, job: Job, err: Exception) -> None:
    """Record a job's failure in the report and print it."""
    reason = str(err) if str(job.source) in str(err) else f"{job.source}: {err}"
    report.failed.append({"input": str(job.source), "output": str(job.target), "error": reason})
    tqdm.write(f"speechdvae: failed: {reason}", file=sys.stderr)


def _duration(path: Path) -> float:
    """Seconds of audio in the file's header; 0 if unreadable (the job reports it)."""
    try:
        info = sf.info(str(path))
    except Exception:  # noqa: BLE001 - any unreadable file is reported later by its job
        return 0.0
    return info.frames / info.samplerate


def shard_jobs(jobs: Sequence[Job], shard: tuple[int, int]) -> list[Job]:
    """Every count-th job starting at index, for shard (index, count)."""
    index, count = shard
    if not 0 <= index < count:
        raise EnhanceError(f"shard {index}/{count}: need 0 <= index < count")
    return list(jobs[index::count])


def shard_from_env() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) when started by torchrun, else (0, 1)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _write_failures(out_dir: Path, failed: list[dict[str, str]], shard: tuple[int, int]) -> Path | None:
    """Write this run's failures as JSONL (one file per shard) or remove a stale list; returns its path."""
    index, count = shard
    path = out_dir / ("failed.jsonl" if count == 1 else f"failed.shard{index}of{count}.jsonl")
    if not failed:
        path.unlink(missing_ok=True)
        return None
    write_text_atomic(path, "".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in failed))
    return path


def parse_shard(text: str | None) -> tuple[int, int]:
    """ "I/N" -> (I, N); None -> the torchrun rank, if any."""
    if text is None:
        return shard_from_env()
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise EnhanceError(f"--shard {text!r}: expected I/N, e.g. 0/4") from None
    return index, count


def worker_device(device: str | None) -> str | None:
    """`device`; when unset under torchrun on a CUDA machine, the GPU of the process's local rank."""
    if device is None and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def default_workers(device: str | torch.device | None, workers: int | None) -> int:
    """`workers`, or one process per available core on CPU and one on a GPU."""
    if workers is not None:
        return workers
    on_cpu = torch.device(device if device is not None else default_device()).type == "cpu"
    return len(os.sched_getaffinity(0)) if on_cpu else 1


def set_threads(device: str | torch.device | None, threads: int | None) -> None:
    """Torch CPU threads: `threads`, or one on CPU. The VEM runs many small recurrent steps per utterance,
    where extra intra-op threads cost more in synchronisation than they gain; several cores are used by
    processes (--workers, --shard)."""
    on_cpu = torch.device(device if device is not None else default_device()).type == "cpu"
    if threads is not None or on_cpu:
        torch.set_num_threads(threads or 1)
