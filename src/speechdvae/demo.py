"""The demo: enhance the bundled noisy example with the shipped prior, score it against its clean
reference (SI-SDR, PESQ, ESTOI before and after), and draw the three spectrograms.

The example pair (`pretrained/examples/noisy.flac` and `clean.flac`) is a mixture from the open
corpus's test set: a speaker and a noise recording never seen in training.
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from importlib import resources
from pathlib import Path

import torch

from .audio import AudioError, read_audio
from .checkpoints import CheckpointError, from_pretrained
from .enhance.files import EnhanceError, enhance_file, set_threads
from .enhance.vem import VEMConfig
from .evaluate.metrics import METRICS, compute_metrics
from .evaluate.report import format_value, save_figure, spectrogram_figure
from .io import write_json_atomic
from .models.base import DVAE

EXAMPLES = Path(str(resources.files("speechdvae") / "pretrained" / "examples"))
EXAMPLE_NOISY = EXAMPLES / "noisy.flac"
EXAMPLE_CLEAN = EXAMPLES / "clean.flac"
DEMO_METRICS = ("si_sdr", "pesq_wb", "pesq_nb_raw", "estoi")
ENHANCED_NAME = "enhanced.wav"
FIGURE_NAME = "spectrograms.png"
METRICS_NAME = "metrics.json"


def run_demo(out_dir: str | os.PathLike = "demo_output", model: str | os.PathLike | DVAE = "default",
             noisy: str | os.PathLike = EXAMPLE_NOISY, clean: str | os.PathLike = EXAMPLE_CLEAN,
             config: VEMConfig | None = None, device: str | torch.device | None = None,
             progress: bool = True) -> dict[str, dict[str, float]]:
    """Enhance `noisy` into OUT_DIR/enhanced.wav, print and return the metrics of the noisy and enhanced
    signals against `clean`, and write OUT_DIR/spectrograms.png and OUT_DIR/metrics.json."""
    out_dir, noisy, clean = Path(out_dir), Path(noisy), Path(clean)
    prior = model if isinstance(model, DVAE) else from_pretrained(model, device)
    missing = [str(p) for p in (noisy, clean) if not p.is_file()]
    if missing:
        raise EnhanceError(f"demo example not found: {', '.join(missing)}")
    enhanced = out_dir / ENHANCED_NAME
    enhance_file(noisy, enhanced, prior, config or VEMConfig(), progress=progress)
    signals = {name: read_audio(path)[0] for name, path in (("noisy", noisy), ("enhanced", enhanced),
                                                             ("clean", clean))}
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
    lines += [f"| {row} | " + " | ".join(format_value(n, values[n]) for n in names) + " |" for row, values in scores.items()]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Entry point of `speechdvae demo`."""
    from .cli import UserError

    set_threads(args.device, args.threads)
    try:
        run_demo(args.out, args.model, device=args.device, progress=not args.no_progress)
    except (EnhanceError, CheckpointError, AudioError) as err:
        raise UserError(str(err)) from err
    return 0
