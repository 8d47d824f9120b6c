"""Speech-enhancement evaluation of speech priors on noisy mixtures (SE paper Sec. V-G and V-I, Table II, Figs. 4-5).

Each mixture of a mixture manifest (written by `speechdvae data mix`, or records of an official list read with
`data.mix.read_official_list`) is divided by its peak absolute value, as in the official code (it is not
trimmed), and its clean reference is scaled by the same factor. Every prior enhances it with the VEM
(`enhancement.vem`) or by Langevin posterior sampling (`enhancement.langevin`): mixtures are enhanced a batch at a
time, sorted by length, each with its own encoder copy or Markov chain, NMF and gains and random streams named by
its id, so results do not depend on the batching. The supervised baseline (UMX), an Open-Unmix-style mask
estimator (`baselines.mask_estimator`), may take the place of a prior: its mask multiplies the noisy STFT, and no
inference setting applies to it. The estimate is inverted to the mixture's length and scored against the clean
reference: SI-SDR, PESQ (NB raw P.862, NB MOS-LQO, WB MOS-LQO) and ESTOI. The noisy mixture itself is scored as the
first row, and each prior's improvement over it (output minus input) is kept per mixture for the figures.

Enhancing is slow (seconds to minutes per mixture and prior on a CPU), so every result is appended
to `enhancement_cache.jsonl` as soon as its batch is done and reused by a later run with the same key: model
label, a hash of the model's configuration and weights, the inference settings (of priors), the mixture id and the
checksums of its noisy and clean files. An interrupted evaluation continues where it stopped; a prior added
later costs only its own enhancements.

Outputs in the output folder: `enhancement.md` (Table II as median ± 1.57·IQR/√n and as means, improvements per
SNR and noise type, timing), `enhancement.csv` (the summary), `enhancement_utterances.csv` (every mixture and row,
with its SNR, noise type and improvements), `improvement_per_snr.png` (Fig. 4), `improvement_per_noise.png`
(Fig. 5) and, with `save_audio`, the estimates as `audio/<model>/<id>.wav` (relative to the peak-normalised
mixture).
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import audio
from ..atomic import write_text_atomic
from ..commands import enhance_command
from ..enhancement.common import settings_identity
from ..enhancement.enhancer import (
    Enhancer,
    EnhancerSource,
    Inference,
    InferenceRequest,
    describe_settings,
    enhance_waves,
    load_enhancer,
)
from ..errors import needs_extra
from .common import EvaluationError, Labelled, ResultCache, model_fingerprint, torch_threads
from .metrics import METRICS, markdown_table, median_ci, metrics_with_reasons, summarize_metrics
from .mixtures import Mixture, Mixtures, balanced_subset, condition, identify, read_mixtures, read_pair
from .report import escape_cell, flatten_summary, save_figure, write_csv, write_markdown

with needs_extra("eval", "Drawing report figures (matplotlib)"):
    from matplotlib import colormaps
    from matplotlib.figure import Figure

NOISY_LABEL = "noisy mixture"
SCORES = ("si_sdr", "pesq_nb_raw", "pesq_nb", "pesq_wb", "estoi")
IMPROVEMENTS = {name: f"{name}_improvement" for name in SCORES}
FIGURE_METRICS = ("si_sdr", "pesq_nb_raw", "estoi")  # the panels of Figs. 4-5, PESQ on the papers' raw scale
MARKERS = "osD^v<>ph*"  # with 20 colours: series stay distinct in the figures
BATCH_SIZE = 8
MARKDOWN_NAME, SUMMARY_NAME, UTTERANCES_NAME = "enhancement.md", "enhancement.csv", "enhancement_utterances.csv"
# row label -> the inference settings of the row ({"engine": ..., field: value, ...}; priors only)
SETTINGS_NAME = "enhancement_settings.json"
SNR_FIGURE_NAME, NOISE_FIGURE_NAME = "improvement_per_snr.png", "improvement_per_noise.png"
CACHE_NAME, AUDIO_DIR = "enhancement_cache.jsonl", "audio"
UTTERANCE_COLUMNS = (
    "id",
    "model",
    "noise_type",
    "snr",
    "snr_power",
    "duration",
    "seconds",
    "iterations",
    *SCORES,
    *IMPROVEMENTS.values(),
    "error",
)


class EnhancementError(EvaluationError):
    """Options or inputs that cannot make an evaluation (no model, reserved label, bad limit, duplicate ids)."""


# ---------------------------------------------------------------------------------------------
# Enhancement
# ---------------------------------------------------------------------------------------------


def result_key(label: str, fingerprint: str, settings: Any, mixture: Mixture) -> str:
    """The cache key of one result: label, weights, the enhancer's settings (a dataclass; None for the noisy row
    and enhancers without settings), mixture id and files."""
    identity = {
        "model": label,
        "weights": fingerprint,
        "vem": settings_identity(settings) if settings else None,
        "id": mixture.id,
        "files": mixture.digest,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def audio_path(out_dir: Path, label: str, mixture_id: str) -> Path:
    """Where `--save-audio` writes a prior's estimate: audio/<label>/<id>.wav (sub-folders follow the id)."""
    relative = Path(f"{mixture_id}.wav")
    if relative.is_absolute() or ".." in relative.parts:
        raise EnhancementError(f"mixture id {mixture_id!r} cannot name an output file")
    return out_dir / AUDIO_DIR / re.sub(r"[^\w.-]+", "_", label) / relative


