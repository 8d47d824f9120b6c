"""Noisy mixtures: loudness SNR, balanced seeded plan, resumable runs, fallbacks, official lists."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from scipy.signal import lfilter

from speechdvae.audio import SAMPLE_RATE, AudioError, read_audio, write_audio
from speechdvae.data.manifest import read_manifest, sha256_file, write_manifest
from speechdvae.data.mix import (
    MANIFEST_NAME,
    build_mixtures,
    mix_at_snr,
    mix_from_official,
    plan_mixtures,
    read_official_list,
)

LSB = 1 / 32768


# ------------------------------------------------------------------------------------- helpers


def speech_like(seconds: float, seed: int, level: float = 0.3) -> np.ndarray:
    """A harmonic, vibrato, syllable-modulated signal with pauses: loudness behaves as for speech."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = (110 + 60 * rng.random()) * (1 + 0.1 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 16))
    x = x * np.clip(np.sin(2 * np.pi * 3.5 * t + 6 * rng.random()), 0, None) ** 2
    return level * x / np.max(np.abs(x))


def noise_like(seconds: float, seed: int, level: float = 0.1) -> np.ndarray:
    """Coloured Gaussian noise (one-pole low-pass with a seed-dependent pole)."""
    rng = np.random.default_rng(seed)
    x = lfilter([1.0], [1.0, -(0.3 + 0.6 * rng.random())], rng.standard_normal(int(seconds * SAMPLE_RATE)))
    return level * x / np.max(np.abs(x))


def write_corpus(
    root: Path, speech: dict[str, np.ndarray], noise: dict[str, tuple[str, np.ndarray]]
) -> tuple[Path, Path]:
    """FLAC files + speech/noise manifests in the corpus format; noise maps id -> (type, signal)."""

    def record(kind: str, key: str, x: np.ndarray, **extra) -> dict:
        path = root / kind / f"{key}.flac"
        write_audio(path, x)
        return {
            "id": key,
            "path": str(path),
            "duration": len(x) / SAMPLE_RATE,
            "speaker": key[:2],
            "language": "fr",
            "split": "test",
            "sha256": sha256_file(path),
            **extra,
        }

    speech_manifest, noise_manifest = root / "speech_test.jsonl", root / "noise_test.jsonl"
    write_manifest(speech_manifest, [record("speech", k, x) for k, x in speech.items()])
    write_manifest(noise_manifest, [record("noise", k, x, noise_type=t) for k, (t, x) in noise.items()])
    return speech_manifest, noise_manifest


def loudness(x: np.ndarray) -> float:
    return pyloudnorm.Meter(SAMPLE_RATE).integrated_loudness(np.asarray(x, dtype=np.float64))


def written_pair(record: dict) -> tuple[np.ndarray, np.ndarray]:
    """(clean, added noise) as read back from the written files."""
    clean, sr_clean = sf.read(record["clean_path"], dtype="float64")
    noisy, sr_noisy = sf.read(record["path"], dtype="float64")
    assert sr_clean == sr_noisy == SAMPLE_RATE and clean.ndim == noisy.ndim == 1
    return clean, noisy - clean


def source(record: dict) -> np.ndarray:
    """The clean speech file the mixture was made from."""
    return sf.read(record["speech_path"], dtype="float64")[0]


def expected_noise(record: dict) -> np.ndarray:
    """The manifest's noise segment (looped if needed) times the recorded gain and scale."""
    noise = read_audio(record["noise_path"])[0].astype(np.float64)
    n = round(record["duration"] * SAMPLE_RATE)
    index = (record["noise_start"] + np.arange(n)) % len(noise)
    return noise[index] * record["noise_gain"] * record["scale"]


@pytest.fixture
def corpus(tmp_path: Path) -> tuple[Path, Path, dict[str, np.ndarray]]:
    speech = {f"s{i % 3}_{i:02d}": speech_like(1.0 + 0.1 * i, seed=i) for i in range(6)}
    noise = {
        "machinery_a": ("machinery", noise_like(3.0, 1)),
        "machinery_b": ("machinery", noise_like(2.5, 2)),
        "water_a": ("water", noise_like(3.0, 3)),
    }
    return (*write_corpus(tmp_path / "corpus", speech, noise), speech)


