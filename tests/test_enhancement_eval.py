"""Speech-enhancement evaluation: rows and files, the pipeline against a direct VEM run, groupings, resuming,
batch independence, unusable mixtures, the balanced --limit and the command line."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from speechdvae import stft
from speechdvae.audio import read_audio, write_audio
from speechdvae.checkpoints import load_model
from speechdvae.cli import build_parser
from speechdvae.cli.evaluate import enhance_command
from speechdvae.data.manifest import write_manifest
from speechdvae.enhancement import enhancer
from speechdvae.enhancement.enhancer import InferenceRequest
from speechdvae.enhancement.langevin import LangevinConfig
from speechdvae.enhancement.vem import VEMConfig, enhance_spectrogram
from speechdvae.errors import SpeechDVAEError
from speechdvae.evaluate.common import EvaluationError, model_fingerprint
from speechdvae.evaluate.enhancement import (
    CACHE_NAME,
    MARKDOWN_NAME,
    NOISE_FIGURE_NAME,
    NOISY_LABEL,
    SETTINGS_NAME,
    SNR_FIGURE_NAME,
    SUMMARY_NAME,
    UTTERANCES_NAME,
    EnhancementError,
    audio_path,
    evaluate_enhancement,
    improvement_stats,
    result_key,
    snapshot_label,
)
from speechdvae.evaluate.metrics import estoi, si_sdr
from speechdvae.evaluate.mixtures import Mixture, balanced_subset, identify, read_mixtures, share_out

CONFIG = VEMConfig(niter=3, seed=7)
# (id, noise type, SNR, seconds): two noise types × two SNRs, lengths 0.5-1 s.
MIXTURES = [("m1", "hiss", -5.0, 0.9), ("m2", "hum", -5.0, 0.6), ("m3", "hiss", 5.0, 0.5), ("m4", "hum", 5.0, 1.0)]


pytestmark = pytest.mark.usefixtures("one_thread")


def speech_like(seconds: float, f0: float, sr: int = 16000) -> np.ndarray:
    """Harmonics of f0 under a 3 Hz syllable envelope."""
    t = np.arange(int(seconds * sr)) / sr
    harmonics = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in range(1, 15))
    return (0.3 * np.sin(np.pi * 3 * t) ** 2 * harmonics).astype(np.float32)


def noise(kind: str, n: int, seed: int, sr: int = 16000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "hiss":
        return rng.standard_normal(n)
    t = np.arange(n) / sr
    return sum(np.sin(2 * np.pi * 100 * k * t + k) for k in range(1, 6)) + 0.1 * rng.standard_normal(n)


def write_mixtures(folder: Path, specs=MIXTURES, extra: tuple[dict, ...] = ()) -> Path:
    """Noisy/clean FLAC pairs at power SNRs and their manifest."""
    records = []
    for i, (name, kind, snr, seconds) in enumerate(specs):
        clean = speech_like(seconds, 120.0 + 30 * i)
        added = noise(kind, len(clean), i)
        added *= np.sqrt(np.mean(clean**2) / np.mean(added**2) / 10 ** (snr / 10))
        write_audio(folder / f"{name}_clean.flac", clean)
        write_audio(folder / f"{name}.flac", clean + added.astype(np.float32))
        records.append(
            {
                "id": name,
                "path": str(folder / f"{name}.flac"),
                "clean_path": str(folder / f"{name}_clean.flac"),
                "noise_type": kind,
                "snr": snr,
                "duration": seconds,
            }
        )
    path = folder / "manifest.jsonl"
    write_manifest(path, [*records, *extra])
    return path


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_mixtures(tmp_path_factory.mktemp("mixtures"))


@pytest.fixture(scope="module")
def evaluated(tiny: dict[str, Path], manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    evaluate_enhancement(
        tiny, manifest, out, inference=CONFIG, batch_size=4, workers=1, save_audio=True, progress=False
    )
    return out


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def by_key(rows: list[dict[str, str]]) -> dict[tuple[str, str], dict[str, str]]:
    return {(row["model"], row["id"]): row for row in rows}


def assert_rows_close(a: list[dict[str, str]], b: list[dict[str, str]], skip: tuple[str, ...] = ("seconds",)) -> None:
    """Same rows and columns; numbers equal to 1e-4 (a recomputed VEM batch may differ in the last bits)."""
    a_rows, b_rows = by_key(a), by_key(b)
    assert a_rows.keys() == b_rows.keys()
    for key, row in a_rows.items():
        assert row.keys() == b_rows[key].keys()
        for column, value in row.items():
            if column in skip:
                continue
            try:
                assert float(value) == pytest.approx(float(b_rows[key][column]), abs=1e-4, nan_ok=True), (key, column)
            except ValueError:
                assert value == b_rows[key][column], (key, column)


def section(markdown: str, heading: str) -> list[list[str]]:
    """The cells of the table under `## heading` (header and rule excluded)."""
    body = markdown.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in body.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines]


def test_rows_files_and_figures(evaluated: Path) -> None:
    markdown = (evaluated / MARKDOWN_NAME).read_text()
    table = section(markdown, "Median ± 1.57·IQR/√n (Table II of the SE paper)")
    assert [row[0] for row in table] == [NOISY_LABEL, "VAE", "SRNN"]
    assert all(row[1] == "4" for row in table)
    assert [row[0] for row in section(markdown, "Mean")] == [NOISY_LABEL, "VAE", "SRNN"]
    assert "4 of 4 mixtures (all of them)" in markdown and "niter=3" in markdown and "seed=7" in markdown
    assert "PESQ-NB (raw P.862)" in markdown and "speechdvae eval enhance --model VAE=" in markdown
    assert section(markdown, "Mixtures per noise type and input SNR") == [["hiss", "1", "1"], ["hum", "1", "1"]]
    for name in (SNR_FIGURE_NAME, NOISE_FIGURE_NAME):
        assert (evaluated / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (evaluated / name).stat().st_size > 5000
    summary = read_rows(evaluated / SUMMARY_NAME)
    assert [row["model"] for row in summary] == [NOISY_LABEL, "VAE", "SRNN"]
    assert all(float(row["real_time_factor"]) > 0 for row in summary[1:])
    rows = read_rows(evaluated / UTTERANCES_NAME)
    assert len(rows) == 12 and not any(row["error"] for row in rows)
    assert {(row["id"], row["noise_type"], float(row["snr"])) for row in rows} == {m[:3] for m in MIXTURES}


def test_scores_follow_the_pipeline(evaluated: Path, tiny: dict[str, Path], manifest: Path) -> None:
    """Noisy rows score the input; model rows score a VEM run on the peak-normalised mixture keyed by its id."""
    rows = by_key(read_rows(evaluated / UTTERANCES_NAME))
    model = load_model(tiny["SRNN"], "cpu")
    for name, *_ in MIXTURES:
        noisy, clean = (read_audio(manifest.parent / f"{name}{suffix}.flac")[0] for suffix in ("", "_clean"))
        assert float(rows[NOISY_LABEL, name]["si_sdr"]) == pytest.approx(si_sdr(clean, noisy), abs=1e-4)
        assert float(rows[NOISY_LABEL, name]["estoi"]) == pytest.approx(estoi(clean, noisy), abs=1e-4)
        peak = np.abs(noisy).max()
        X = stft.stft(torch.from_numpy(noisy.astype(np.float64) / peak))
        direct = stft.istft(enhance_spectrogram(model, X, CONFIG, keys=[name]).speech[0], length=len(noisy)).numpy()
        saved = read_audio(audio_path(evaluated, "SRNN", name))[0]
        np.testing.assert_allclose(saved, direct, atol=1e-5)
        assert float(rows["SRNN", name]["si_sdr"]) == pytest.approx(si_sdr(clean / peak, saved), abs=1e-3)
        for metric in ("si_sdr", "pesq_wb", "estoi"):
            for label in ("VAE", "SRNN"):
                row = rows[label, name]
                gain = float(row[metric]) - float(rows[NOISY_LABEL, name][metric])
                assert float(row[f"{metric}_improvement"]) == pytest.approx(gain, abs=1e-9)


def test_groupings_per_snr_and_noise_type(evaluated: Path) -> None:
    rows = read_rows(evaluated / UTTERANCES_NAME)
    typed = [
        {**row, "snr": float(row["snr"]), **{k: float(v) for k, v in row.items() if k.endswith("_improvement")}}
        for row in rows
        if row["model"] != NOISY_LABEL
    ]
    markdown = (evaluated / MARKDOWN_NAME).read_text()
    per_snr = {(row[0], row[1]): row for row in section(markdown, "Improvement per input SNR (Fig. 4)")}
    for by, values in (("snr", (-5.0, 5.0)), ("noise_type", ("hiss", "hum"))):
        stats = improvement_stats(typed, by, "si_sdr")
        assert list(stats) == ["VAE", "SRNN"] and all(list(groups) == list(values) for groups in stats.values())
        for label in ("VAE", "SRNN"):
            for value in values:
                members = np.array([r["si_sdr_improvement"] for r in typed if r["model"] == label and r[by] == value])
                q1, median, q3 = np.quantile(members, [0.25, 0.5, 0.75])
                assert len(members) == 2
                assert stats[label][value] == pytest.approx((median, 1.57 * (q3 - q1) / math.sqrt(2)))
                if by == "snr":
                    assert per_snr[label, str(value)][3].startswith(f"{median:.2f} ± ")


def test_rerun_reuses_results_and_recomputes_only_what_is_missing(
    evaluated: Path, tiny: dict[str, Path], manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report"
    shutil.copytree(evaluated, out)
    enhanced: list[list[str]] = []
    original = enhancer.enhance_spectrogram

    def counting(model, X, config, lengths=None, keys=None, progress=False, snapshots=()):
        enhanced.append(list(keys))
        return original(model, X, config, lengths=lengths, keys=keys, snapshots=snapshots)

    monkeypatch.setattr(enhancer.VEMEnhancer, "engine", counting)
    run = dict(inference=CONFIG, batch_size=4, workers=1, save_audio=True, progress=False)
    evaluate_enhancement(tiny, manifest, out, **run)
    assert enhanced == []
    assert read_rows(out / UTTERANCES_NAME) == read_rows(evaluated / UTTERANCES_NAME)

    cache = out / CACHE_NAME
    lines = cache.read_text().splitlines(keepends=True)
    cache.write_text("".join(lines[:-2]) + lines[-1][:25])  # two lost results and a cut line
    (audio_path(out, "VAE", "m1")).unlink()  # a saved estimate that went missing
    with pytest.warns(UserWarning, match="dropped 1 incomplete line"):
        evaluate_enhancement(tiny, manifest, out, **run)
    assert all(line.endswith("}\n") for line in cache.read_text().splitlines(keepends=True))
    # batches run longest first (m4 m1 m2 m3): the two lost lines are SRNN on m2 and m3, plus VAE's m1 audio
    assert sorted(key for keys in enhanced for key in keys) == ["m1", "m2", "m3"]
    assert_rows_close(read_rows(out / UTTERANCES_NAME), read_rows(evaluated / UTTERANCES_NAME))

    enhanced.clear()
    evaluate_enhancement({"VAE": tiny["VAE"]}, manifest, out, **{**run, "inference": VEMConfig(niter=3, seed=8)})
    assert sorted(key for keys in enhanced for key in keys) == [m[0] for m in MIXTURES]


@pytest.mark.slow
@pytest.mark.parametrize("batch_size, workers", [(1, 1), (3, 2)])
def test_results_do_not_depend_on_the_batch_size_or_processes(
    evaluated: Path, tiny: dict[str, Path], manifest: Path, tmp_path: Path, batch_size: int, workers: int
) -> None:
    evaluate_enhancement(
        tiny,
        manifest,
        tmp_path,
        inference=CONFIG,
        batch_size=batch_size,
        workers=workers,
        save_audio=True,
        progress=False,
    )
    for name, *_ in MIXTURES:
        for label in ("VAE", "SRNN"):
            np.testing.assert_allclose(
                read_audio(audio_path(tmp_path, label, name))[0],
                read_audio(audio_path(evaluated, label, name))[0],
                atol=1e-5,
            )
    assert_rows_close(read_rows(tmp_path / UTTERANCES_NAME), read_rows(evaluated / UTTERANCES_NAME))


def test_unusable_mixtures_are_nan_and_counted(tiny: dict[str, Path], tmp_path: Path) -> None:
    write_audio(tmp_path / "silent.flac", np.zeros(12000, np.float32))
    (tmp_path / "broken.flac").write_bytes(b"not audio at all")
    bad = (
        {
            "id": "silent",
            "path": str(tmp_path / "silent.flac"),
            "clean_path": str(tmp_path / "silent.flac"),
            "noise_type": "hum",
            "snr": 5.0,
        },
        {
            "id": "broken",
            "path": str(tmp_path / "broken.flac"),
            "clean_path": str(tmp_path / "silent.flac"),
            "noise_type": "hiss",
            "snr": 5.0,
        },
        {
            "id": "lost",
            "path": str(tmp_path / "silent.flac"),
            "clean_path": str(tmp_path / "gone.flac"),
            "noise_type": "hiss",
            "snr": -5.0,
        },
    )
    manifest = write_mixtures(tmp_path, MIXTURES[:2], bad)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = evaluate_enhancement(
            {"VAE": tiny["VAE"]}, manifest, tmp_path / "out", inference=CONFIG, workers=1, progress=False
        )
    assert any("silent" in str(w.message) and "NaN" in str(w.message) for w in caught)
    rows = by_key(read_rows(tmp_path / "out" / UTTERANCES_NAME))
    for name, reason in (("silent", "silent"), ("broken", "cannot read"), ("lost", "gone.flac")):
        for label in (NOISY_LABEL, "VAE"):
            assert rows[label, name]["si_sdr"] == "nan" and reason in rows[label, name]["error"]
    assert all(not rows[label, name]["error"] for label in (NOISY_LABEL, "VAE") for name in ("m1", "m2"))
    assert [(row["model"], row["n"], row["si_sdr"].n_valid, row["si_sdr"].n_nan) for row in summary] == [
        (NOISY_LABEL, 5, 2, 3),
        ("VAE", 5, 2, 3),
    ]
    assert "5 of 5 mixtures (all of them); " in (tmp_path / "out" / MARKDOWN_NAME).read_text()
    assert "3 unusable" in (tmp_path / "out" / MARKDOWN_NAME).read_text()


def test_limit_is_balanced_over_noise_type_and_snr() -> None:
    records = [
        {"id": f"{t}{s}-{i}", "noise_type": t, "snr": float(s)}
        for t in ("car", "cafe", "home")
        for s in (-5, 0, 5)
        for i in range(5)
    ]
    for limit in (3, 6, 9, 12):
        chosen = balanced_subset(records[::-1], limit)
        assert len(chosen) == limit and chosen == balanced_subset(records, limit)
        for field in ("noise_type", "snr"):
            counts = [sum(r[field] == v for r in chosen) for v in {r[field] for r in records}]
            assert max(counts) - min(counts) == 0, (limit, field, counts)
    nine = balanced_subset(records, 9)
    assert {(r["noise_type"], r["snr"]) for r in nine} == {
        (t, float(s)) for t in ("car", "cafe", "home") for s in (-5, 0, 5)
    }
    twenty_seven = balanced_subset(records, 27)  # 3 of 5 per condition: ids 0, 1 and 3 (evenly spaced)
    assert sorted({r["id"][-1] for r in twenty_seven}) == ["0", "1", "3"]
    assert balanced_subset(records, 100) == sorted(records, key=lambda r: r["id"])
    assert share_out([1, 5, 5], 9) == [1, 4, 4] and share_out([2, 2], 3) == [2, 1] and share_out([1], 4) == [1]
    with pytest.raises(EvaluationError, match="positive"):
        balanced_subset(records, 0)


def test_results_are_keyed_by_weights_settings_and_files(tiny: dict[str, Path], manifest: Path) -> None:
    model = load_model(tiny["VAE"], "cpu")
    fingerprint = model_fingerprint(model)
    assert model_fingerprint(load_model(tiny["VAE"], "cpu")) == fingerprint
    with torch.no_grad():
        next(model.parameters())[0, 0] += 1e-3
    assert model_fingerprint(model) != fingerprint
    mixture = identify(read_mixtures(manifest)[0])
    key = result_key("VAE", fingerprint, CONFIG, mixture)
    assert result_key("VAE", fingerprint, VEMConfig(niter=3, seed=7), mixture) == key
    changed = (
        result_key("VAE2", fingerprint, CONFIG, mixture),
        result_key("VAE", "other", CONFIG, mixture),
        result_key("VAE", fingerprint, VEMConfig(niter=4, seed=7), mixture),
        result_key("VAE", fingerprint, CONFIG, Mixture(mixture.record, digest="other")),
    )
    assert key not in changed and len(set(changed)) == 4


@pytest.mark.slow
def test_priors_run_their_own_settings_unless_given(tiny: dict[str, Path], manifest: Path, tmp_path: Path) -> None:
    plain, tuned = load_model(tiny["VAE"], "cpu"), load_model(tiny["VAE"], "cpu")
    plain.inference = {"engine": "vem", "niter": 2}
    tuned.inference = {"engine": "langevin", "niter": 3, "warmup": 1, "wf_samples": 1}
    run = dict(limit=2, workers=1, progress=False)
    own = tmp_path / "own"
    summary = evaluate_enhancement(
        {"plain": plain, "tuned": tuned}, manifest, own, inference=InferenceRequest(settings={"seed": 7}), **run
    )
    assert [row["mean_iterations"] for row in summary[1:]] == [2, 3]
    settings = json.loads((own / SETTINGS_NAME).read_text())
    assert settings["plain"] == {"engine": "vem", **asdict(VEMConfig(niter=2, seed=7))}
    assert settings["tuned"] == {
        "engine": "langevin",
        **asdict(LangevinConfig(niter=3, warmup=1, wf_samples=1, seed=7)),
    }
    markdown = (own / MARKDOWN_NAME).read_text()
    assert "- plain: VEM, niter=2," in markdown and "- tuned: Langevin, niter=3," in markdown
    assert "--limit 2 --seed 7`" in markdown  # the request, as given, regenerates the report
    mixture = identify(read_mixtures(manifest)[0])
    fingerprint = model_fingerprint(tuned)
    assert result_key("tuned", fingerprint, tuned.enhancer().settings, mixture) == result_key(
        "tuned", fingerprint, LangevinConfig(niter=3, warmup=1, wf_samples=1), mixture
    )
    given = InferenceRequest("vem", settings={"niter": 1, "seed": 7})
    summary = evaluate_enhancement(
        {"plain": plain, "tuned": tuned}, manifest, tmp_path / "given", inference=given, **run
    )
    assert [row["mean_iterations"] for row in summary[1:]] == [1, 1]


def test_snapshot_rows_equal_and_share_the_cache_of_shorter_runs(
    tiny: dict[str, Path], manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = dict(limit=4, workers=1, progress=False, save_audio=True)
    models = {"VAE": tiny["VAE"], "SRNN": tiny["SRNN"]}
    swept = evaluate_enhancement(
        models, manifest, tmp_path, inference=VEMConfig(niter=4, seed=3), snapshots=[2, 4], **run
    )
    labels = [row["model"] for row in swept]
    assert labels == [NOISY_LABEL, "VAE", snapshot_label("VAE", 2), "SRNN", snapshot_label("SRNN", 2)]
    short = {row["model"]: row for row in swept}
    assert short[snapshot_label("VAE", 2)]["mean_iterations"] == 2 and short["VAE"]["mean_iterations"] == 4
    assert 0 < short[snapshot_label("SRNN", 2)]["seconds_per_utterance"] < short["SRNN"]["seconds_per_utterance"]
    assert "--snapshots 2 4" in (tmp_path / MARKDOWN_NAME).read_text()

    calls: list[int] = []
    original = enhancer.enhance_spectrogram

    def counting(model, X, config, lengths=None, keys=None, progress=False, snapshots=()):
        calls.append(config.niter)
        return original(model, X, config, lengths=lengths, keys=keys, snapshots=snapshots)

    monkeypatch.setattr(enhancer.VEMEnhancer, "engine", counting)
    separate = tmp_path / "separate"
    evaluate_enhancement(models, manifest, separate, inference=VEMConfig(niter=2, seed=3), **run)
    assert calls  # computed afresh: the rows of two iterations equal the snapshots
    rows = [row for row in read_rows(tmp_path / UTTERANCES_NAME) if row["model"] != "VAE" and row["model"] != "SRNN"]
    renamed = [{**row, "model": row["model"].split(" · ")[0]} for row in rows]
    assert_rows_close(renamed, read_rows(separate / UTTERANCES_NAME))
    for label in models:
        for name in ("m1", "m2"):
            np.testing.assert_array_equal(
                read_audio(audio_path(tmp_path, snapshot_label(label, 2), name))[0],
                read_audio(audio_path(separate, label, name))[0],
            )
    calls.clear()
    shutil.copy(tmp_path / CACHE_NAME, separate / CACHE_NAME)
    evaluate_enhancement(
        models, manifest, separate, inference=VEMConfig(niter=4, seed=3), limit=4, workers=1, progress=False
    )
    assert calls == []  # the runs of four iterations are cached under the same keys
    with pytest.raises(EnhancementError, match="positive"):
        evaluate_enhancement(models, manifest, tmp_path, inference=VEMConfig(niter=4), snapshots=[0], **run)
    langevin = LangevinConfig(niter=6, warmup=2, wf_samples=2)
    with pytest.raises(EnhancementError, match="no snapshot after 2 iterations.*warmup"):
        evaluate_enhancement(models, manifest, tmp_path / "l", inference=langevin, snapshots=[2], **run)
    assert not (tmp_path / "l").exists()


def test_settings_and_command_line(
    tiny: dict[str, Path], manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # a request maps to its options one to one
    assert enhance_command({}, manifest, "out", None, InferenceRequest()).endswith("-o out")
    assert enhance_command({}, manifest, "out", 2, InferenceRequest(official=True, settings={"niter": 3})).endswith(
        "--limit 2 --official-settings --iterations 3"
    )
    langevin = InferenceRequest("langevin", settings={"step_size": 0.02, "wf_samples": 2})
    assert enhance_command({}, manifest, "out", None, langevin).endswith(
        "-o out --inference langevin --step-size 0.02 --wf-samples 2"
    )
    assert enhance_command({}, manifest, "out", None, InferenceRequest(settings={"mstep_samples": 4})).endswith(
        "-o out  # settings without an option: mstep_samples=4"
    )
    # exact settings leave nothing to a prior's own: the VEM's start from the official ones, Langevin's give all
    assert enhance_command({}, manifest, "out", 2, VEMConfig.official(niter=3)).endswith(
        "--limit 2 --official-settings --iterations 3"
    )
    assert enhance_command({}, manifest, "out", None, VEMConfig(nmf_rank=4)).endswith(
        "-o out --official-settings --iterations 30 --nmf-rank 4 --past estimate"
    )
    assert enhance_command({}, manifest, "out", None, VEMConfig(mstep_samples=4)).endswith(
        "--past estimate  # settings without an option: mstep_samples=4"
    )
    assert enhance_command({}, manifest, "out", None, LangevinConfig(step_size=0.02)).endswith(
        "-o out --inference langevin --iterations 60 --step-size 0.02 --langevin-steps 1 --warmup 10 --wf-samples 10 "
        "--nmf-rank 8 --past estimate --seed 0"
    )
    argv = [
        "eval",
        "enhance",
        "--model",
        f"VAE={tiny['VAE']}",
        "--official-cache",
        str(tmp_path / "cache"),
        "--manifest",
        str(manifest),
        "-o",
        str(tmp_path / "out"),
        "--limit",
        "2",
        "--workers",
        "1",
        "--no-progress",
        "--iterations",
        "2",
    ]
    args = build_parser().parse_args(argv)
    assert args.func(args) == 0
    markdown = (tmp_path / "out" / MARKDOWN_NAME).read_text()
    assert "--limit 2 --iterations 2`" in markdown and "2 of 4 mixtures" in markdown
    assert re.search(r"\| VAE \| 2 \|", capsys.readouterr().out)
    for bad in (["--lr", "0"], ["--model", "VAE"], ["--model", f"{NOISY_LABEL}={tiny['VAE']}"], ["--limit", "0"]):
        args = build_parser().parse_args([*argv, *bad])
        with pytest.raises(SpeechDVAEError):
            args.func(args)


def test_langevin_results_are_kept_apart_from_the_vem(tiny: dict[str, Path], manifest: Path, tmp_path: Path) -> None:
    """`eval enhance --inference langevin` runs posterior sampling, describes it in the report and keys its cached
    results by its own settings: evaluating the same prior by the VEM in the same folder reuses none of them."""
    argv = ["eval", "enhance", "--model", f"VAE={tiny['VAE']}", "--manifest", str(manifest), "-o", str(tmp_path)]
    argv += ["--limit", "2", "--workers", "1", "--no-progress", "--iterations", "3"]
    langevin = ["--inference", "langevin", "--warmup", "1", "--wf-samples", "2"]

    def report(*options: str) -> str:
        args = build_parser().parse_args([*argv, *options])
        assert args.func(args) == 0
        return (tmp_path / MARKDOWN_NAME).read_text()

    first = report(*langevin)
    assert "--limit 2 --inference langevin --iterations 3 --warmup 1 --wf-samples 2`" in first
    assert "- VAE: Langevin, niter=3," in first and "this run enhanced 2 of 2" in first
    vem = report()
    assert "- VAE: VEM, niter=" in vem and "this run enhanced 2 of 2" in vem
    assert "this run enhanced 0 of 2" in report(*langevin)
