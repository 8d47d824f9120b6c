"""Objective speech metrics (RMSE, SI-SDR, PESQ, ESTOI), batched evaluation and paper-style summaries.

Every metric takes two 1-D signals at 16 kHz, reference first and estimate second. Signals of
different lengths are truncated to the shorter one (an iSTFT output is often a few samples
shorter or longer than its input). `compute_metrics` and `evaluate_pairs` never raise on bad
content: a metric that is undefined for a pair (silence, clip too short, NaN/inf samples) is NaN
and a `MetricWarning` names the metric and the reason. The single-metric functions raise
`MetricError` instead, so a caller who wants strictness gets it.

PESQ is reported three ways, and tables always say which: wideband MOS-LQO (ITU-T P.862.2),
narrowband MOS-LQO (P.862.1 mapping, what the `pesq` package returns) and narrowband raw P.862
MOS (the scale of the DVAE papers, obtained by inverting the P.862.1 mapping).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from ..audio import SAMPLE_RATE, read_audio
from ..errors import SpeechDVAEError, needs_extra

with needs_extra("eval", "Scoring speech (PESQ, ESTOI)"):
    import pesq as pesq_package
    from pystoi import stoi


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is shown in tables: its label, the better direction and the decimals the papers use."""

    label: str
    higher_is_better: bool
    digits: int


METRICS: dict[str, MetricInfo] = {
    "rmse": MetricInfo("RMSE", higher_is_better=False, digits=3),
    "si_sdr": MetricInfo("SI-SDR (dB)", higher_is_better=True, digits=1),
    "pesq_nb_raw": MetricInfo("PESQ-NB (raw P.862)", higher_is_better=True, digits=2),
    "pesq_nb": MetricInfo("PESQ-NB (MOS-LQO)", higher_is_better=True, digits=2),
    "pesq_wb": MetricInfo("PESQ-WB (MOS-LQO)", higher_is_better=True, digits=2),
    "estoi": MetricInfo("ESTOI", higher_is_better=True, digits=2),
}
DEFAULT_METRICS: tuple[str, ...] = tuple(METRICS)

# SI-SDR is capped at the float64 resolution (about ±156.5 dB) so identical or orthogonal
# signals give a large finite number rather than ±inf.
_SI_SDR_RATIO_FLOOR = float(np.finfo(np.float64).eps)
# P.862.1: MOS-LQO = 0.999 + 4 / (1 + exp(-A * raw + B)) for narrowband raw P.862 scores.
_P862_1_A = 1.4945
_P862_1_B = 4.6607
PESQ_RAW_RANGE: tuple[float, float] = (-0.5, 4.5)
# pystoi returns this value (with a RuntimeWarning) when fewer than 30 non-silent frames remain.
_PYSTOI_TOO_SHORT = 1e-5
_CI_FACTOR = 1.57

Signal = np.ndarray
PathLike = str | os.PathLike
Pair = tuple[Signal, Signal] | tuple[PathLike, PathLike]


class MetricError(SpeechDVAEError, ValueError):
    """A signal pair on which a metric is undefined (silent, too short, non-finite, not 1-D)."""


class MetricWarning(UserWarning):
    """A metric came out NaN; the message names the metric(s) and the reason."""


# ---------------------------------------------------------------------------------------------
# Single metrics
# ---------------------------------------------------------------------------------------------


def _aligned(ref: Signal, est: Signal) -> tuple[np.ndarray, np.ndarray]:
    """Both signals as float64, truncated to the shorter length; MetricError if either is unusable."""
    ref = np.asarray(ref, dtype=np.float64)
    est = np.asarray(est, dtype=np.float64)
    if ref.ndim != 1 or est.ndim != 1:
        raise MetricError(f"signals must be 1-D, got shapes {ref.shape} and {est.shape}")
    n = min(len(ref), len(est))
    ref, est = ref[:n], est[:n]
    for name, x in (("reference", ref), ("estimate", est)):
        if not np.all(np.isfinite(x)):
            raise MetricError(f"the {name} contains NaN or infinite samples")
        if not np.any(x):
            raise MetricError(f"the {name} is silent (empty or all zeros)")
    return ref, est


def rmse(ref: Signal, est: Signal) -> float:
    """Waveform RMSE after scaling the estimate by its least-squares gain <est, ref>/<est, est>.

    This is the RMSE of the original DVAE code: alpha * est is the best approximation of ref.
    """
    ref, est = _aligned(ref, est)
    alpha = np.dot(est, ref) / np.dot(est, est)
    return float(np.sqrt(np.mean((ref - alpha * est) ** 2)))


