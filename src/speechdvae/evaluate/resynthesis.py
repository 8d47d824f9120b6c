"""Analysis-resynthesis evaluation of speech priors (HiT-DVAE paper Sec. 3.4, Tables 1-2; SE paper Sec. V-H, Table I).

Each test utterance is trimmed (30 dB) and peak-normalised exactly as the training data. A model encodes its
power spectrogram |S|^2 and decodes the speech variance v = exp(y_logvar); the resynthesised STFT is sqrt(v)
with the phase of the original STFT, inverted to a waveform of the original length and scored against the
trimmed, normalised original: RMSE, SI-SDR, PESQ (NB raw P.862, NB MOS-LQO, WB MOS-LQO) and ESTOI. By default z
is the posterior mean, so the evaluation is deterministic; with `sample` z is drawn from q(z | s) (seeded).

Autoregressive models give one row per decoding mode: GT feeds the decoder the true past s_{1:t-1} (teacher
forcing; the SE paper's SRNN-TF-True) and GEN its own past outputs (generation mode, in which the papers
evaluate AR models; SRNN-TF-Pred). Utterances are processed one at a time (batch 1), so bidirectional and
backward RNNs never read padding. The optional oracle row resynthesises from the exact power |S|^2: a check of
the pipeline that should score near perfect.

Outputs in the output folder: `resynthesis.md` (mean and median ± 1.57·IQR/√n tables), `resynthesis.csv`
(the summary), `resynthesis_utterances.csv` (every utterance, with the reason of any NaN) and
`resynthesis.png` (per-utterance distributions).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import audio, stft
from ..checkpoints import is_checkpoint, read_checkpoint_config
from ..commands import resynth_command
from ..data.manifest import read_manifest
from ..models import DVAE
from ..official import import_official
from .common import EvaluationError, ModelSource, evenly_spaced, load_source, torch_threads
from .metrics import DEFAULT_METRICS, markdown_table, metrics_with_reasons, summarize_metrics
from .report import boxplot_figure, escape_cell, flatten_summary, save_figure, write_csv, write_markdown

MODES: dict[str, float] = {"GT": 0.0, "GEN": 1.0}  # decoding mode -> feedback probability
NO_MODE = "-"  # the mode column of non-autoregressive models and of the oracle
ORACLE_LABEL = "oracle (exact |S|)"
CHUNK_UTTERANCES = 32  # utterances resynthesised before their metrics are computed in parallel
MARKDOWN_NAME, SUMMARY_NAME = "resynthesis.md", "resynthesis.csv"
UTTERANCES_NAME, FIGURE_NAME = "resynthesis_utterances.csv", "resynthesis.png"
# The shipped official checkpoints: SRNNs trained with scheduled sampling, RVAEs non-causal (their README).
OFFICIAL_MODELS = {"vae": "VAE", "dkf": "DKF", "rvae": "RVAE", "srnn": "SRNN-SS"}
OFFICIAL_CORPORA = ("WSJ0", "VoiceBank")


class ResynthesisError(EvaluationError):
    """Options that cannot make an evaluation (unknown mode, duplicate model label, empty test set)."""


# ---------------------------------------------------------------------------------------------
# One utterance
# ---------------------------------------------------------------------------------------------


def prepare(x: np.ndarray) -> np.ndarray:
    """Trim (30 dB) and peak-normalise a 16 kHz waveform as the training data (`data.sequences.preprocess`)."""
    return audio.peak_normalize(audio.trim(x))


def analyse(wave: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The complex STFT (float64) of a waveform and its float32 power spectrogram, both (T, F)."""
    spec = stft.stft(torch.from_numpy(np.asarray(wave, dtype=np.float64)))
    return spec, spec.abs().square().to(torch.float32)


@torch.no_grad()
def speech_variance(
    model: DVAE, power: torch.Tensor, feedback: float, sample: bool = False, segment: int | None = None
) -> torch.Tensor:
    """exp(y_logvar) decoded from z ~ q(z | s) (its mean unless `sample`) for a (B, T, F) power spectrogram s; with
    `segment`, each run of `segment` frames is encoded and decoded on its own (its own posterior, an empty past)."""
    if segment is not None and power.shape[1] > segment:
        return torch.cat([speech_variance(model, part, feedback, sample) for part in power.split(segment, dim=1)], 1)
    s = power.to(model.device)
    post = model.infer(s, sample=sample)
    return model.decode(post, s if model.autoregressive else None, feedback=feedback).y_logvar.exp().cpu()


