"""The demo: enhance the bundled noisy example with the shipped prior, score it against its clean
reference (SI-SDR, PESQ, ESTOI before and after), and draw the three spectrograms.

The example pair (`pretrained/examples/noisy.flac` and `clean.flac`) is a mixture from the open
corpus's test set: a speaker and a noise recording never seen in training.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch

from .atomic import write_json_atomic
from .audio import read_audio
from .enhancement.enhancer import EnhancerSource, Inference, load_enhancer
from .enhancement.files import EnhanceError, enhance_file
from .evaluate.metrics import METRICS, compute_metrics
from .evaluate.report import format_value, save_figure, spectrogram_figure

EXAMPLES = Path(str(resources.files("speechdvae") / "pretrained" / "examples"))
EXAMPLE_NOISY = EXAMPLES / "noisy.flac"
EXAMPLE_CLEAN = EXAMPLES / "clean.flac"
DEMO_METRICS = ("si_sdr", "pesq_wb", "pesq_nb_raw", "estoi")
ENHANCED_NAME = "enhanced.wav"
FIGURE_NAME = "spectrograms.png"
METRICS_NAME = "metrics.json"


def run_demo(
    out_dir: str | os.PathLike = "demo_output",
    model: EnhancerSource = "default",
    noisy: str | os.PathLike = EXAMPLE_NOISY,
    clean: str | os.PathLike = EXAMPLE_CLEAN,
    inference: Inference | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Enhance `noisy` with `model` (for a prior, by the engine and settings `inference` gives it; None: its own)
    into OUT_DIR/enhanced.wav, print and return the metrics of the noisy and enhanced signals against `clean`, and
    write OUT_DIR/spectrograms.png and OUT_DIR/metrics.json."""
    out_dir, noisy, clean = Path(out_dir), Path(noisy), Path(clean)
    enhancer = load_enhancer(model, inference, device)
    missing = [str(p) for p in (noisy, clean) if not p.is_file()]
    if missing:
        raise EnhanceError(f"demo example not found: {', '.join(missing)}")
    enhanced = out_dir / ENHANCED_NAME
    enhance_file(noisy, enhanced, enhancer, progress=progress)
    signals = {name: read_audio(path)[0] for name, path in (("noisy", noisy), ("enhanced", enhanced), ("clean", clean))}
    scores = {name: compute_metrics(signals["clean"], signals[name], DEMO_METRICS) for name in ("noisy", "enhanced")}
    save_figure(spectrogram_figure(signals, scores), out_dir / FIGURE_NAME)
    write_json_atomic(out_dir / METRICS_NAME, scores)
    print(metrics_table(scores))
    print(f"\nwrote {enhanced}, {out_dir / FIGURE_NAME} and {out_dir / METRICS_NAME}")
    return scores


def metrics_table(scores: Mapping[str, Mapping[str, float]]) -> str:
    """A Markdown table: one row per signal, one column per metric (with its better direction)."""
    names = list(next(iter(scores.values())))
    header = [f"{METRICS[n].label} {'↑' if METRICS[n].higher_is_better else '↓'}" for n in names]
    lines = ["| signal | " + " | ".join(header) + " |", "|---|" + "---:|" * len(names)]
    lines += [
        f"| {row} | " + " | ".join(format_value(n, values[n]) for n in names) + " |" for row, values in scores.items()
    ]
    return "\n".join(lines)
