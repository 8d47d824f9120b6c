"""Generation evaluation: Griffin-Lim clips, the Fréchet distance, DNSMOS embeddings, speech crops and the CLI."""

from __future__ import annotations

import csv
import math
import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import linalg, stats

import speechdvae
from speechdvae import stft
from speechdvae.audio import read_audio, write_audio
from speechdvae.checkpoints import load_model
from speechdvae.cli import main
from speechdvae.data.manifest import write_manifest
from speechdvae.evaluate import dnsmos_features
from speechdvae.evaluate.generation import (
    CACHE_NAME,
    CLIP_SAMPLES,
    DRAWS_NAME,
    MARKDOWN_NAME,
    SUMMARY_NAME,
    TEST_EXACT,
    TEST_GRIFFIN_LIM,
    GaussianFit,
    GenerationError,
    GenerationSettings,
    SpeechCrops,
    frechet_distance,
    generate_clips,
    griffin_lim_waves,
    mean_ci,
)
from speechdvae.evaluate.resynthesis import prepare

pytestmark = pytest.mark.usefixtures("one_thread")

CLEAN = Path(speechdvae.__file__).parent / "pretrained" / "examples" / "clean.flac"


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The shipped clean example (3.2 s of real speech), trimmed and peak-normalised."""
    return prepare(read_audio(CLEAN)[0])


@pytest.fixture(scope="module")
def embed() -> dnsmos_features.DnsmosFeatures:
    return dnsmos_features.DnsmosFeatures(threads=1)


def windows(x: np.ndarray, starts: list[int], length: int = CLIP_SAMPLES) -> np.ndarray:
    return np.stack([x[s : s + length] for s in starts]).astype(np.float32)


def spectral_convergence(waves: np.ndarray, magnitude: torch.Tensor) -> float:
    rebuilt = stft.stft(torch.from_numpy(waves)).abs()
    return float((rebuilt - magnitude).norm() / magnitude.norm())


# ---------------------------------------------------------------------------------------------
# Griffin-Lim clips
# ---------------------------------------------------------------------------------------------


def test_griffin_lim_recovers_the_magnitude_of_speech(speech: np.ndarray) -> None:
    clips = windows(speech, [0, 20000])
    power = stft.power_spectrogram(torch.from_numpy(clips))
    errors = {
        n: spectral_convergence(griffin_lim_waves(power, GenerationSettings(gl_iterations=n), seed=0), power.sqrt())
        for n in (2, 32)
    }
    assert errors[32] < 0.6 * errors[2]
    assert errors[32] < 0.12
    waves = griffin_lim_waves(power, GenerationSettings(gl_iterations=2), seed=0)
    assert waves.shape == (2, CLIP_SAMPLES) and waves.dtype == np.float32
    assert np.array_equal(waves, griffin_lim_waves(power, GenerationSettings(gl_iterations=2), seed=0))


@pytest.mark.slow
def test_generated_clips_are_seeded_sized_and_leave_the_global_generator_alone(tiny: dict[str, Path]) -> None:
    model = load_model(tiny["SRNN"], "cpu")
    settings = GenerationSettings(gl_iterations=2)
    torch.manual_seed(5)
    expected_next = torch.rand(3)
    torch.manual_seed(5)
    first = [(waves, seconds) for waves, seconds in generate_clips(model, 66, settings, seed=1)]
    assert torch.equal(torch.rand(3), expected_next)
    assert [w.shape for w, _ in first] == [(64, CLIP_SAMPLES), (2, CLIP_SAMPLES)]
    assert all(set(seconds) == {"sampling", "griffin_lim"} for _, seconds in first)
    again = np.concatenate([w for w, _ in generate_clips(model, 66, settings, seed=1)])
    other = np.concatenate([w for w, _ in generate_clips(model, 66, settings, seed=2)])
    assert np.array_equal(np.concatenate([w for w, _ in first]), again)
    assert not np.allclose(again, other)


# ---------------------------------------------------------------------------------------------
# Fréchet distance and confidence intervals
# ---------------------------------------------------------------------------------------------


def test_frechet_distance_is_zero_between_identical_sets() -> None:
    features = np.random.default_rng(0).standard_normal((40, 6)) @ np.random.default_rng(1).standard_normal((6, 6))
    fit = GaussianFit.of(features)
    assert frechet_distance(fit, fit) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_closed_forms() -> None:
    rng = np.random.default_rng(2)
    # Diagonal covariances: |mu_a - mu_b|^2 + sum (sigma_a - sigma_b)^2.
    sd_a, sd_b = np.array([1.0, 2.0, 0.5]), np.array([3.0, 1.0, 0.5])
    mean_a, mean_b = np.array([0.0, 1.0, 2.0]), np.array([1.0, -1.0, 2.0])
    a, b = GaussianFit(mean_a, np.diag(sd_a**2), 10), GaussianFit(mean_b, np.diag(sd_b**2), 10)
    assert frechet_distance(a, b) == pytest.approx(1 + 4 + 4 + 1, rel=1e-10)
    # A full covariance and its scaled copy: (1 - c)^2 tr(Sigma).
    root = rng.standard_normal((5, 5))
    cov = root @ root.T
    assert frechet_distance(
        GaussianFit(np.zeros(5), cov, 10), GaussianFit(np.zeros(5), 4.0 * cov, 10)
    ) == pytest.approx(np.trace(cov), rel=1e-9)
    # Non-commuting covariances, one singular: the textbook formula with scipy's matrix square root.
    singular = rng.standard_normal((5, 3))
    c, d = GaussianFit(rng.standard_normal(5), singular @ singular.T, 3), GaussianFit(rng.standard_normal(5), cov, 10)
    textbook = (
        np.sum((c.mean - d.mean) ** 2)
        + np.trace(c.cov)
        + np.trace(d.cov)
        - 2 * np.trace(linalg.sqrtm(c.cov @ d.cov).real)
    )
    assert frechet_distance(c, d) == pytest.approx(textbook, rel=1e-6)
    assert frechet_distance(d, c) == pytest.approx(textbook, rel=1e-6)


def test_fits_drop_non_finite_clips_and_survive_the_cache_format() -> None:
    features = np.random.default_rng(3).standard_normal((6, 4))
    features[2, 1] = math.nan
    fit = GaussianFit.of(features)
    assert (fit.n, fit.dropped) == (5, 1)
    np.testing.assert_allclose(fit.mean, np.delete(features, 2, axis=0).mean(axis=0))
    restored = GaussianFit.from_json(fit.to_json())
    assert np.array_equal(restored.cov, fit.cov) and (restored.n, restored.dropped) == (5, 1)
    assert math.isnan(frechet_distance(GaussianFit.of(features[2:3]), fit))


def test_mean_ci_is_the_t_interval() -> None:
    mean, half = mean_ci([1.0, 2.0, 3.0, math.nan])
    assert mean == pytest.approx(2.0)
    assert half == pytest.approx(stats.t.ppf(0.975, 2) / math.sqrt(3))
    assert mean_ci([4.0])[0] == 4.0 and math.isnan(mean_ci([4.0])[1])


# ---------------------------------------------------------------------------------------------
# DNSMOS embeddings
# ---------------------------------------------------------------------------------------------


def published_embedding(waves: np.ndarray) -> np.ndarray:
    """The embedding layer read from the unmodified published graph (fixed 9.01-s input)."""
    import onnx
    import onnxruntime

    model = onnx.load_from_string(dnsmos_features.model_bytes())
    model.graph.output.append(onnx.ValueInfoProto(name=dnsmos_features.FEATURE_LAYER))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([dnsmos_features.FEATURE_LAYER], {"input_1": waves.astype(np.float32)})[0]


@pytest.mark.slow
def test_embeddings_have_a_fixed_size_and_match_the_published_network(
    speech: np.ndarray, embed: dnsmos_features.DnsmosFeatures
) -> None:
    clips = windows(speech, [0, 15000])
    features = embed(clips)
    assert features.shape == (2, dnsmos_features.FEATURE_DIM) and np.isfinite(features).all()
    assert not np.allclose(features[0], features[1])
    tiled = np.tile(clips, (1, 6))[:, : dnsmos_features.PUBLISHED_SAMPLES]
    published = published_embedding(tiled)
    np.testing.assert_allclose(embed(tiled), published, rtol=1e-5, atol=1e-6)
    for own, whole in zip(features, published):  # a clip at its own length ~ the clip tiled to 9.01 s
        assert np.corrcoef(own, whole)[0, 1] > 0.9
    with pytest.raises(ValueError, match="too short"):
        embed(clips[:, :1000])


def test_embeddings_tell_speech_from_noise_more_than_speech_from_speech(
    speech: np.ndarray, embed: dnsmos_features.DnsmosFeatures
) -> None:
    rng = np.random.default_rng(4)
    first = embed(windows(speech, [0, 4000, 8000, 12000, 16000]))
    second = embed(0.5 * windows(speech, [2000, 6000, 10000, 14000, 18000, 24000]))
    noise = embed(0.1 * rng.standard_normal((5, CLIP_SAMPLES)))
    speech_fit = GaussianFit.of(first)
    to_noise, to_speech = (frechet_distance(speech_fit, GaussianFit.of(x)) for x in (noise, second))
    assert to_noise > 5 * to_speech


def test_a_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(dnsmos_features.DnsmosUnavailable, match=re.escape("pip install 'speechdvae[dnsmos]'")):
        dnsmos_features.DnsmosFeatures()


# ---------------------------------------------------------------------------------------------
# Speech crops
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Reference and test manifests: two usable files each, plus silent, short and unreadable ones."""
    folder = tmp_path_factory.mktemp("speech")
    raw = read_audio(CLEAN)[0]
    files = {
        "a": raw,
        "b": raw[::-1].copy(),
        "c": 0.7 * np.roll(raw, 9000),
        "silent": np.zeros(40000, np.float32),
        "short": raw[:12000],
    }
    for name, x in files.items():
        write_audio(folder / f"{name}.flac", x)
    (folder / "broken.flac").write_bytes(b"not audio")
    records = {name: {"id": name, "path": str(folder / f"{name}.flac")} for name in [*files, "broken"]}
    records["short"]["duration"] = 0.75
    manifests = {"reference": ["a", "b", "silent", "short", "broken"], "test": ["c", "a", "silent"]}
    for split, names in manifests.items():
        write_manifest(folder / f"{split}.jsonl", [records[name] for name in names])
    return {split: folder / f"{split}.jsonl" for split in manifests}