def synthesize(variance: torch.Tensor, spec: torch.Tensor, length: int) -> np.ndarray:
    """Waveform (float32, `length` samples) of the STFT with magnitude sqrt(variance) and the phase of `spec`."""
    phase = torch.polar(torch.ones_like(spec.real), spec.angle())
    return stft.istft(variance.to(torch.float64).sqrt() * phase, length=length).to(torch.float32).numpy()


def resynthesize(model: DVAE, x: np.ndarray, feedback: float, sample: bool = False) -> np.ndarray:
    """Analysis-resynthesis of one waveform `x` (already trimmed and peak-normalised, see `prepare`).

    `feedback` 0 decodes with the true past (GT), 1 with the model's own past (GEN); non-autoregressive
    models ignore it. The result has the length of `x`.
    """
    spec, power = analyse(x)
    return synthesize(speech_variance(model, power[None], feedback, sample)[0], spec, len(x))


# ---------------------------------------------------------------------------------------------
# Test set and models
# ---------------------------------------------------------------------------------------------


def row_title(label: str, mode: str) -> str:
    """The row's name in figures and messages: the label, followed by the mode if there is one ("SRNN GEN")."""
    return label if mode == NO_MODE else f"{label} {mode}"


@dataclass(frozen=True)
class System:
    """One row of the results: a model decoded in one mode, or the oracle (no model)."""

    label: str
    mode: str
    model: DVAE | None = None
    segment: int | None = None

    @property
    def title(self) -> str:
        return row_title(self.label, self.mode)

    def variance(self, power: torch.Tensor, sample: bool) -> torch.Tensor:
        if self.model is None:
            return power
        return speech_variance(self.model, power, MODES.get(self.mode, 0.0), sample, self.segment)


def build_systems(
    models: Mapping[str, DVAE], modes: Sequence[str], oracle: bool, segment: int | None = None
) -> list[System]:
    """The table's rows: the oracle first, then each model (once per mode if autoregressive), decoding `segment`
    frames at a time if given."""
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown or not modes:
        raise ResynthesisError(f"modes must be some of {', '.join(MODES)}, got {' '.join(modes) or 'none'}")
    if segment is not None and segment < 1:
        raise ResynthesisError(f"segment must be a positive number of frames, got {segment}")
    if oracle and ORACLE_LABEL in models:
        raise ResynthesisError(f"the label {ORACLE_LABEL!r} is reserved for the oracle row")
    systems = [System(ORACLE_LABEL, NO_MODE)] if oracle else []
    for label, model in models.items():
        model_modes = list(dict.fromkeys(modes)) if model.autoregressive else [NO_MODE]
        systems += [System(label, mode, model, segment) for mode in model_modes]
    return systems


def official_models(source: str | os.PathLike, folder: str | os.PathLike) -> dict[str, Path]:
    """The official DVAE-SE checkpoints, imported from `source` into `folder` unless some are already there,
    labelled "official <training corpus> <model>", WSJ0 first, models in the papers' order."""
    folder = Path(folder)
    paths = [p for p in sorted(folder.glob("official-*")) if is_checkpoint(p)] if folder.is_dir() else []
    if not paths:
        paths = import_official(source, folder)
    entries = []
    for path in paths:
        config = read_checkpoint_config(path)
        name, corpus = config["model"]["name"], config["metadata"].get("training_corpus", "unknown")
        order = (
            OFFICIAL_CORPORA.index(corpus) if corpus in OFFICIAL_CORPORA else len(OFFICIAL_CORPORA),
            list(OFFICIAL_MODELS).index(name) if name in OFFICIAL_MODELS else len(OFFICIAL_MODELS),
        )
        entries.append((order, f"official {corpus} {OFFICIAL_MODELS.get(name, name.upper())}", path))
    return {label: path for _, label, path in sorted(entries)}


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class _Utterance:
    """A test utterance: raw length, the prepared waveform, or why it cannot be used."""

    record: dict
    raw_samples: int = 0
    samples: int = 0
    wave: np.ndarray | None = None
    error: str = ""


def _read_utterance(record: dict) -> _Utterance:
    utterance = _Utterance(record)
    try:
        raw = audio.read_audio(record["path"])[0]
        utterance.raw_samples = len(raw)
        wave = prepare(raw)
    except audio.AudioError as err:
        message = str(err)
        utterance.error = message if record["path"] in message else f"{record['path']}: {message}"
        return utterance
    if len(wave) < stft.min_samples():
        utterance.error = f"{record['path']}: too short after trimming ({len(wave)} samples, need {stft.min_samples()})"
    else:
        utterance.wave, utterance.samples = wave, len(wave)
    return utterance


