"""The realistic validation benchmark: held-out noise, joined utterances, balanced cells, resumable build."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_mix import loudness, noise_like, speech_like

from speechdvae.audio import SAMPLE_RATE, write_audio
from speechdvae.cli import main
from speechdvae.data import open_corpus
from speechdvae.data.manifest import read_manifest, sha256_file, write_manifest
from speechdvae.data.mix import MixError
from speechdvae.data.realistic import (
    HELDOUT_NOISE,
    HELDOUT_PACKAGES,
    UTTERANCES_NAME,
    build_benchmark,
    heldout_package,
    select_utterances,
)

SNRS = (-5.0, 0.0, 5.0)
NOISE_FILES = {
    "usr/share/game/sounds/street.wav": "traffic",
    "usr/share/game/sounds/avenue.ogg": "traffic",
    "usr/share/game/sounds/shower.wav": "rain",
    "usr/share/game/rain/drizzle.wav": "rain",
}


def _speech_manifest(path: Path, split: str, speakers: dict[str, list[float]]) -> list[dict]:
    """FLAC prompts (speaker -> durations) and their manifest in the open corpus format."""
    records = []
    for speaker, durations in speakers.items():
        for i, seconds in enumerate(durations):
            key = f"{speaker}/prompt{i:02d}"
            audio = path.parent / "speech" / f"{key}.flac"
            write_audio(audio, speech_like(seconds, seed=len(records) + 100 * len(speaker)))
            records.append(
                {
                    "id": key,
                    "path": str(audio),
                    "duration": seconds,
                    "speaker": speaker,
                    "language": "xx",
                    "split": split,
                    "sha256": sha256_file(audio),
                }
            )
    write_manifest(path, records)
    return records


@pytest.fixture
def corpus(tmp_path: Path) -> dict:
    """Validation speech of two seen speakers and one unseen speaker, and an unpacked fake noise package."""
    rng = np.random.default_rng(0)
    manifests = tmp_path / "corpus" / "manifests"
    valid = _speech_manifest(
        manifests / "speech_valid.jsonl",
        "valid",
        {"seen-a": [1.5] * 24, "seen-b": list(np.round(rng.uniform(0.5, 3.5, 30), 3))},
    )
    unseen = _speech_manifest(
        manifests / "speech_valid_unseen.jsonl",
        "valid_unseen",
        {"unseen": list(np.round(rng.uniform(0.5, 3.5, 50), 3))},
    )
    unpacked = tmp_path / "corpus" / "unpacked" / "fake-noise"
    for k, member in enumerate(sorted(NOISE_FILES)):  # at 44.1 kHz (wav) and 16 kHz (ogg), 6-9 s
        (unpacked / member).parent.mkdir(parents=True, exist_ok=True)
        sf.write(unpacked / member, noise_like(6.0 + k, seed=k), 44100 if member.endswith(".wav") else SAMPLE_RATE)
    return {
        "root": tmp_path / "corpus",
        "speech": valid + unseen,
        "package": heldout_package("fake-noise", NOISE_FILES),
    }


def _build(corpus: dict, out: Path, **kw) -> list[dict]:
    path = build_benchmark(
        corpus["root"],
        out,
        per_cell=kw.pop("per_cell", 1),
        snrs=SNRS,
        seed=kw.pop("seed", 3),
        packages=(corpus["package"],),
        **kw,
    )
    return read_manifest(path)


def test_cells_are_balanced_and_lengths_realistic(corpus, tmp_path):
    records = _build(corpus, tmp_path / "bench", per_cell=2)
    cells = Counter((r["length"], r["noise_type"], r["snr"]) for r in records)
    assert cells == {
        (length, kind, snr): 2 for length in ("short", "long") for kind in ("rain", "traffic") for snr in SNRS
    }
    for r in records:
        low, high = (4.0, 12.0) if r["length"] == "long" else (1.0, 3.0)
        assert low <= r["duration"] <= high and r["id"].startswith(r["length"] + "/")
    for length in ("short", "long"):  # half of each length condition from each validation split
        assert Counter(r["split"] for r in records if r["length"] == length) == {"valid": 6, "valid_unseen": 6}
    assert len({r["noise_id"] for r in records}) == 4


def test_joined_utterances_are_consecutive_prompts_of_one_speaker(corpus, tmp_path):
    records = _build(corpus, tmp_path / "bench")
    prompts = {r["id"]: r for r in corpus["speech"]}
    by_speaker = {
        s: sorted(i for i, r in prompts.items() if r["speaker"] == s) for s in {r["speaker"] for r in prompts.values()}
    }
    used = [p for r in records for p in r["parts"]]
    assert len(used) == len(set(used)), "a prompt appears in two utterances"
    utterances = {u["id"]: u for u in read_manifest(tmp_path / "bench" / UTTERANCES_NAME)}
    for r in records:
        parts = [prompts[p] for p in r["parts"]]  # only prompts of the validation manifests
        assert {p["speaker"] for p in parts} == {r["speaker"]} and {p["split"] for p in parts} == {r["split"]}
        order = by_speaker[r["speaker"]]
        start = order.index(r["parts"][0])
        assert r["parts"] == order[start : start + len(parts)]
        if r["length"] == "short":
            assert len(parts) == 1 and r["speech_path"] == parts[0]["path"]
            continue
        joined = sf.read(r["speech_path"], dtype="float32")[0]
        gaps = utterances[r["id"]]["gaps"]
        assert len(parts) >= 2 and all(0.2 * SAMPLE_RATE <= g <= 0.5 * SAMPLE_RATE for g in gaps)
        offset = 0
        for k, part in enumerate(parts):  # each prompt untrimmed and unchanged, then its pause
            x = sf.read(part["path"], dtype="float32")[0]
            np.testing.assert_array_equal(joined[offset : offset + len(x)], x)
            offset += len(x)
            if k < len(gaps):
                pause = joined[offset : offset + gaps[k]]
                assert np.sqrt(np.mean(pause**2)) < 1e-3  # the prompt's own (digital-silence) floor
                offset += gaps[k]
        assert offset == len(joined) == round(r["duration"] * SAMPLE_RATE)


def test_snr_is_the_loudness_difference(corpus, tmp_path):
    for r in _build(corpus, tmp_path / "bench"):
        clean = sf.read(r["clean_path"], dtype="float64")[0]
        noisy = sf.read(r["path"], dtype="float64")[0]
        assert r["snr_method"] == "bs1770"
        assert loudness(clean) - loudness(noisy - clean) == pytest.approx(r["snr"], abs=0.1)


def test_heldout_noise_manifest(corpus, tmp_path):
    _build(corpus, tmp_path / "bench")
    noise = read_manifest(corpus["root"] / "manifests" / "noise_heldout.jsonl")
    assert sorted(Path(n["path"]).name for n in noise) == ["avenue.flac", "drizzle.flac", "shower.flac", "street.flac"]
    for n in noise:
        x, sr = sf.read(n["path"])
        assert sr == SAMPLE_RATE and n["sha256"] == sha256_file(n["path"])
        assert n["duration"] == pytest.approx(len(x) / SAMPLE_RATE, abs=1e-4)
        assert n["package"] == "fake-noise" and n["recording"] == n["id"] and n["split"] == "heldout"
        assert n["noise_type"] == NOISE_FILES[next(m for m in NOISE_FILES if Path(m).stem == Path(n["path"]).stem)]


def test_heldout_sources_are_used_nowhere_else():
    open_packages = {p.name for p in open_corpus.PACKAGES}
    assert not open_packages & set(HELDOUT_NOISE) and "blanket" not in HELDOUT_NOISE
    assert len(set().union(*(set(files.values()) for files in HELDOUT_NOISE.values()))) >= 4
    for pkg in HELDOUT_PACKAGES:  # only the listed files are unpacked
        assert pkg.members == tuple(f"./{m}" for m in sorted(HELDOUT_NOISE[pkg.name]))


def test_rerun_reuses_everything_and_resumes_a_deleted_mixture(corpus, tmp_path):
    out = tmp_path / "bench"
    first = _build(corpus, out)
    files = sorted(p for p in out.rglob("*.flac"))
    stamps = {p: p.stat().st_mtime_ns for p in files}
    assert _build(corpus, out) == first
    assert {p: p.stat().st_mtime_ns for p in files} == stamps
    victim = first[5]
    Path(victim["path"]).unlink()
    assert _build(corpus, out) == first  # only that mixture is made again, identical
    assert [p for p in files if p.stat().st_mtime_ns != stamps[p]] == sorted(
        [Path(victim["clean_path"]), Path(victim["path"])]
    )


def test_selection_is_seeded(corpus):
    speech = corpus["speech"]
    ids = lambda seed: [u["id"] for u in select_utterances(speech, 6, seed)]  # noqa: E731
    assert ids(1) == ids(1) and ids(1) != ids(2)


def test_bad_input_is_one_clear_error(corpus, tmp_path, capsys):
    test_manifest = tmp_path / "speech_test.jsonl"
    write_manifest(test_manifest, [{**corpus["speech"][0], "split": "test"}])
    with pytest.raises(MixError, match="validation speech only"):
        _build(corpus, tmp_path / "bench", speech_manifests=[test_manifest])
    with pytest.raises(MixError, match="lower --per-cell"):
        _build(corpus, tmp_path / "bench", per_cell=50)
    assert not (tmp_path / "bench" / "manifest.jsonl").exists()
    capsys.readouterr()
    assert main(["data", "realistic", "--root", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("speechdvae: error:") and "manifest not found" in err and len(err.splitlines()) == 1


def test_undecodable_or_missing_noise_file_is_reported(corpus, tmp_path):
    broken = corpus["root"] / "unpacked" / "bad-noise" / "usr/share/game/broken.ogg"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"OggS but not really")
    with pytest.raises(RuntimeError, match="broken.ogg: cannot convert .* to try again"):
        build_benchmark(
            corpus["root"],
            tmp_path / "bench",
            packages=(heldout_package("bad-noise", {"usr/share/game/broken.ogg": "traffic"}),),
        )
    with pytest.raises(RuntimeError, match="gone.ogg is missing: delete .* to unpack bad-noise again"):
        build_benchmark(
            corpus["root"],
            tmp_path / "bench",
            packages=(heldout_package("bad-noise", {"usr/share/game/gone.ogg": "traffic"}),),
        )