def is_window(wave: np.ndarray, clip: np.ndarray) -> bool:
    """True if `clip` is exactly some window of `wave`."""
    views = np.lib.stride_tricks.sliding_window_view(wave, len(clip))
    candidates = np.flatnonzero((views[:, :16] == clip[:16]).all(axis=1))
    return any(np.array_equal(views[start], clip) for start in candidates)


def test_crops_are_windows_of_the_usable_files_and_skip_the_others(corpus: dict[str, Path]) -> None:
    crops = SpeechCrops(corpus["reference"])
    clips = np.concatenate(list(crops.crops(5, seed=0)))
    assert clips.shape == (5, CLIP_SAMPLES)
    assert sorted(crops.skipped) == ["broken", "short", "silent"]
    prepared = [prepare(read_audio(r["path"])[0]) for r in crops.records if r["id"] in ("a", "b")]
    assert all(any(is_window(wave, clip) for wave in prepared) for clip in clips)
    assert np.array_equal(clips, np.concatenate(list(SpeechCrops(corpus["reference"]).crops(5, seed=0))))
    assert not np.allclose(clips, np.concatenate(list(SpeechCrops(corpus["reference"]).crops(5, seed=1))))


def test_a_manifest_without_usable_speech_is_an_error(tmp_path: Path) -> None:
    write_audio(tmp_path / "short.flac", np.ones(8000, np.float32) * 0.1)
    write_manifest(tmp_path / "m.jsonl", [{"id": "short", "path": str(tmp_path / "short.flac")}])
    with pytest.raises(GenerationError, match="no file lasts"):
        list(SpeechCrops(tmp_path / "m.jsonl").crops(2, seed=0))