def snapshot_settings(label: str, settings: Any, iterations: int) -> Any:
    """The settings of a run of `iterations` iterations, which a snapshot stands for; EnhancementError if the
    engine cannot run so few (e.g. Langevin iterations within its warm-up)."""
    try:
        return replace(settings, niter=iterations)
    except ValueError as err:
        raise EnhancementError(f"{label}: no snapshot after {iterations} iterations: {err}") from None


def snapshot_label(label: str, iterations: int) -> str:
    """The row of a prior stopped after `iterations` iterations (`snapshots`)."""
    return f"{label} · {iterations} it"


@dataclass
class _Job:
    """A mixture, the cache keys of all its rows (NOISY_LABEL, enhancer labels and snapshot rows) and the rows it
    still lacks."""

    mixture: Mixture
    keys: dict[str, str]
    missing: set[str]


@dataclass
class _Task:
    """One enhancer (or NOISY_LABEL for the input itself) on a batch of readable mixtures, with the rows it gives:
    row label -> (iterations of a snapshot, or None for the enhancer's own result; cache key per mixture)."""

    label: str
    rows: dict[str, tuple[int | None, list[str]]]
    ids: list[str]
    signals: list[tuple[np.ndarray, np.ndarray]]  # (peak-normalised noisy, clean) per mixture


def _run_task(task: _Task, model: Enhancer | None, audio_dir: Path | None) -> list[dict]:
    """Cache entries of a task: the model's estimates (or the noisy input) scored against the references,
    with the time of the enhancement + iSTFT shared out over the mixtures by length."""
    waves = [noisy for noisy, _ in task.signals]
    outputs: dict[int | None, tuple[list[np.ndarray], list[dict]]] = {
        None: (waves, [{"seconds": None, "iterations": None} for _ in waves])
    }
    if model is not None:
        snapshots = [k for k, _ in task.rows.values() if k is not None]
        result = enhance_waves(model, waves, task.ids, snapshots)
        total = sum(len(x) for x in waves)
        for k, estimates in [(None, result), *result.snapshots.items()]:
            timing = [
                {"seconds": estimates.seconds * len(x) / total, "iterations": n}
                for x, n in zip(waves, estimates.iterations)
            ]
            outputs[k] = (estimates.waves, timing)
    entries = []
    for label, (k, keys) in task.rows.items():
        estimates, timing = outputs[k]
        if audio_dir is not None and model is not None:
            for mixture_id, estimate in zip(task.ids, estimates):
                audio.write_audio(audio_path(audio_dir, label, mixture_id), estimate, subtype="FLOAT")
        pairs = [(clean, estimate) for (_, clean), estimate in zip(task.signals, estimates)]
        scores, reasons = metrics_with_reasons(pairs, [f"{i} ({label})" for i in task.ids], workers=1)
        entries += [
            {
                "key": key,
                "id": mixture_id,
                "model": label,
                "duration": len(estimate) / audio.SAMPLE_RATE,
                **times,
                **{name: score[name] for name in SCORES},
                "error": reason,
            }
            for key, mixture_id, estimate, times, score, reason in zip(
                keys, task.ids, estimates, timing, scores, reasons
            )
        ]
    return entries


