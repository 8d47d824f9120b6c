"""Analysis-resynthesis evaluation: the pipeline (oracle), decoding modes, the report files and the CLI."""

from __future__ import annotations

import csv
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model

from speechdvae.audio import read_audio, write_audio
from speechdvae.checkpoints import load_model
from speechdvae.cli import build_parser
from speechdvae.cli.options import parse_model_specs
from speechdvae.data.manifest import write_manifest
from speechdvae.data.sequences import preprocess
from speechdvae.errors import SpeechDVAEError
from speechdvae.evaluate import resynthesis
from speechdvae.evaluate.common import EvaluationError, evenly_spaced
from speechdvae.evaluate.metrics import si_sdr
from speechdvae.evaluate.resynthesis import (
    ORACLE_LABEL,
    ResynthesisError,
    analyse,
    evaluate_resynthesis,
    official_models,
    prepare,
    resynthesize,
    speech_variance,
)
from speechdvae.official import convert_official

OFFICIAL = Path(__file__).resolve().parents[1].parent / "shared" / "official-dvae-se"
CLIP = OFFICIAL / "reference" / "audio" / "conf-getpin.wav"


pytestmark = pytest.mark.usefixtures("one_thread")


def voiced(seconds: float, f0: float, seed: int, sr: int = 16000) -> np.ndarray:
    """A speech-like signal: harmonics of a gliding f0 under a 4 Hz syllable envelope, over a faint noise floor."""
    t = np.arange(int(seconds * sr)) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.2 * np.sin(2 * np.pi * 1.5 * t))) / sr
    harmonics = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t)) ** 2
    noise = 1e-3 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * envelope * harmonics + noise).astype(np.float32)


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """Two voiced utterances and one silent file."""
    signals = {"a": voiced(0.9, 140.0, 0), "b": voiced(0.8, 210.0, 1), "silent": np.zeros(8000, np.float32)}
    records = []
    for name, x in signals.items():
        write_audio(tmp_path / f"{name}.flac", x)
        records.append({"id": name, "path": str(tmp_path / f"{name}.flac")})
    path = tmp_path / "test.jsonl"
    write_manifest(path, records)
    return path


@pytest.fixture(scope="module")
def clip(official_dir: Path) -> np.ndarray:
    return prepare(read_audio(CLIP)[0])