# ---------------------------------------------------------------------------------------------
# Command line, report and cache
# ---------------------------------------------------------------------------------------------


def table(markdown: str) -> dict[str, list[str]]:
    """The FD table of a report: row label -> its other cells."""
    section = markdown.split("\n## ")[1]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("|") and "---" not in line
    ]
    return {row[0]: row[1:] for row in rows[1:]}


def generate_argv(tiny: dict[str, Path], corpus: dict[str, Path], out: Path) -> list[str]:
    return [
        "eval",
        "generate",
        "--model",
        f"VAE={tiny['VAE']}",
        "--model",
        f"SRNN={tiny['SRNN']}",
        "--reference-manifest",
        str(corpus["reference"]),
        "--test-manifest",
        str(corpus["test"]),
        "--samples",
        "3",
        "--draws",
        "2",
        "--reference-samples",
        "4",
        "--gl-iterations",
        "2",
        "-o",
        str(out),
        "--no-progress",
    ]


@pytest.mark.slow
def test_cli_writes_the_report_and_resumes_from_its_cache(
    tiny: dict[str, Path], corpus: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "full"
    assert main(generate_argv(tiny, corpus, out)) == 0
    report = (out / MARKDOWN_NAME).read_text()
    assert report.splitlines()[2].startswith("Regenerate with: `speechdvae eval generate --model VAE=")
    rows = table(report)
    assert list(rows) == ["VAE", "SRNN", TEST_EXACT, TEST_GRIFFIN_LIM]
    assert all(cells[1:3] == ["2", "3"] for cells in rows.values())
    with open(out / DRAWS_NAME) as f:
        draws = list(csv.DictReader(f))
    assert len(draws) == 8 and all(float(d["fd"]) >= 0 for d in draws)
    vae = [float(d["fd"]) for d in draws if d["row"] == "VAE"]
    assert rows["VAE"][0] == f"{np.mean(vae):.2f} ± {mean_ci(vae)[1]:.2f}"
    assert (out / SUMMARY_NAME).is_file() and (out / "generation.png").stat().st_size > 0

    # Nothing is recomputed on a second run: the network would fail if called.
    calls = {"n": 0}
    real_call = dnsmos_features.DnsmosFeatures.__call__

    def refuse(self: dnsmos_features.DnsmosFeatures, waves: np.ndarray) -> np.ndarray:
        raise AssertionError("a cached fit was recomputed")

    monkeypatch.setattr(dnsmos_features.DnsmosFeatures, "__call__", refuse)
    assert main(generate_argv(tiny, corpus, out)) == 0
    assert table((out / MARKDOWN_NAME).read_text()) == rows
    assert "computed 0 and reused 9 of the 9 fits" in (out / MARKDOWN_NAME).read_text()

    # A run interrupted after a few batches resumes where it stopped and gives the same numbers.
    def interrupted(self: dnsmos_features.DnsmosFeatures, waves: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_call(self, waves)

    monkeypatch.setattr(dnsmos_features.DnsmosFeatures, "__call__", interrupted)
    resumed = tmp_path / "resumed"
    assert main(generate_argv(tiny, corpus, resumed)) == 130
    assert len((resumed / CACHE_NAME).read_text().splitlines()) == 3  # reference + the two VAE draws
    monkeypatch.setattr(dnsmos_features.DnsmosFeatures, "__call__", real_call)
    assert main(generate_argv(tiny, corpus, resumed)) == 0
    assert table((resumed / MARKDOWN_NAME).read_text()) == rows
    assert "computed 6 and reused 3 of the 9 fits" in (resumed / MARKDOWN_NAME).read_text()


def test_cache_keys_follow_the_settings(tiny: dict[str, Path], corpus: dict[str, Path], tmp_path: Path) -> None:
    from speechdvae.evaluate.generation import evaluate_generation

    small = GenerationSettings(samples=2, draws=1, reference_samples=3, gl_iterations=2)
    first = evaluate_generation({"VAE": tiny["VAE"]}, corpus["reference"], None, tmp_path, small, progress=False)
    again = evaluate_generation({"renamed": tiny["VAE"]}, corpus["reference"], None, tmp_path, small, progress=False)
    assert "computed 0 and reused 2 of the 2 fits" in (tmp_path / MARKDOWN_NAME).read_text()
    assert again[0]["model"] == "renamed" and again[0]["fd"] == first[0]["fd"]
    reseeded = evaluate_generation(
        {"VAE": tiny["VAE"]}, corpus["reference"], None, tmp_path, replace(small, seed=1), progress=False
    )
    assert "computed 2 and reused 0 of the 2 fits" in (tmp_path / MARKDOWN_NAME).read_text()
    assert reseeded[0]["fd"] != first[0]["fd"]


def test_command_line_errors_are_one_line_messages(
    tiny: dict[str, Path],
    corpus: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = generate_argv(tiny, corpus, tmp_path / "out")
    cases = {
        ("--samples", "0"): "samples must be positive",
        ("--model", f"{TEST_EXACT}={tiny['VAE']}"): "reserved",
        ("--reference-manifest", str(tmp_path / "missing.jsonl")): "manifest not found",
        ("--gl-momentum", "1.5"): "momentum",
    }
    for extra, message in cases.items():
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(base) == 2
    assert "pip install 'speechdvae[dnsmos]'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