def _unusable_rows(utterance: _Utterance, systems: list[System]) -> list[tuple[int, dict]]:
    """NaN rows, with the reason, for an utterance that could not be read or prepared."""
    warnings.warn(f"{utterance.record['id']}: {utterance.error}; its metrics are NaN", stacklevel=4)
    return [
        (
            i,
            {
                "id": utterance.record["id"],
                "model": system.label,
                "mode": system.mode,
                "seconds": None,
                **dict.fromkeys(DEFAULT_METRICS, float("nan")),
                "error": utterance.error,
            },
        )
        for i, system in enumerate(systems)
    ]


def _evaluate_chunk(
    utterances: list[_Utterance],
    systems: list[System],
    sample: bool,
    workers: int | None,
    seconds: np.ndarray,
    progress: tqdm,
) -> list[tuple[int, dict]]:
    """(system index, per-utterance row) for every system and utterance of the chunk; adds model time to `seconds`."""
    out: list[tuple[int, dict]] = []
    pairs, labels, keys = [], [], []
    for utterance in utterances:
        progress.update()
        if utterance.wave is None:
            out += _unusable_rows(utterance, systems)
            continue
        spec, power = analyse(utterance.wave)
        for i, system in enumerate(systems):
            start = time.perf_counter()
            estimate = synthesize(system.variance(power[None], sample)[0], spec, len(utterance.wave))
            seconds[i] += time.perf_counter() - start
            pairs.append((utterance.wave, estimate))
            labels.append(f"{utterance.record['id']} ({system.title})")
            keys.append(
                (
                    i,
                    {
                        "id": utterance.record["id"],
                        "model": system.label,
                        "mode": system.mode,
                        "seconds": len(utterance.wave) / audio.SAMPLE_RATE,
                    },
                )
            )
    metric_rows, reasons = metrics_with_reasons(pairs, labels, workers) if pairs else ([], [])
    out += [(i, {**row, **metrics, "error": reason}) for (i, row), metrics, reason in zip(keys, metric_rows, reasons)]
    return out


def evaluate_resynthesis(
    models: Mapping[str, ModelSource],
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    limit: int | None = None,
    modes: Sequence[str] = ("GT", "GEN"),
    workers: int | None = None,
    *,
    sample: bool = False,
    seed: int = 0,
    oracle: bool = True,
    segment: int | None = None,
    progress: bool = True,
    command: str | None = None,
) -> list[dict[str, object]]:
    """Resynthesise every test utterance with every model (label -> model or checkpoint folder) and score it.

    Writes the report files into `out_dir` (atomically, once all is computed) and returns the summary:
    one row per model and mode with `n`, `seconds_per_utterance` (model + iSTFT time) and a MetricSummary
    per metric. `limit` takes an evenly spaced subset by id; `workers` is the metric process pool size
    (default: all cores); unusable utterances and undefined metrics count as NaN, never stop the run.
    `segment` decodes each utterance `segment` frames at a time, each run on its own (default: whole utterances).
    """
    loaded = {label: load_source(source) for label, source in models.items()}
    systems = build_systems(loaded, modes, oracle, segment)
    if not systems:
        raise ResynthesisError("nothing to evaluate: give at least one model or keep the oracle")
    all_records = read_manifest(manifest)
    records = evenly_spaced(all_records, limit)
    if not records:
        raise ResynthesisError(f"{manifest}: the manifest lists no utterances")
    if sample:
        torch.manual_seed(seed)
    seconds = np.zeros(len(systems))
    indexed: list[tuple[int, dict]] = []
    utterances: list[_Utterance] = []
    with torch_threads(1), tqdm(total=len(records), unit="utt", desc="resynthesis", disable=not progress) as bar:
        for start in range(0, len(records), CHUNK_UTTERANCES):
            chunk = [_read_utterance(r) for r in records[start : start + CHUNK_UTTERANCES]]
            indexed += _evaluate_chunk(chunk, systems, sample, workers, seconds, bar)
            for utterance in chunk:
                utterance.wave = None  # keep lengths and errors, not waveforms
            utterances += chunk
    rows = [row for _, row in sorted(indexed, key=lambda item: item[0])]
    summary = summarize_metrics(rows, group_by=("model", "mode"), metrics=DEFAULT_METRICS)
    n_valid = sum(not u.error for u in utterances)
    for row, system_seconds in zip(summary, seconds):
        row["seconds_per_utterance"] = float(system_seconds / n_valid) if n_valid else float("nan")
    if command is None:
        command = resynth_command(models, manifest, out_dir, limit, modes, sample, seed, oracle, segment=segment)
    intro = [
        f"Regenerate with: `{command}`",
        _describe_test_set(manifest, len(all_records), utterances, limit),
        _describe_method(sample, seed, segment),
        PESQ_NOTE,
        NAN_NOTE,
    ]
    _write_report(Path(out_dir), rows, summary, intro)
    return summary


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