def table_rows(markdown: str, heading: str) -> list[list[str]]:
    """Cells of the Markdown table in the section whose heading starts with `heading` (escaped pipes kept)."""
    section = next(part for part in markdown.split("\n## ") if part.startswith(heading))
    return [
        [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        for line in section.splitlines()
        if line.startswith("|") and "---" not in line
    ]


def test_analysis_matches_the_training_preprocessing() -> None:
    x = voiced(0.7, 180.0, 3)
    spec, power = analyse(prepare(x))
    assert torch.equal(power, torch.from_numpy(preprocess(x)))
    assert spec.dtype == torch.complex128


def test_oracle_row_is_near_perfect_on_a_real_clip(clip: np.ndarray, tmp_path: Path) -> None:
    write_manifest(tmp_path / "clip.jsonl", [{"id": "conf-getpin", "path": str(CLIP)}])
    summary = evaluate_resynthesis({}, tmp_path / "clip.jsonl", tmp_path / "out", workers=1, progress=False)
    (oracle,) = summary
    assert oracle["model"] == ORACLE_LABEL
    assert oracle["si_sdr"].mean > 60.0
    assert oracle["pesq_nb_raw"].mean > 4.4 and oracle["estoi"].mean > 0.99
    assert not (tmp_path / "out" / resynthesis.FIGURE_NAME).exists()  # no model, no distribution figure


def test_feedback_matters_for_srnn_only_and_lengths_are_kept(tiny: dict[str, Path]) -> None:
    x = prepare(voiced(0.77, 150.0, 4))  # not a whole number of hops
    vae, srnn = load_model(tiny["VAE"], "cpu"), load_model(tiny["SRNN"], "cpu")
    outputs = {
        (name, fb): resynthesize(model, x, fb) for name, model in (("vae", vae), ("srnn", srnn)) for fb in (0.0, 1.0)
    }
    assert all(len(y) == len(x) and np.all(np.isfinite(y)) for y in outputs.values())
    np.testing.assert_array_equal(outputs["vae", 0.0], outputs["vae", 1.0])
    assert np.max(np.abs(outputs["srnn", 0.0] - outputs["srnn", 1.0])) > 1e-4
    # posterior mean: deterministic; sampling z changes the result
    np.testing.assert_array_equal(resynthesize(srnn, x, 1.0), outputs["srnn", 1.0])
    torch.manual_seed(0)
    assert not np.allclose(resynthesize(vae, x, 0.0, sample=True), outputs["vae", 0.0])


def test_evaluation_rows_files_and_a_silent_utterance(tiny: dict[str, Path], manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "report"
    with pytest.warns(UserWarning, match="silent"):
        summary = evaluate_resynthesis(tiny, manifest, out, workers=1, progress=False)
    assert [(row["model"], row["mode"]) for row in summary] == [
        (ORACLE_LABEL, "-"),
        ("VAE", "-"),
        ("SRNN", "GT"),
        ("SRNN", "GEN"),
    ]
    for row in summary:
        assert row["n"] == 3 and row["si_sdr"].n_nan == 1 and row["si_sdr"].n_valid == 2
        assert row["seconds_per_utterance"] > 0
    names = {p.name for p in out.iterdir()}
    assert names == {"resynthesis.md", "resynthesis.csv", "resynthesis_utterances.csv", "resynthesis.png"}

    with open(out / "resynthesis_utterances.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12
    silent = [r for r in rows if r["id"] == "silent"]
    assert len(silent) == 4 and all(math.isnan(float(r["si_sdr"])) and "silent" in r["error"] for r in silent)
    # a per-utterance value equals an independent resynthesis of the same utterance
    x = prepare(read_audio(manifest.parent / "a.flac")[0])
    expected = si_sdr(x, resynthesize(load_model(tiny["SRNN"], "cpu"), x, 1.0))
    (row,) = [r for r in rows if (r["id"], r["model"], r["mode"]) == ("a", "SRNN", "GEN")]
    assert float(row["si_sdr"]) == pytest.approx(expected, abs=1e-6)
    assert float(row["seconds"]) == pytest.approx(len(x) / 16000)

    text = (out / "resynthesis.md").read_text()
    assert "speechdvae eval resynth --model VAE=" in text and f"--manifest {manifest}" in text
    assert "3 of 3 utterances" in text and "1 unusable" in text
    assert "PESQ-NB (raw P.862)" in text and "P.862.2" in text and "posterior mean (deterministic)" in text
    for heading in ("Mean", "Median"):
        cells = table_rows(text, heading)
        assert len(cells) == 5 and {len(c) for c in cells} == {9}  # header + 4 rows, no broken cell
        assert cells[1][:2] == ["oracle (exact \\|S\\|)", "-"] and cells[4][:3] == ["SRNN", "GEN", "3"]
    assert "(1 NaN)" in table_rows(text, "Mean")[2][4]


def test_modes_select_the_rows_of_autoregressive_models(tiny: dict[str, Path], manifest: Path, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = evaluate_resynthesis(
            tiny, manifest, tmp_path, limit=1, modes=["GEN"], oracle=False, workers=1, progress=False
        )
    assert [(row["model"], row["mode"], row["n"]) for row in summary] == [("VAE", "-", 1), ("SRNN", "GEN", 1)]
    with pytest.raises(ResynthesisError, match="modes"):
        evaluate_resynthesis(tiny, manifest, tmp_path, modes=["TF"], progress=False)


def test_segments_are_decoded_each_on_its_own(tiny: dict[str, Path], manifest: Path, tmp_path: Path) -> None:
    _, power = analyse(prepare(voiced(1.5, 150.0, 5)))
    s, frames = power[None], power.shape[0]
    vae, srnn, light = load_model(tiny["VAE"], "cpu"), load_model(tiny["SRNN"], "cpu"), tiny_model("transformer")
    # a frame-wise model gives the same spectra however the utterance is cut
    torch.testing.assert_close(speech_variance(vae, s, 0.0, segment=20), speech_variance(vae, s, 0.0))
    for model in (srnn, light):  # one run as long as the utterance is the utterance
        assert torch.equal(speech_variance(model, s, 1.0, segment=frames), speech_variance(model, s, 1.0))
    # shorter runs: each decoded as if it were an utterance of its own
    runs = speech_variance(light, s, 1.0, segment=40)
    assert runs.shape == (1, frames, 513)
    torch.testing.assert_close(runs[:, 40:80], speech_variance(light, s[:, 40:80], 1.0))
    assert not torch.allclose(runs, speech_variance(light, s, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluate_resynthesis(tiny, manifest, tmp_path, limit=1, oracle=False, segment=10, workers=1, progress=False)
    report = (tmp_path / resynthesis.MARKDOWN_NAME).read_text()
    assert "--segment 10" in report and "in runs of 10 frames" in report
    with pytest.raises(ResynthesisError, match="segment"):
        evaluate_resynthesis(tiny, manifest, tmp_path, segment=0, progress=False)


def test_a_shipped_prior_is_named_as_enhancement_names_it(manifest: Path, tmp_path: Path) -> None:
    summary = evaluate_resynthesis({"fast": "fast"}, manifest, tmp_path, limit=1, oracle=False, progress=False)
    assert [(row["model"], row["n"]) for row in summary] == [("fast", 1)]
    with pytest.raises(SpeechDVAEError, match="unknown pretrained model 'fastest'"):
        evaluate_resynthesis({"x": "fastest"}, manifest, tmp_path, limit=1, oracle=False, progress=False)


def test_limit_takes_an_evenly_spaced_subset_by_id() -> None:
    records = [{"id": f"u{i:02d}"} for i in (7, 2, 9, 0, 4, 1, 8, 3, 6, 5)]
    assert [r["id"] for r in evenly_spaced(records, 3)] == ["u00", "u03", "u06"]
    assert [r["id"] for r in evenly_spaced(records, 4)] == ["u00", "u02", "u05", "u07"]
    assert [r["id"] for r in evenly_spaced(records, 50)] == [f"u{i:02d}" for i in range(10)]
    with pytest.raises(EvaluationError):
        evenly_spaced(records, 0)


def test_official_vae_resynthesises_a_real_clip(clip: np.ndarray, tmp_path: Path) -> None:
    model = load_model(convert_official(OFFICIAL / "trained_models" / "wsj_vae", tmp_path / "wsj-vae"), "cpu")
    value = si_sdr(clip, resynthesize(model, clip, 0.0))
    assert 0.0 < value < 30.0


def test_official_models_are_labelled_and_imported_once(tmp_path: Path, official_dir: Path) -> None:
    labels = list(official_models(OFFICIAL, tmp_path / "official"))
    assert labels == [
        f"official {corpus} {model}" for corpus in ("WSJ0", "VoiceBank") for model in ("VAE", "DKF", "RVAE", "SRNN-SS")
    ]
    stamp = (tmp_path / "official" / "official-wsj-vae" / "model.safetensors").stat().st_mtime_ns
    assert list(official_models(tmp_path / "missing", tmp_path / "official")) == labels  # reused, not imported
    assert (tmp_path / "official" / "official-wsj-vae" / "model.safetensors").stat().st_mtime_ns == stamp


def test_command_line_errors_are_user_errors(tiny: dict[str, Path], manifest: Path, tmp_path: Path) -> None:
    parser = build_parser()
    cases = {
        ("--model", f"x={tmp_path / 'nowhere'}"): "nowhere",
        ("--model", f"a={tiny['VAE']}", "--model", f"a={tiny['SRNN']}"): "two models",
        (): "at least one",
    }
    for extra, message in cases.items():
        args = parser.parse_args(["eval", "resynth", *extra, "--manifest", str(manifest), "-o", str(tmp_path / "out")])
        with pytest.raises(SpeechDVAEError, match=message):
            args.func(args)
    assert not (tmp_path / "out").exists()
    assert parse_model_specs([str(tiny["VAE"])]) == {"VAE": str(tiny["VAE"])}