def si_sdr(ref: Signal, est: Signal) -> float:
    """Scale-invariant SDR in dB of zero-mean signals (Le Roux et al. 2019), capped at about ±156 dB."""
    ref, est = _aligned(ref, est)
    ref = ref - ref.mean()
    est = est - est.mean()
    ref_energy = np.dot(ref, ref)
    if ref_energy == 0.0 or not np.any(est):
        raise MetricError("a constant signal has no content once its mean is removed")
    target = (np.dot(est, ref) / ref_energy) * ref
    residual = est - target
    target_energy, residual_energy = np.dot(target, target), np.dot(residual, residual)
    ratio = target_energy / residual_energy if residual_energy > 0 else math.inf
    return float(10.0 * np.log10(np.clip(ratio, _SI_SDR_RATIO_FLOOR, 1.0 / _SI_SDR_RATIO_FLOOR)))


def _pesq(ref: Signal, est: Signal, mode: str) -> float:
    """PESQ MOS-LQO from the `pesq` package at 16 kHz; its errors become MetricError."""
    ref, est = _aligned(ref, est)
    try:
        return float(pesq_package.pesq(SAMPLE_RATE, ref, est, mode))
    except (pesq_package.PesqError, ValueError) as err:
        reason = err.args[0].decode() if err.args and isinstance(err.args[0], bytes) else str(err)
        raise MetricError(f"PESQ failed: {reason}") from err


def pesq_wb(ref: Signal, est: Signal) -> float:
    """Wideband PESQ, MOS-LQO (P.862.2), in about [1.04, 4.64]."""
    return _pesq(ref, est, "wb")


def pesq_nb(ref: Signal, est: Signal) -> float:
    """Narrowband PESQ, MOS-LQO (P.862.1 mapping, as the `pesq` package returns it), in about [1.02, 4.55]."""
    return _pesq(ref, est, "nb")


def raw_to_nb_mos_lqo(raw: float) -> float:
    """The P.862.1 mapping from a narrowband raw P.862 score to MOS-LQO."""
    return 0.999 + 4.0 / (1.0 + math.exp(-_P862_1_A * raw + _P862_1_B))


def nb_mos_lqo_to_raw(mos_lqo: float) -> float:
    """Invert the P.862.1 mapping: narrowband MOS-LQO -> raw P.862 score, clamped to [-0.5, 4.5].

    The mapping's asymptotes are 0.999 and 4.999; values beyond the images of the P.862 range
    (including float rounding at the top, where identical signals land) give the range's bounds.
    """
    if math.isnan(mos_lqo):
        return math.nan
    low, high = PESQ_RAW_RANGE
    if mos_lqo <= raw_to_nb_mos_lqo(low):
        return low
    if mos_lqo >= raw_to_nb_mos_lqo(high):
        return high
    return (_P862_1_B - math.log(4.0 / (mos_lqo - 0.999) - 1.0)) / _P862_1_A


def pesq_nb_raw(ref: Signal, est: Signal) -> float:
    """Narrowband raw P.862 MOS (the PESQ scale of the DVAE papers), in [-0.5, 4.5]."""
    return nb_mos_lqo_to_raw(pesq_nb(ref, est))


def estoi(ref: Signal, est: Signal) -> float:
    """Extended STOI (pystoi, extended=True); MetricError if under 30 non-silent frames (about 0.4 s) remain."""
    ref, est = _aligned(ref, est)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Not enough STFT frames", category=RuntimeWarning)
        try:
            value = float(stoi(ref, est, SAMPLE_RATE, extended=True))
        except (ValueError, IndexError) as err:
            raise MetricError(f"ESTOI failed: {err}") from err
    if value == _PYSTOI_TOO_SHORT:
        raise MetricError("fewer than 30 non-silent frames (about 0.4 s of speech) for ESTOI")
    return value


# Metrics computed from the signals; the others derive from one of these.
_SIGNAL_METRICS = {"rmse": rmse, "si_sdr": si_sdr, "pesq_wb": pesq_wb, "pesq_nb": pesq_nb, "estoi": estoi}
_DERIVED_METRICS = {"pesq_nb_raw": ("pesq_nb", nb_mos_lqo_to_raw)}


def _validated_names(metrics: Iterable[str]) -> tuple[str, ...]:
    names = tuple(metrics)
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    return names


def _source(name: str) -> str:
    return _DERIVED_METRICS[name][0] if name in _DERIVED_METRICS else name


