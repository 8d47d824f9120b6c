"""The demo job on a synthetic noisy/clean pair with a tiny random prior: its files, its table and
its figure."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from matplotlib.image import imread

from speechdvae.cli import build_parser
from speechdvae.demo import metrics_table, run_demo
from speechdvae.enhancement.files import EnhanceError
from speechdvae.enhancement.vem import VEMConfig
from speechdvae.errors import SpeechDVAEError
from speechdvae.evaluate.metrics import compute_metrics
from speechdvae.evaluate.report import spectrogram_figure
from speechdvae.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
SR = 16000


@pytest.fixture(scope="module")
def tiny_vae():
    torch.manual_seed(0)
    return build_model({"name": "vae", "z_dim": 4, "dense_x_z": [16]}).eval()


@pytest.fixture
def example(tmp_path):
    """3 s of a voiced-like harmonic signal in syllables, and the same plus white noise."""
    t = np.arange(3 * SR) / SR
    f0 = 140 * (1 + 0.1 * np.sin(2 * np.pi * 0.5 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    clean = (0.25 * voiced * np.clip(np.sin(2 * np.pi * 2 * t), 0, None)).astype(np.float32)
    noisy = clean + 0.05 * np.random.default_rng(0).standard_normal(len(t)).astype(np.float32)
    sf.write(tmp_path / "clean.flac", clean, SR)
    sf.write(tmp_path / "noisy.flac", noisy, SR)
    return tmp_path / "noisy.flac", tmp_path / "clean.flac"


@pytest.mark.slow
def test_demo_writes_audio_figure_and_prints_both_rows(tmp_path, example, tiny_vae, capsys):
    noisy, clean = example
    out = tmp_path / "demo"
    scores = run_demo(out, tiny_vae, noisy, clean, VEMConfig(niter=3, tol=0.0), progress=False)
    printed = capsys.readouterr().out

    enhanced = sf.info(out / "enhanced.wav")
    assert (enhanced.samplerate, enhanced.channels, enhanced.frames) == (SR, 1, sf.info(noisy).frames)
    ref = sf.read(clean, dtype="float32")[0]
    expected = {
        "noisy": compute_metrics(ref, sf.read(noisy, dtype="float32")[0], scores["noisy"]),
        "enhanced": compute_metrics(ref, sf.read(out / "enhanced.wav", dtype="float32")[0], scores["noisy"]),
    }
    for row in ("noisy", "enhanced"):
        for name, value in expected[row].items():
            assert scores[row][name] == pytest.approx(value, rel=1e-6, nan_ok=True)
    assert list(scores["noisy"]) == ["si_sdr", "pesq_wb", "pesq_nb_raw", "estoi"]
    written = json.loads((out / "metrics.json").read_text())
    assert set(written) == {"noisy", "enhanced"}
    assert all(written[row] == pytest.approx(scores[row], nan_ok=True) for row in written)

    rows = {line.split("|")[1].strip(): line for line in printed.splitlines() if line.startswith("| ")}
    assert "SI-SDR (dB) ↑" in rows["signal"] and "ESTOI ↑" in rows["signal"]
    assert f"| {scores['noisy']['si_sdr']:.1f} |" in rows["noisy"]
    assert f"| {scores['enhanced']['estoi']:.2f} |" in rows["enhanced"]

    image = imread(out / "spectrograms.png")
    assert image.ndim == 3 and image.shape[0] > image.shape[1] * 0.6


def test_spectrogram_figure_has_three_labelled_panels_on_one_scale():
    rng = np.random.default_rng(1)
    signals = {
        name: (level * rng.standard_normal(SR)).astype(np.float32)
        for name, level in (("noisy", 0.5), ("enhanced", 0.1), ("clean", 0.01))
    }
    fig = spectrogram_figure(signals, {"noisy": {"si_sdr": 1.23}})
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title(loc="left") for ax in panels] == ["noisy: SI-SDR 1.2 dB", "enhanced", "clean"]
    assert panels[-1].get_xlabel() == "time (s)" and all(ax.get_ylabel() == "frequency (kHz)" for ax in panels)
    limits = {ax.images[0].get_clim() for ax in panels}
    assert len(limits) == 1 and math.isclose(np.diff(next(iter(limits)))[0], 80.0)
    # 1 s at 16 kHz: 63 frames of 16 ms; 0 to 8 kHz
    assert panels[0].images[0].get_extent() == pytest.approx([0.0, 63 * 256 / SR, 0.0, 8.0])
    # white noise 34 dB under the loudest panel sits 34 dB lower on the shared scale
    means = [float(np.median(ax.images[0].get_array().data)) for ax in panels]
    assert means[0] - means[2] == pytest.approx(20 * np.log10(50), abs=1.0)


def test_metrics_table_shows_missing_values():
    table = metrics_table({"noisy": {"si_sdr": 3.14159, "estoi": math.nan}})
    assert table.splitlines()[2] == "| noisy | 3.1 | n/a |"


def test_missing_example_or_model_is_one_clear_error(tmp_path, tiny_vae):
    with pytest.raises(EnhanceError, match="demo example not found"):
        run_demo(tmp_path / "demo", tiny_vae, tmp_path / "no.flac", tmp_path / "none.flac", progress=False)
    args = build_parser().parse_args(
        [
            "demo",
            "-o",
            str(tmp_path / "demo"),
            "--model",
            str(tmp_path / "missing"),
            "--device",
            "cpu",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    with pytest.raises(SpeechDVAEError, match="no such checkpoint"):
        args.func(args)
    assert not (tmp_path / "demo").exists()
