"""Report files shared by the evaluations: Markdown documents, CSV tables and PNG figures, all written atomically."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path, write_text_atomic
from ..audio import SAMPLE_RATE
from ..errors import needs_extra
from ..stft import HOP_LENGTH, power_spectrogram
from .metrics import METRICS, MetricSummary

with needs_extra("eval", "Drawing report figures (matplotlib)"):
    from matplotlib.figure import Figure

SUMMARY_FIELDS = ("mean", "median", "ci", "n_valid", "n_nan")
DYNAMIC_RANGE_DB = 80.0  # colour range of spectrogram pictures


def markdown_document(title: str, intro: Sequence[str], sections: Sequence[tuple[str, str]] = ()) -> str:
    """`# title`, the intro paragraphs, then a `## heading` and its body (e.g. a table) per section."""
    blocks = [f"# {title}", *intro]
    for heading, body in sections:
        blocks += [f"## {heading}", body.rstrip("\n")]
    return "\n\n".join(blocks) + "\n"


def escape_cell(value: object) -> object:
    """A string made safe inside a Markdown table cell (its "|" escaped); other values unchanged."""
    return value.replace("|", "\\|") if isinstance(value, str) else value


def write_markdown(
    path: str | os.PathLike, title: str, intro: Sequence[str], sections: Sequence[tuple[str, str]] = ()
) -> Path:
    """Write `markdown_document(title, intro, sections)` to `path` atomically."""
    write_text_atomic(path, markdown_document(title, intro, sections))
    return Path(path)


def write_csv(
    path: str | os.PathLike, rows: Sequence[Mapping[str, object]], fieldnames: Sequence[str] | None = None
) -> Path:
    """Rows as a CSV file with a header, written atomically.

    Columns are `fieldnames`, or every key in order of first appearance; a missing cell is empty.
    """
    if fieldnames is None:
        fieldnames = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def flatten_summary(summary: Sequence[Mapping[str, object]]) -> list[dict[str, object]]:
    """`summarize_metrics` rows as plain values: each MetricSummary becomes <metric>_mean, _median, _ci,
    _n_valid and _n_nan columns, ready for `write_csv`."""
    flat = []
    for row in summary:
        out: dict[str, object] = {}
        for key, value in row.items():
            if isinstance(value, MetricSummary):
                out.update({f"{key}_{field}": getattr(value, field) for field in SUMMARY_FIELDS})
            else:
                out[key] = value
        flat.append(out)
    return flat


def boxplot_figure(
    groups: Mapping[str, Sequence[Mapping[str, object]]], metrics: Sequence[str], columns: int = 3
) -> Figure:
    """Horizontal box plots of per-item metric values, one panel per metric and one box per group.

    Only finite values are drawn; a group without any shows an empty row. Needs at least one group.
    """
    if not groups:
        raise ValueError("boxplot_figure needs at least one group")
    labels = list(groups)
    rows = math.ceil(len(metrics) / columns)
    fig = Figure(figsize=(4.0 * columns + 2.0, rows * (0.8 + 0.35 * len(labels))), layout="constrained")
    axes = fig.subplots(rows, columns, sharey=True, squeeze=False).ravel()
    for ax, name in zip(axes, metrics):
        data = [_finite(row.get(name) for row in groups[label]) for label in labels]
        ax.boxplot(data, orientation="horizontal", tick_labels=labels, showfliers=True)
        info = METRICS.get(name)
        ax.set_title(f"{info.label} {'↑' if info.higher_is_better else '↓'}" if info else name)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()  # first group on top, as in the tables
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    return fig


def format_value(name: str, value: float) -> str:
    """A score with its metric's digits, or n/a."""
    return "n/a" if math.isnan(value) else f"{value:.{METRICS[name].digits}f}"


def spectrogram_figure(
    signals: Mapping[str, np.ndarray], scores: Mapping[str, Mapping[str, float]], columns: int = 1
) -> Figure:
    """Power spectrograms (dB, one colour scale spanning 80 dB) of 16 kHz signals in a grid of `columns`,
    filled row by row, titled with their scores where given."""
    spectra = {
        name: 10 * np.log10(power_spectrogram(torch.from_numpy(x)).numpy().T + 1e-12) for name, x in signals.items()
    }
    top = max(float(s.max()) for s in spectra.values())
    columns = max(1, min(columns, len(spectra)))
    rows = math.ceil(len(spectra) / columns)
    fig = Figure(figsize=(9.0 if columns == 1 else 4.6 * columns, 2.4 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    for ax, (name, spec) in zip(axes, spectra.items()):
        extent = (0.0, spec.shape[1] * HOP_LENGTH / SAMPLE_RATE, 0.0, SAMPLE_RATE / 2000)
        image = ax.imshow(
            spec, origin="lower", aspect="auto", extent=extent, cmap="magma", vmin=top - DYNAMIC_RANGE_DB, vmax=top
        )
        ax.set_title(_panel_title(name, scores.get(name)), loc="left", fontsize="medium" if columns == 1 else "small")
    for ax in axes[len(spectra) :]:
        ax.set_axis_off()
    for ax in axes[::columns]:
        ax.set_ylabel("frequency (kHz)")
    for ax in axes[len(spectra) - columns : len(spectra)]:  # the lowest panel of each column
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("time (s)")
    fig.colorbar(image, ax=list(axes), label="power (dB)", shrink=0.9 if rows < 4 else 0.5)
    return fig


def _panel_title(name: str, scores: Mapping[str, float] | None) -> str:
    if not scores:
        return name
    parts = [
        f"{METRICS[n].label.split(' (')[0]} {format_value(n, v)}{' dB' * ('(dB)' in METRICS[n].label)}"
        for n, v in scores.items()
    ]
    return f"{name}: " + ", ".join(parts)


def _finite(values: object) -> np.ndarray:
    x = np.asarray([math.nan if v is None else float(v) for v in values], dtype=np.float64)  # type: ignore[union-attr]
    return x[np.isfinite(x)]


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 120, **options: object) -> Path:
    """Save a matplotlib figure (format from the suffix, e.g. .png) atomically; `options` go to `savefig`."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, **options)
    return Path(path)