_WORKER_STATE: dict[str, object] = {}


def _init_worker(models: dict[str, Enhancer], audio_dir: Path | None) -> None:
    """Set up a pool process: one torch thread (the VEM's small recurrent steps gain nothing from more) and
    the enhancers, received once instead of with every task."""
    torch.set_num_threads(1)
    _WORKER_STATE.update(models=models, audio_dir=audio_dir)


def _run_worker_task(task: _Task) -> list[dict]:
    """One task in a pool process."""
    models: dict[str, Enhancer] = _WORKER_STATE["models"]  # type: ignore[assignment]
    return _run_task(task, models.get(task.label), _WORKER_STATE["audio_dir"])  # type: ignore[arg-type]


class _Evaluation:
    """Computes the missing results of a mixture set, batch by batch and prior by prior, in `workers` processes
    (in this one when `workers` is 1), and keeps every per-mixture result. Each prior (an enhancer built on a
    DVAE) also gives a row per snapshot iteration count below its own, from the same run."""

    def __init__(
        self,
        priors: list[Labelled],
        cache: ResultCache,
        out_dir: Path,
        save_audio: bool,
        workers: int,
        snapshots: Sequence[int] = (),
    ) -> None:
        self.priors, self.cache, self.out_dir, self.workers = priors, cache, out_dir, workers
        self.audio_dir = out_dir if save_audio else None
        self.results: dict[tuple[str, str], dict] = {}  # (label, mixture id) -> result
        # enhancer label -> its rows: row label -> (snapshot iterations or None, settings of the row's cache key)
        self.rows_of: dict[str, dict[str, tuple[int | None, Any]]] = {NOISY_LABEL: {NOISY_LABEL: (None, None)}}
        for p in priors:
            rows = {p.label: (None, p.model.settings)}
            if p.model.prior is not None:
                for k in sorted(set(snapshots)):
                    if k < p.model.settings.niter:
                        rows[snapshot_label(p.label, k)] = (k, snapshot_settings(p.label, p.model.settings, k))
            self.rows_of[p.label] = rows
        self.computed = dict.fromkeys([label for p in priors for label in self.rows_of[p.label]], 0)

    def settings(self) -> dict[str, dict[str, Any]]:
        """Row label -> the inference settings of the row, with the engine (rows of priors only)."""
        return {
            label: {"engine": settings.engine, **asdict(settings)}
            for rows in self.rows_of.values()
            for label, (_, settings) in rows.items()
            if settings is not None
        }

    @property
    def labels(self) -> list[str]:
        """Every row: the noisy mixture, then each enhancer followed by its snapshots."""
        return [label for rows in self.rows_of.values() for label in rows]

    def plan(self, mixtures: Sequence[Mixture]) -> list[_Job]:
        """Take cached results; return the work left, longest mixtures first (batches of similar lengths, and
        parallel workers that finish together: the short batches fill in at the end)."""
        jobs = []
        for mixture in mixtures:
            if mixture.error:
                self._unusable(mixture, self.labels, mixture.error)
                continue
            # a snapshot row is keyed as the run of its iterations under the prior's own label: both share results
            fingerprints = {p.label: p.fingerprint for p in self.priors}
            keys = {
                label: result_key(owner, fingerprints.get(owner, ""), settings, mixture)
                for owner, rows in self.rows_of.items()
                for label, (_, settings) in rows.items()
            }
            missing = set()
            for label, key in keys.items():
                cached = self.cache.get(key)
                needs_audio = (
                    self.audio_dir is not None
                    and label != NOISY_LABEL
                    and not audio_path(self.out_dir, label, mixture.id).is_file()
                )
                if cached is None or needs_audio:
                    missing.add(label)
                else:
                    self.results[label, mixture.id] = cached
            if missing:
                jobs.append(_Job(mixture, keys, missing))
        return sorted(jobs, key=lambda job: (-job.mixture.duration, job.mixture.id))

    def work(self, job: _Job) -> list[str]:
        """The enhancer rows a job computes: every row of an enhancer that lacks one of its rows."""
        return [
            label
            for owner, rows in self.rows_of.items()
            if owner != NOISY_LABEL and job.missing & set(rows)
            for label in rows
        ]

    def _unusable(self, mixture: Mixture, labels: Sequence[str], error: str) -> None:
        warnings.warn(f"{mixture.id}: {error}; its metrics are NaN", stacklevel=3)
        for label in labels:
            self.results[label, mixture.id] = {
                "duration": None,
                "seconds": None,
                "iterations": None,
                **dict.fromkeys(SCORES, math.nan),
                "error": error,
            }

    def tasks(self, jobs: Sequence[_Job], batch_size: int, progress: tqdm) -> Iterator[_Task]:
        """The tasks of each batch of `batch_size` jobs, reading its mixtures when it comes up; unreadable
        mixtures become NaN rows and count as done."""
        for start in range(0, len(jobs), batch_size):
            batch = jobs[start : start + batch_size]
            signals: dict[str, tuple[np.ndarray, np.ndarray]] = {}
            for job in batch:
                try:
                    signals[job.mixture.id] = read_pair(job.mixture.record)
                except audio.AudioError as err:
                    self._unusable(job.mixture, list(job.missing), str(err))
                    progress.update(len(self.work(job)))
            for owner, rows in self.rows_of.items():
                todo = [job for job in batch if job.missing & set(rows) and job.mixture.id in signals]
                if todo:
                    yield _Task(
                        owner,
                        {label: (k, [job.keys[label] for job in todo]) for label, (k, _) in rows.items()},
                        [job.mixture.id for job in todo],
                        [signals[job.mixture.id] for job in todo],
                    )

    def run(self, jobs: Sequence[_Job], batch_size: int, progress: tqdm) -> None:
        """Run every task, caching each one's results as soon as it is done."""
        tasks = self.tasks(jobs, batch_size, progress)
        if self.workers == 1:
            models = {p.label: p.model for p in self.priors}
            for task in tasks:
                self._done(task, _run_task(task, models.get(task.label), self.audio_dir), progress)
            return
        context = multiprocessing.get_context("spawn")  # torch's thread pools do not survive a fork
        for p in self.priors:
            p.model.network.cpu()
        models = {p.label: p.model for p in self.priors}
        with ProcessPoolExecutor(self.workers, context, _init_worker, (models, self.audio_dir)) as pool:
            running: dict[Future, _Task] = {}
            for task in tasks:
                running[pool.submit(_run_worker_task, task)] = task
                while len(running) >= 2 * self.workers:  # bounded: mixtures are read as workers free up
                    self._collect(running, progress)
            while running:
                self._collect(running, progress)

    def _collect(self, running: dict[Future, _Task], progress: tqdm) -> None:
        finished, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in finished:
            self._done(running.pop(future), future.result(), progress)

    def _done(self, task: _Task, entries: list[dict], progress: tqdm) -> None:
        for entry in entries:
            self.results[entry["model"], entry["id"]] = {
                k: v for k, v in entry.items() if k not in ("key", "id", "model")
            }
            if entry["model"] != NOISY_LABEL:
                self.computed[entry["model"]] += 1
        self.cache.add(entries)
        if task.label != NOISY_LABEL:
            progress.update(len(entries))

    def rows(self, mixtures: Sequence[Mixture]) -> list[dict]:
        """Per-mixture rows, the noisy mixture first then each prior, mixtures by id, with improvements."""
        rows = []
        for label in self.labels:
            for mixture in mixtures:
                record = mixture.record
                result = {k: v for k, v in self.results[label, mixture.id].items() if k in UTTERANCE_COLUMNS}
                rows.append(
                    {
                        "id": mixture.id,
                        "model": label,
                        "noise_type": str(record["noise_type"]),
                        "snr": float(record["snr"]),
                        "snr_power": record.get("snr_power"),
                        **result,
                    }
                )
        noisy = {row["id"]: row for row in rows if row["model"] == NOISY_LABEL}
        for row in rows:
            if row["model"] != NOISY_LABEL:
                row.update({IMPROVEMENTS[name]: row[name] - noisy[row["id"]][name] for name in SCORES})
        return rows