def _warn_nan(names: Iterable[str], reason: object) -> None:
    warnings.warn(f"{', '.join(names)}: {reason}; returning NaN", MetricWarning, stacklevel=3)


def compute_metrics(ref: Signal, est: Signal, metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, float]:
    """Every requested metric of one pair, in the order asked; NaN plus a MetricWarning where undefined.

    Raises only for an unknown metric name. NB MOS-LQO is computed once when both NB forms are asked.
    """
    names = _validated_names(metrics)
    try:
        _aligned(ref, est)
    except MetricError as err:
        _warn_nan(names, err)
        return dict.fromkeys(names, math.nan)
    values: dict[str, float] = {}
    for source in dict.fromkeys(_source(name) for name in names):
        try:
            values[source] = _SIGNAL_METRICS[source](ref, est)
        except MetricError as err:
            _warn_nan([name for name in names if _source(name) == source], err)
            values[source] = math.nan
    return {
        name: _DERIVED_METRICS[name][1](values[_source(name)]) if name in _DERIVED_METRICS else values[name]
        for name in names
    }


# ---------------------------------------------------------------------------------------------
# Batched evaluation
# ---------------------------------------------------------------------------------------------


def _as_signal(item: Signal | PathLike) -> np.ndarray:
    """An array as is; a path read as mono float32 at 16 kHz."""
    if isinstance(item, (str, os.PathLike)):
        return read_audio(item)[0]
    return np.asarray(item)


def _evaluate_one(pair: Pair, names: tuple[str, ...]) -> tuple[dict[str, float], list[tuple[type[Warning], str]]]:
    """Metrics of one pair plus the warnings raised meanwhile (so a worker process can hand them back).

    Any exception (unreadable file, unexpected failure) gives a NaN row and a warning: one bad
    pair must not stop a batch of hundreds.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            ref, est = (_as_signal(item) for item in pair)
            row = compute_metrics(ref, est, names)
        except Exception as err:  # noqa: BLE001 - reported as a warning and counted as NaN
            _warn_nan(names, f"{type(err).__name__}: {err}")
            row = dict.fromkeys(names, math.nan)
    return row, [(w.category, str(w.message)) for w in caught]


def _pair_label(index: int, pair: Pair) -> str:
    est = pair[1]
    return f"pair {index} ({os.fspath(est)})" if isinstance(est, (str, os.PathLike)) else f"pair {index}"


def _result_or_nan(future: Future, names: tuple[str, ...]) -> tuple[dict[str, float], list[tuple[type[Warning], str]]]:
    """A worker's result; a crashed worker (e.g. a broken pool) gives a NaN row and a warning."""
    try:
        return future.result()
    except Exception as err:  # noqa: BLE001 - the batch goes on; the pair is counted as NaN
        message = f"{', '.join(names)}: worker failed ({type(err).__name__}: {err}); returning NaN"
        return dict.fromkeys(names, math.nan), [(MetricWarning, message)]


def evaluate_pairs(
    pairs: Sequence[Pair], metrics: Iterable[str] = DEFAULT_METRICS, workers: int | None = None, progress: bool = False
) -> list[dict[str, float]]:
    """`compute_metrics` over many (reference, estimate) pairs of arrays or file paths, in a process pool.

    Rows come back in input order; a failing pair gives a NaN row and never stops the batch.
    Warnings from the workers are re-issued here, prefixed with the pair's index (and estimate
    path). `workers` defaults to os.cpu_count(); 1 (or a single pair) runs in this process.
    """
    names = _validated_names(metrics)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers <= 1 or len(pairs) <= 1:
        outcomes = [_evaluate_one(pair, names) for pair in tqdm(pairs, disable=not progress, unit="pair")]
    else:
        with ProcessPoolExecutor(max_workers=min(workers, len(pairs))) as pool:
            futures = [pool.submit(_evaluate_one, pair, names) for pair in pairs]
            for _ in tqdm(as_completed(futures), total=len(futures), disable=not progress, unit="pair"):
                pass
            outcomes = [_result_or_nan(future, names) for future in futures]
    rows = []
    for index, (pair, (row, caught)) in enumerate(zip(pairs, outcomes)):
        for category, message in caught:
            warnings.warn(f"{_pair_label(index, pair)}: {message}", category, stacklevel=2)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Statistics and tables
# ---------------------------------------------------------------------------------------------