PESQ_NOTE = (
    "**PESQ:** *PESQ-NB (raw P.862)* is the narrowband raw MOS in [-0.5, 4.5], the scale of the DVAE "
    "papers' tables (the P.862.1 mapping inverted); *PESQ-NB (MOS-LQO)* is narrowband P.862.1 MOS-LQO "
    "(what the `pesq` package returns); *PESQ-WB (MOS-LQO)* is wideband P.862.2. RMSE is taken after "
    "the least-squares gain, as in the original DVAE code."
)
NAN_NOTE = (
    'Statistics use the finite values; "(k NaN)" counts utterances on which a metric is undefined '
    f"(unusable audio, too short for PESQ or ESTOI, non-finite model output); `{UTTERANCES_NAME}` "
    "gives each reason."
)


def _describe_test_set(manifest: str | os.PathLike, total: int, utterances: list[_Utterance], limit: int | None) -> str:
    hours = [
        sum(getattr(u, field) for u in utterances) / audio.SAMPLE_RATE / 3600 for field in ("raw_samples", "samples")
    ]
    subset = (
        f"evenly spaced by id with `--limit {limit}`: entries ⌊i·{total}/{limit}⌋ of the sorted list"
        if len(utterances) < total
        else "all of them"
    )
    unusable = sum(bool(u.error) for u in utterances)
    return (
        f"**Test set:** `{os.fspath(manifest)}`, {len(utterances)} of {total} utterances ({subset}); "
        f"{hours[0]:.3f} h as recorded, {hours[1]:.3f} h after trimming"
        + (f"; {unusable} unusable (NaN in every row)." if unusable else ".")
    )


def _describe_method(sample: bool, seed: int, segment: int | None) -> str:
    latent = (
        f"z is drawn from q(z | s) (stochastic, torch seed {seed})"
        if sample
        else "z is the posterior mean (deterministic)"
    )
    runs = (
        f", in runs of {segment} frames, each encoded and decoded on its own (its own posterior, an empty past)"
        if segment is not None
        else ""
    )
    return (
        "**Method:** each utterance is trimmed (30 dB) and peak-normalised as in training and processed alone "
        f"(batch 1){runs}; {latent}; the speech STFT is rebuilt as sqrt(exp(y_logvar)) with the phase of the "
        "original STFT, inverted to the original length and compared with the trimmed, normalised original. "
        "Autoregressive models: **GT** = the decoder reads the true past s_1:t-1 (teacher forcing; the SE "
        'paper\'s "-True"), **GEN** = it reads its own past outputs (generation mode, in which the papers '
        f'evaluate AR models; "-Pred"); `{NO_MODE}` = not autoregressive. The oracle resynthesises from the '
        "exact |S|², a check of the pipeline."
    )


def results_table(summary: Sequence[Mapping[str, object]], statistic: str) -> str:
    """The Markdown table of the metric summaries (without the timing column)."""
    return markdown_table(
        [{k: escape_cell(v) for k, v in row.items() if k != "seconds_per_utterance"} for row in summary], statistic
    )


def _timing_table(summary: Sequence[Mapping[str, object]]) -> str:
    lines = ["| model | mode | s / utterance |", "|---|---|---|"]
    lines += [
        f"| {escape_cell(row['model'])} | {row['mode']} | {row['seconds_per_utterance']:.3f} |" for row in summary
    ]
    return "\n".join(lines) + "\n"


def _write_report(out_dir: Path, rows: list[dict], summary: list[dict[str, object]], intro: list[str]) -> None:
    """The figure (models only: the oracle's near-perfect scores would squash the axes) and the two CSV
    files, then the Markdown report that refers to them."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        if row["model"] != ORACLE_LABEL:
            groups.setdefault(row_title(row["model"], row["mode"]), []).append(row)
    write_csv(out_dir / UTTERANCES_NAME, rows, ["id", "model", "mode", "seconds", *DEFAULT_METRICS, "error"])
    write_csv(out_dir / SUMMARY_NAME, flatten_summary(summary))
    sections = [
        ("Mean (as Table 1 of the HiT-DVAE paper)", results_table(summary, "mean")),
        ("Median ± 1.57·IQR/√n (as Table II of the SE paper)", results_table(summary, "median")),
        ("Model time (inference, decoding and iSTFT per utterance, one torch thread)", _timing_table(summary)),
    ]
    if groups:
        save_figure(boxplot_figure(groups, DEFAULT_METRICS), out_dir / FIGURE_NAME)
        sections.append(("Per-utterance distributions", f"![per-utterance metrics]({FIGURE_NAME})"))
    write_markdown(out_dir / MARKDOWN_NAME, "Analysis-resynthesis", intro, sections)