def evaluate_enhancement(
    models: Mapping[str, EnhancerSource],
    mixtures: Mixtures,
    out_dir: str | os.PathLike,
    limit: int | None = None,
    inference: Inference | None = None,
    *,
    snapshots: Sequence[int] = (),
    batch_size: int = BATCH_SIZE,
    workers: int | None = None,
    save_audio: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> list[dict[str, object]]:
    """Enhance every mixture (manifest path or records) with every model, label -> network or checkpoint folder of
    a prior (enhancing by the engine and settings `inference` gives it; None: its own) or of the supervised baseline
    (UMX), and score it against its clean reference, reusing the results cached in `out_dir`.

    Writes the report files into `out_dir` and returns the summary: the noisy mixture then one row per prior,
    with `n`, a MetricSummary per score and per improvement, `seconds_per_utterance` and `real_time_factor`.
    `snapshots` adds a row per prior and iteration count K below its own: the estimate after K iterations of the
    same run, identical to (and cached as) a run with K iterations, timed as such a run would be.
    `limit` takes a subset balanced over noise type × SNR; `batch_size` mixtures share an engine run (the results
    do not depend on it); `workers` processes (default: all cores) enhance and score the batches, one prior and
    batch at a time each. Unusable mixtures and
    undefined metrics count as NaN and never stop the run.
    """
    if batch_size < 1:
        raise EnhancementError(f"the batch size must be positive, got {batch_size}")
    out_dir = Path(out_dir)
    all_records, records = select_mixtures(mixtures, limit)
    _check_labels(list(models), records, out_dir if save_audio else None)
    enhancers = {label: load_enhancer(source, inference) for label, source in models.items()}
    priors = [Labelled(label, enhancer, model_fingerprint(enhancer.network)) for label, enhancer in enhancers.items()]
    selected = [identify(record) for record in records]
    workers = max(1, (os.cpu_count() or 1) if workers is None else workers)
    if any(k < 1 for k in snapshots):
        raise EnhancementError(f"snapshot iteration counts must be positive, got {sorted(snapshots)}")
    evaluation = _Evaluation(priors, ResultCache(out_dir / CACHE_NAME), out_dir, save_audio, workers, snapshots)
    jobs = evaluation.plan(selected)
    total = sum(len(evaluation.work(job)) for job in jobs)
    with torch_threads(1), tqdm(total=total, unit="enh", desc="enhancement", disable=not progress) as bar:
        evaluation.run(jobs, batch_size, bar)
    rows = evaluation.rows(selected)
    summary = _summary(rows, evaluation)
    if command is None:
        asked = inference or InferenceRequest()
        command = enhance_command(models, mixtures, out_dir, limit, asked, save_audio=save_audio, snapshots=snapshots)
    intro = [
        f"Regenerate with: `{command}`",
        _describe_set(mixtures, len(all_records), selected, rows, limit),
        *_describe_inference(priors, batch_size),
        METHOD_NOTE,
        *([SUPERVISED_NOTE] if any(p.model.prior is None for p in priors) else []),
        PESQ_NOTE,
        NAN_NOTE,
        *([_describe_snapshots(snapshots)] if snapshots else []),
        _describe_cache(evaluation, len(selected)),
    ]
    _write_report(out_dir, rows, summary, intro, _condition_table(selected))
    write_text_atomic(out_dir / SETTINGS_NAME, json.dumps(evaluation.settings(), indent=2) + "\n")
    return summary


def select_mixtures(mixtures: Mixtures, limit: int | None) -> tuple[list[dict], list[dict]]:
    """All records of the set and those to evaluate (`balanced_subset`); refuses an empty set or duplicate ids."""
    all_records = read_mixtures(mixtures)
    records = balanced_subset(all_records, limit)
    if not records:
        raise EnhancementError(f"{_source_name(mixtures)}: no mixtures listed")
    duplicates = sorted(key for key, count in Counter(r["id"] for r in records).items() if count > 1)
    if duplicates:
        raise EnhancementError(f"{_source_name(mixtures)}: duplicate mixture ids, e.g. {duplicates[0]!r}")
    return all_records, records


def _check_labels(labels: list[str], records: list[dict], audio_dir: Path | None) -> None:
    """Model labels must exist, leave the noisy row's label free and, when audio is saved, give distinct
    folders for ids that can name files."""
    if not labels:
        raise EnhancementError("nothing to evaluate: give at least one model")
    if NOISY_LABEL in labels:
        raise EnhancementError(f"the label {NOISY_LABEL!r} is reserved for the noisy input row")
    if audio_dir is not None:
        if len({audio_path(audio_dir, label, "x").parent for label in labels}) < len(labels):
            raise EnhancementError("two model labels give the same audio folder; rename one of them")
        for record in records:
            audio_path(audio_dir, labels[0], str(record["id"]))


def _source_name(mixtures: Mixtures) -> str:
    return os.fspath(mixtures) if isinstance(mixtures, (str, os.PathLike)) else "<mixture records>"


# ---------------------------------------------------------------------------------------------
# Summary, figures and report
# ---------------------------------------------------------------------------------------------


def _summary(rows: list[dict], evaluation: _Evaluation) -> list[dict[str, object]]:
    """Scores and improvements per model, with the model time per mixture and the real-time factor."""
    summary = summarize_metrics(rows, group_by="model", metrics=[*SCORES, *IMPROVEMENTS.values()])
    for row in summary:
        timed = [r for r in rows if r["model"] == row["model"] and r["seconds"] is not None]
        seconds = sum(r["seconds"] for r in timed)
        duration = sum(r["duration"] for r in timed)
        row["seconds_per_utterance"] = seconds / len(timed) if timed else math.nan
        row["real_time_factor"] = seconds / duration if duration else math.nan
        iterations = [r["iterations"] for r in timed if r["iterations"] is not None]
        row["mean_iterations"] = sum(iterations) / len(iterations) if iterations else math.nan
        row["computed_now"] = evaluation.computed.get(str(row["model"]))
    return summary


def scores_table(summary: Sequence[Mapping[str, object]]) -> str:
    """Table II of the SE paper: the median scores of the noisy mixture and of every model."""
    return _table(summary, SCORES, "median")


def improvement_stats(
    rows: Sequence[Mapping[str, object]], by: str, metric: str
) -> dict[str, dict[object, tuple[float, float]]]:
    """Median improvement of `metric` and its CI half-width per model and per value of `by` (e.g. "snr")."""
    stats: dict[str, dict[object, list[float]]] = {}
    for row in rows:
        if row["model"] != NOISY_LABEL:
            stats.setdefault(str(row["model"]), {}).setdefault(row[by], []).append(row[IMPROVEMENTS[metric]])
    return {
        label: {key: median_ci(values) for key, values in sorted(groups.items())} for label, groups in stats.items()
    }


def _category(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def improvement_figure(
    rows: Sequence[Mapping[str, object]], by: str, xlabel: str, connect: bool, metrics: Sequence[str] = FIGURE_METRICS
) -> Figure:
    """One panel per metric: median improvement ± 1.57·IQR/√n per value of `by`, one series per model
    (lines for an ordered axis such as the SNR, points otherwise)."""
    categories = sorted({row[by] for row in rows})
    fig = Figure(figsize=(4.5 * len(metrics), 3.8), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    for ax, metric in zip(axes, metrics):
        stats = improvement_stats(rows, by, metric)
        width = 0.4 / max(len(stats), 1)
        colours = colormaps["tab20"].colors
        for j, (label, groups) in enumerate(stats.items()):
            x = [categories.index(key) + (j - (len(stats) - 1) / 2) * width for key in groups]
            median, ci = zip(*groups.values())
            style = ("--" if label.startswith("official") else "-") if connect else "none"
            ax.errorbar(
                x,
                median,
                yerr=ci,
                marker=MARKERS[j % len(MARKERS)],
                capsize=3,
                linestyle=style,
                color=colours[j % len(colours)],
                label=label,
            )
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(categories)), [_category(c) for c in categories], rotation=0 if connect else 30)
        ax.set_title(f"Δ {METRICS[metric].label}")
        ax.set_xlabel(xlabel)
        ax.grid(axis="y", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return fig


METHOD_NOTE = (
    "**Method:** each noisy mixture is divided by its peak absolute value (not trimmed), as in the "
    "official code, and its clean reference is scaled by the same factor; the Wiener estimate "
    "(eq. 36) is inverted to the mixture's length and compared with that reference. The noisy mixture "
    "row scores the input itself; an improvement is output minus input, per mixture."
)
SUPERVISED_NOTE = (
    "**Supervised baseline (UMX):** an Open-Unmix-style mask estimator, trained on noisy/clean pairs, "
    "multiplies the noisy STFT by its mask in [0, 1]; the inference settings do not apply to it."
)
PESQ_NOTE = (
    "**PESQ:** *PESQ-NB (raw P.862)* is the narrowband raw MOS in [-0.5, 4.5], the scale of the SE "
    "paper's Table II and of the figures' PESQ panel; *PESQ-NB (MOS-LQO)* is narrowband P.862.1 "
    "MOS-LQO (what the `pesq` package returns); *PESQ-WB (MOS-LQO)* is wideband P.862.2."
)
NAN_NOTE = (
    'Statistics use the finite values; "(k NaN)" counts mixtures on which a metric is undefined '
    f"(unusable audio, too short for PESQ or ESTOI, non-finite output); `{UTTERANCES_NAME}` gives each "
    "reason."
)


def _describe_set(mixtures: Mixtures, total: int, selected: list[Mixture], rows: list[dict], limit: int | None) -> str:
    seconds = sum(row["duration"] or 0.0 for row in rows if row["model"] == NOISY_LABEL)
    subset = (
        f"`--limit {limit}`: balanced over noise type × SNR (equal shares, the remainder spread along the "
        "type × SNR diagonal), evenly spaced by id within each condition"
        if len(selected) < total
        else "all of them"
    )
    unusable = sum(bool(row["error"]) and row["duration"] is None for row in rows if row["model"] == NOISY_LABEL)
    return (
        f"**Mixtures:** `{_source_name(mixtures)}`, {len(selected)} of {total} mixtures ({subset}); "
        f"{seconds / 3600:.3f} h ({seconds / 60:.1f} min) of noisy audio"
        + (f"; {unusable} unusable (NaN in every row)." if unusable else ".")
    )


def _describe_inference(priors: Sequence[Labelled], batch_size: int) -> list[str]:
    """The inference settings of each prior, and how batches and the past of autoregressive priors are handled
    (nothing without priors)."""
    settings = [f"- {p.label}: {describe_settings(p.model.settings)}" for p in priors if p.model.settings]
    if not settings:
        return []
    heading = (
        "**Inference settings** (the prior's own unless the command gives them: its checkpoint's `inference` entry, "
        "else the engine's defaults; VEM: the variational EM, `enhancement.vem`; Langevin: posterior sampling of the "
        "prior's latents by Langevin dynamics, nothing fine-tuned, `enhancement.langevin`):"
    )
    handling = (
        f"Mixtures are enhanced {batch_size} at a time, sorted by length; each has its own encoder copy (VEM) or "
        "Markov chain (Langevin), NMF and gains and random streams seeded from `seed` and its id, so the results do "
        "not depend on the batching. Autoregressive priors read their own generated past (eq. 31) with "
        "past=generated, and the current clean-power estimate E[|s|² | x], decoding all frames at once, with "
        f"past=estimate. The settings of every row are in `{SETTINGS_NAME}`."
    )
    return ["\n".join([heading, "", *settings, "", handling])]


def _describe_snapshots(snapshots: Sequence[int]) -> str:
    return (
        f'**Snapshots:** a row "MODEL · K it" (K in {", ".join(map(str, sorted(set(snapshots))))}) is the prior\'s '
        "estimate after K iterations of the same run, identical to a run with `--iterations K` (its draws leave "
        "the random streams as they were); its time is the time such a run takes."
    )


def _describe_cache(evaluation: _Evaluation, n: int) -> str:
    done = sum(evaluation.computed.values())
    return (
        f"**Cache:** `{CACHE_NAME}` keeps every result, keyed by model label, weights, inference settings, mixture id "
        f"and file checksums; this run enhanced {done} of {n * len(evaluation.computed)} (mixture, row) pairs "
        "and reused the others."
    )


def _condition_table(selected: list[Mixture]) -> str:
    counts: dict[tuple[str, float], int] = {}
    for mixture in selected:
        counts[condition(mixture.record)] = counts.get(condition(mixture.record), 0) + 1
    types, snrs = sorted({t for t, _ in counts}), sorted({s for _, s in counts})
    lines = ["| noise type | " + " | ".join(f"{s:g} dB" for s in snrs) + " |", "|---|" + "---|" * len(snrs)]
    lines += [f"| {escape_cell(t)} | " + " | ".join(str(counts.get((t, s), 0)) for s in snrs) + " |" for t in types]
    return "\n".join(lines) + "\n"


def _table(
    summary: Sequence[Mapping[str, object]], names: Sequence[str], statistic: str, keys: Sequence[str] = ("model", "n")
) -> str:
    """A Markdown table of some metric columns of summary rows; improvement columns headed "Δ <metric>"."""
    headers = {**{name: name for name in SCORES}, **{IMPROVEMENTS[m]: f"Δ {METRICS[m].label}" for m in SCORES}}
    table = [
        {**{k: escape_cell(row[k]) for k in keys}, **{headers[name]: row[name] for name in names}} for row in summary
    ]
    return markdown_table(table, statistic)


def _timing_table(summary: Sequence[Mapping[str, object]]) -> str:
    lines = [
        "| model | s / mixture | real-time factor | mean iterations | enhanced in this run |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {escape_cell(row['model'])} | {row['seconds_per_utterance']:.2f} | {row['real_time_factor']:.2f} "
        f"| {_format_iterations(row['mean_iterations'])} | {row['computed_now']} |"
        for row in summary
        if row["model"] != NOISY_LABEL
    ]
    return "\n".join(lines) + "\n"


def _format_iterations(mean: float) -> str:
    """A mean number of iterations, or "–" for a model that does not iterate."""
    return "–" if math.isnan(mean) else f"{mean:.1f}"


def _write_report(
    out_dir: Path, rows: list[dict], summary: list[dict[str, object]], intro: list[str], conditions: str
) -> None:
    """The two CSV files and the figures, then the Markdown report that refers to them."""
    write_csv(out_dir / UTTERANCES_NAME, rows, UTTERANCE_COLUMNS)
    write_csv(out_dir / SUMMARY_NAME, flatten_summary(summary))
    model_rows = [row for row in rows if row["model"] != NOISY_LABEL]
    model_summary = [row for row in summary if row["model"] != NOISY_LABEL]
    order = {label: i for i, label in enumerate(row["model"] for row in model_summary)}
    per = {
        by: sorted(
            summarize_metrics(model_rows, group_by=("model", by), metrics=list(IMPROVEMENTS.values())),
            key=lambda row, by=by: (order[row["model"]], row[by]),
        )
        for by in ("snr", "noise_type")
    }
    save_figure(
        improvement_figure(model_rows, "snr", "input SNR (dB, BS.1770)", connect=True), out_dir / SNR_FIGURE_NAME
    )
    save_figure(improvement_figure(model_rows, "noise_type", "noise type", connect=False), out_dir / NOISE_FIGURE_NAME)
    improvements = [IMPROVEMENTS[m] for m in FIGURE_METRICS]
    sections = [
        ("Mixtures per noise type and input SNR", conditions),
        ("Median ± 1.57·IQR/√n (Table II of the SE paper)", scores_table(summary)),
        ("Mean", _table(summary, SCORES, "mean")),
        (
            "Improvement over the noisy mixture, median ± 1.57·IQR/√n",
            _table(model_summary, list(IMPROVEMENTS.values()), "median"),
        ),
        (
            "Improvement per input SNR (Fig. 4)",
            _table(per["snr"], improvements, "median", ("model", "snr", "n"))
            + f"\n![improvement per input SNR]({SNR_FIGURE_NAME})",
        ),
        (
            "Improvement per noise type (Fig. 5)",
            _table(per["noise_type"], improvements, "median", ("model", "noise_type", "n"))
            + f"\n![improvement per noise type]({NOISE_FIGURE_NAME})",
        ),
        (
            "Model time (inference or mask estimation, and iSTFT per mixture, one torch thread; real-time factor = "
            "time / audio duration)",
            _timing_table(summary),
        ),
    ]
    write_markdown(out_dir / MARKDOWN_NAME, "Speech enhancement", intro, sections)