def median_ci(values: Iterable[float]) -> tuple[float, float]:
    """Median of the finite values and the half-width 1.57·IQR/√n of its confidence interval (SE paper).

    Quartiles use linear interpolation (numpy's default, as the official code). NaN, NaN if no value is finite.
    """
    x = np.asarray(list(values), dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return math.nan, math.nan
    q25, median, q75 = np.quantile(x, [0.25, 0.5, 0.75])
    return float(median), float(_CI_FACTOR * (q75 - q25) / math.sqrt(x.size))


@dataclass(frozen=True)
class MetricSummary:
    """Mean, median ± CI half-width, and the counts of finite and non-finite values of one metric."""

    mean: float
    median: float
    ci: float
    n_valid: int
    n_nan: int

    @classmethod
    def of(cls, values: Iterable[float]) -> MetricSummary:
        x = np.asarray(list(values), dtype=np.float64)
        finite = x[np.isfinite(x)]
        median, ci = median_ci(finite)
        mean = float(finite.mean()) if finite.size else math.nan
        return cls(mean, median, ci, int(finite.size), int(x.size - finite.size))


def summarize_metrics(
    rows: Sequence[Mapping[str, object]],
    group_by: str | Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
) -> list[dict[str, object]]:
    """One summary row per group, groups in order of first appearance.

    Each row holds the group's key values, `n` (rows in the group) and a MetricSummary per metric.
    `metrics` defaults to the known metrics present in `rows`; a row lacking a metric counts as NaN,
    so any column of numbers (e.g. an SI-SDR improvement) can be summarised too.
    """
    keys = (group_by,) if isinstance(group_by, str) else tuple(group_by or ())
    if metrics is None:
        metrics = [name for name in METRICS if any(name in row for row in rows)]
    groups: dict[tuple, list[Mapping[str, object]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(key) for key in keys), []).append(row)
    summary = []
    for key_values, members in groups.items():
        out: dict[str, object] = dict(zip(keys, key_values))
        out["n"] = len(members)
        for name in metrics:
            out[name] = MetricSummary.of(_as_float(row.get(name)) for row in members)
        summary.append(out)
    return summary


def _as_float(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]


def _header(name: str) -> str:
    info = METRICS.get(name)
    if info is None:
        return name
    return f"{info.label} {'↑' if info.higher_is_better else '↓'}"


def _cell(summary: MetricSummary, statistic: str, digits: int) -> str:
    if summary.n_valid == 0:
        text = "NaN"
    elif statistic == "median":
        text = f"{summary.median:.{digits}f} ± {summary.ci:.{digits}f}"
    else:
        text = f"{summary.mean:.{digits}f}"
    return f"{text} ({summary.n_nan} NaN)" if summary.n_nan and summary.n_valid else text


def markdown_table(summary: Sequence[Mapping[str, object]], statistic: str = "median") -> str:
    """A Markdown table of `summarize_metrics` rows: group columns, n, then one column per metric.

    `statistic` is "median" (median ± 1.57·IQR/√n, as Table II of the SE paper) or "mean" (as
    Table 1 of the HiT-DVAE paper). Headers carry the metric labels of METRICS, so the three
    PESQ variants are always named; a cell notes how many values were NaN.
    """
    if statistic not in ("median", "mean"):
        raise ValueError(f"statistic must be 'median' or 'mean', got {statistic!r}")
    if not summary:
        return ""
    first = summary[0]
    plain = [key for key, value in first.items() if not isinstance(value, MetricSummary)]
    metric_names = [key for key, value in first.items() if isinstance(value, MetricSummary)]
    lines = [
        "| " + " | ".join(plain + [_header(name) for name in metric_names]) + " |",
        "|" + "---|" * (len(plain) + len(metric_names)),
    ]
    for row in summary:
        cells = [str(row[key]) for key in plain]
        cells += [
            _cell(row[name], statistic, METRICS[name].digits if name in METRICS else 2)  # type: ignore[arg-type]
            for name in metric_names
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def metrics_with_reasons(
    pairs: list[tuple[np.ndarray, np.ndarray]], labels: list[str], workers: int | None
) -> tuple[list[dict[str, float]], list[str]]:
    """`evaluate_pairs`, with each NaN reason attached to its pair and re-warned with the pair's label."""
    reasons = [""] * len(pairs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rows = evaluate_pairs(pairs, workers=workers)
    for warning in caught:
        message = str(warning.message)
        match = re.match(r"pair (\d+)[^:]*: ", message)
        if match:
            index = int(match.group(1))
            message = message[match.end() :]
            reasons[index] = f"{reasons[index]}; {message}" if reasons[index] else message
            message = f"{labels[index]}: {message}"
        warnings.warn(message, warning.category, stacklevel=3)
    return rows, reasons