# ------------------------------------------------------------------------------------- mixing


def test_written_loudness_difference_is_the_target_snr(corpus, tmp_path):
    speech_manifest, noise_manifest, speech = corpus
    records = read_manifest(build_mixtures(speech_manifest, noise_manifest, tmp_path / "mix", seed=3))
    assert sorted(r["id"] for r in records) == sorted(speech)
    for r in records:
        clean, added = written_pair(r)
        assert r["snr_method"] == "bs1770" and r["scale"] == 1.0 and not r["noise_looped"]
        assert loudness(clean) - loudness(added) == pytest.approx(r["snr"], abs=0.1)
        assert r["snr_power"] == pytest.approx(10 * np.log10(np.sum(clean**2) / np.sum(added**2)), abs=1e-6)
        np.testing.assert_array_equal(clean, source(r))  # the untrimmed clean file, unchanged
        assert np.max(np.abs(added - expected_noise(r))) <= LSB + 1e-9
        assert r["sha256"] == sha256_file(r["path"]) and r["duration"] == len(speech[r["id"]]) / SAMPLE_RATE
        assert r["seed"] == 3 and r["noise_type"] == r["noise_id"].split("_")[0]


def test_quiet_noise_recording_is_measured_like_a_loud_one():
    speech, noise = speech_like(1.5, 0), noise_like(1.5, 1)
    assert loudness(noise * 1e-5) == -np.inf  # below the absolute gate when measured as is
    mixture, scaled, info = mix_at_snr(speech, noise * 1e-5, 5.0)
    reference = mix_at_snr(speech, noise, 5.0)[1]
    assert info["snr_method"] == "bs1770"
    np.testing.assert_allclose(scaled, reference, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(mixture, speech + reference, atol=1e-12)
    assert loudness(speech) - loudness(scaled) == pytest.approx(5.0, abs=1e-6)


def test_mix_at_snr_rejects_bad_input():
    with pytest.raises(ValueError, match="equal length"):
        mix_at_snr(np.ones(8000), np.ones(7000), 0.0)
    with pytest.raises(AudioError, match="noise segment is silent"):
        mix_at_snr(speech_like(1.0, 0), np.zeros(16000), 0.0)


def test_too_short_utterance_uses_power_snr(tmp_path):
    manifests = write_corpus(tmp_path / "c", {"short": speech_like(0.2, 5)}, {"n": ("wind", noise_like(2.0, 6))})
    [r] = read_manifest(build_mixtures(*manifests, tmp_path / "mix", snrs=(0.0,)))
    clean, added = written_pair(r)
    assert r["snr_method"] == "power" and len(clean) == int(0.2 * SAMPLE_RATE)
    assert 10 * np.log10(np.mean(clean**2) / np.mean(added**2)) == pytest.approx(0.0, abs=0.05)


def test_clipping_rescales_clean_and_noisy_together(tmp_path):
    manifests = write_corpus(
        tmp_path / "c", {"loud": speech_like(1.2, 7, level=0.95)}, {"n": ("fire", noise_like(2.0, 8, level=0.5))}
    )
    [r] = read_manifest(build_mixtures(*manifests, tmp_path / "mix", snrs=(-5.0,)))
    clean, added = written_pair(r)
    noisy = clean + added
    assert 0.5 < r["scale"] < 1.0
    assert np.max(np.abs(source(r) + expected_noise(r) / r["scale"])) > 1.0  # it would have clipped
    assert np.max(np.abs(noisy)) <= 1.0
    assert np.max(np.abs(clean - source(r) * r["scale"])) <= LSB / 2 + 1e-9
    assert np.max(np.abs(added - expected_noise(r))) <= LSB + 1e-9
    np.testing.assert_array_equal(added * 32768, np.rint(added * 32768))  # the added noise is on the grid
    assert loudness(clean) - loudness(added) == pytest.approx(-5.0, abs=0.1)


def test_short_noise_recording_is_looped(tmp_path):
    manifests = write_corpus(tmp_path / "c", {"long": speech_like(1.5, 9)}, {"n": ("crowd", noise_like(0.6, 10))})
    [r] = read_manifest(build_mixtures(*manifests, tmp_path / "mix", snrs=(5.0,)))
    clean, added = written_pair(r)
    assert r["noise_looped"] and 0 <= r["noise_start"] < int(0.6 * SAMPLE_RATE)
    assert np.max(np.abs(added - expected_noise(r))) <= LSB + 1e-9
    assert loudness(clean) - loudness(added) == pytest.approx(5.0, abs=0.1)


# ------------------------------------------------------------------------------------- planning


def fake_records(n_speech: int, noise_counts: dict[str, int]) -> tuple[list[dict], list[dict]]:
    rng = np.random.default_rng(123)
    speech = [
        {"id": f"utt{i:03d}", "path": f"/s/{i}.flac", "duration": float(rng.uniform(0.5, 4.0))} for i in range(n_speech)
    ]
    noise = [
        {"id": f"{t}{j}", "path": f"/n/{t}{j}.flac", "noise_type": t, "duration": float(rng.uniform(2.0, 9.0))}
        for t, count in noise_counts.items()
        for j in range(count)
    ]
    return speech, noise


def test_plan_is_balanced_seeded_and_order_free():
    speech, noise = fake_records(50, {"machinery": 1, "water": 2, "wind": 3})
    plan = plan_mixtures(speech, noise, snrs=(-5, 0, 5), seed=0)
    conditions = Counter((p["noise_type"], p["snr"]) for p in plan)
    assert len(conditions) == 9 and max(conditions.values()) - min(conditions.values()) <= 1
    by_id = {r["id"]: r for r in noise}
    for noise_type in ("water", "wind"):
        used = Counter(p["noise_id"] for p in plan if p["noise_type"] == noise_type)
        assert max(used.values()) - min(used.values()) <= 1
    for p, utterance in zip(plan, sorted(speech, key=lambda r: r["id"])):
        recording = by_id[p["noise_id"]]
        assert p["id"] == utterance["id"] and recording["noise_type"] == p["noise_type"]
        length, n = (round(r["duration"] * SAMPLE_RATE) for r in (recording, utterance))
        assert 0 <= p["noise_start"] <= (length - n if length >= n else length - 1)  # else looped
    assert plan_mixtures(speech[::-1], noise[::-1], snrs=(-5, 0, 5), seed=0) == plan
    other = plan_mixtures(speech, noise, snrs=(-5, 0, 5), seed=1)
    assert [(p["noise_id"], p["snr"], p["noise_start"]) for p in other] != [
        (p["noise_id"], p["snr"], p["noise_start"]) for p in plan
    ]


# ------------------------------------------------------------------------------------- resuming


def test_rerun_keeps_files_and_resume_gives_the_same_manifest(corpus, tmp_path):
    speech_manifest, noise_manifest, _ = corpus
    out = tmp_path / "mix"
    manifest = build_mixtures(speech_manifest, noise_manifest, out, seed=1)
    first = manifest.read_bytes()
    files = sorted(p for p in out.rglob("*.flac"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    assert len(files) == 12
    build_mixtures(speech_manifest, noise_manifest, out, seed=1)
    assert manifest.read_bytes() == first
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    # an interrupted run: no final manifest, one pair missing, the others listed in the partial manifest
    lost = read_manifest(manifest)[2]
    Path(lost["path"]).unlink()
    manifest.rename(out / ".manifest.partial.jsonl")
    build_mixtures(speech_manifest, noise_manifest, out, seed=1)
    assert manifest.read_bytes() == first and not (out / ".manifest.partial.jsonl").exists()
    redone = {Path(lost["path"]), Path(lost["clean_path"])}
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in files if p not in redone)


def test_unreadable_speech_file_is_skipped_and_reported(corpus, tmp_path, caplog):
    speech_manifest, noise_manifest, speech = corpus
    broken = sorted(speech)[1]
    (speech_manifest.parent / "speech" / f"{broken}.flac").write_bytes(b"not audio at all")
    with caplog.at_level(logging.WARNING, logger="speechdvae.data.mix"):
        records = read_manifest(build_mixtures(speech_manifest, noise_manifest, tmp_path / "mix"))
    assert sorted(r["id"] for r in records) == sorted(set(speech) - {broken})
    assert any(broken in message and f"{broken}.flac" in message for message in caplog.messages)
    assert not (tmp_path / "mix" / "noisy" / f"{broken}.flac").exists()


# ------------------------------------------------------------------------------------- official lists


def test_read_official_lists(official_dir):
    wsj = read_official_list(official_dir / "wsj_test.json", "/n", "/c")
    assert len(wsj) == 651
    assert wsj[0] == {
        "id": "440c0201",
        "path": "/n/440c0201_CAFE-CAFE-2_0.wav",
        "clean_path": "/c/440/440c0201.wav",
        "duration": 5.725,
        "speaker": "440",
        "language": "en",
        "split": "test",
        "noise_type": "CAFE-CAFE-2",
        "snr": 0.0,
        "noise_start": 2295104,
    }
    assert {r["snr"] for r in wsj} == {-5.0, 0.0, 5.0}
    vb = read_official_list(official_dir / "vb_test.json", "/n", "/c")
    assert len(vb) == 824 and vb[0]["path"] == "/n/p257_001_16k.wav" and vb[0]["snr"] == 17.5
    assert {r["snr"] for r in vb} == {2.5, 7.5, 12.5, 17.5} and all(isinstance(r["snr"], float) for r in vb)
    assert not any("noise_start" in r or "{" in r["path"] + r["clean_path"] for r in vb)


@pytest.fixture
def official_excerpt(official_dir: Path, tmp_path: Path) -> tuple[Path, Path, Path, dict]:
    """Three real wsj_test.json entries over fake WSJ0 (16 kHz) and QUT-NOISE (48 kHz stereo) trees."""
    entries = dict(list(json.loads((official_dir / "wsj_test.json").read_text()).items())[:3])
    clean_root, noise_root = tmp_path / "wsj0", tmp_path / "qut"
    for i, (key, entry) in enumerate(entries.items()):
        entry["length"], entry["noise_start"] = 1.0 + 0.2 * i, 4000 + 9000 * i
        write_audio(clean_root / entry["p_id"] / f"{key}.wav", speech_like(entry["length"], i))
    for j, noise_type in enumerate(sorted({e["noise_type"] for e in entries.values()})):
        stereo = np.stack([noise_like(3.0, 20 + j), noise_like(3.0, 30 + j)], axis=1)
        noise_root.mkdir(parents=True, exist_ok=True)
        sf.write(noise_root / f"{noise_type}.wav", np.repeat(stereo, 3, axis=0), 48000)
    json_path = tmp_path / "wsj_excerpt.json"
    json_path.write_text(json.dumps(entries))
    return json_path, clean_root, noise_root, entries


def test_mix_from_official_regenerates_the_listed_mixtures(official_excerpt, tmp_path):
    json_path, clean_root, noise_root, entries = official_excerpt
    out = tmp_path / "out"
    records = read_manifest(mix_from_official(json_path, clean_root, noise_root, out))
    listed = read_official_list(json_path, out / "noisy", out / "clean")
    assert [(r["id"], r["path"], r["clean_path"]) for r in records] == [
        (r["id"], str(Path(r["path"])), str(Path(r["clean_path"]))) for r in listed
    ]
    assert Path(records[0]["path"]).name == "440c0201_CAFE-CAFE-2_0.wav"
    for r in records:
        entry = entries[r["id"]]
        clean, added = written_pair(r)
        assert r["noise_path"] == str(noise_root / f"{entry['noise_type']}.wav")
        assert r["noise_start"] == entry["noise_start"] and r["snr"] == float(entry["snr"])
        assert len(clean) == round(entry["length"] * SAMPLE_RATE)
        assert np.max(np.abs(added - expected_noise(r))) <= LSB + 1e-9  # start is a 16 kHz index
        assert loudness(clean) - loudness(added) == pytest.approx(entry["snr"], abs=0.1)


def test_official_segment_past_the_noise_end_is_skipped(official_excerpt, tmp_path, caplog):
    json_path, clean_root, noise_root, entries = official_excerpt
    first = next(iter(entries))
    entries[first]["noise_start"] = 3 * SAMPLE_RATE - 100
    json_path.write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING, logger="speechdvae.data.mix"):
        records = read_manifest(mix_from_official(json_path, clean_root, noise_root, tmp_path / "out"))
    assert [r["id"] for r in records] == list(entries)[1:]
    assert any(first in m and "past the end" in m for m in caplog.messages)
    assert (tmp_path / "out" / MANIFEST_NAME).is_file()
