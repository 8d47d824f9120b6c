"""Corpus loaders on tiny generated trees with the real WSJ0, VoiceBank-DEMAND and LibriSpeech layouts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechdvae.data import corpora
from speechdvae.data.corpora import CorpusError
from speechdvae.data.manifest import REQUIRED_FIELDS, read_manifest

SECONDS = 0.3


def tone(
    path: Path, sr: int, seconds: float = SECONDS, freq: float = 440.0, noise: float = 0.0, channels: int = 1, **kw
) -> Path:
    """Write a sine (plus optional white noise) of `seconds` at `sr`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sr))) / sr
    x = 0.5 * np.sin(2 * np.pi * freq * t) + noise * np.random.default_rng(len(str(path))).standard_normal(t.size)
    sf.write(str(path), np.repeat(x[:, None], channels, axis=1), sr, **kw)
    return path


def sphere(path: Path, seconds: float = SECONDS) -> Path:
    """An uncompressed NIST SPHERE file at 16 kHz, as on a converted WSJ0 disc."""
    return tone(path, 16000, seconds, format="NIST", subtype="PCM_16")


def shorten_sphere(path: Path) -> Path:
    """A WSJ0-style shorten-compressed SPHERE file: the LDC header followed by compressed bytes."""
    header = "\n".join(
        [
            "NIST_1A",
            "   1024",
            "database_id -s5 CSR-I",
            f"utterance_id -s8 {path.stem}",
            "channel_count -i 1",
            "sample_count -i 4800",
            "sample_rate -i 16000",
            "sample_n_bytes -i 2",
            "sample_byte_format -s2 01",
            "sample_sig_bits -i 16",
            "sample_coding -s26 pcm,embedded-shorten-v2.00",
            "end_head",
            "",
        ]
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header.encode().ljust(1024, b" ") + b"ajkg\x02" + bytes(range(256)) * 4)
    return path


def junk(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not audio at all" * 10)
    return path


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def by_id(records: list[dict]) -> dict[str, dict]:
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "ids must be unique"
    return {r["id"]: r for r in records}


def assert_manifest_records(records: list[dict]) -> None:
    for r in records:
        assert all(k in r for k in REQUIRED_FIELDS)
        assert Path(r["path"]).is_absolute() and Path(r["path"]).is_file()
        assert r["sha256"] == sha(r["path"])


# ---------------------------------------------------------------------------------------- WSJ0


@pytest.fixture
def wsj0_root(tmp_path: Path) -> Path:
    root = tmp_path / "csr_1"
    tr1 = root / "11-1.1" / "wsj0" / "si_tr_s" / "01a"
    sphere(tr1 / "01aa0101.wv1")
    sphere(tr1 / "01aa0101.wv2", seconds=0.2)  # second microphone: must not be used
    sphere(tr1 / "01aa0102.wv1")
    junk(tr1 / "01aa0103.wv1")  # unreadable
    (tr1 / "01aa0101.dot").write_text("transcript")  # not audio
    tr2 = root / "11-2.1" / "wsj0" / "si_tr_s" / "02b"
    sphere(tr2 / "02ba0101.wv1")
    shorten_sphere(tr2 / "02ba0102.wv1")  # compressed, as on the LDC discs
    sphere(root / "11-6.1" / "WSJ0" / "SI_DT_05" / "050" / "050A0501.WV1")
    et = root / "11-14.1" / "wsj0" / "si_et_05" / "440"
    shorten_sphere(et / "440c0201.wv1")  # the converted copy next to it wins
    tone(et / "440c0201.wav", 16000)
    return root


def test_wsj0_splits_speakers_ids_and_hashes(wsj0_root: Path) -> None:
    with pytest.warns(UserWarning, match="skipped 2 file"):
        result = corpora.scan_wsj0(wsj0_root)
    recs = by_id(result.records)
    assert sorted(recs) == ["01aa0101", "01aa0102", "02ba0101", "050a0501", "440c0201"]
    assert {i: r["split"] for i, r in recs.items()} == {
        "01aa0101": "train",
        "01aa0102": "train",
        "02ba0101": "train",
        "050a0501": "valid",
        "440c0201": "test",
    }
    assert {i: r["speaker"] for i, r in recs.items()} == {
        "01aa0101": "01a",
        "01aa0102": "01a",
        "02ba0101": "02b",
        "050a0501": "050",
        "440c0201": "440",
    }
    assert recs["01aa0101"]["path"].endswith("01aa0101.wv1")
    assert recs["440c0201"]["path"].endswith("440c0201.wav")
    for r in recs.values():
        assert r["duration"] == pytest.approx(SECONDS)
        assert (r["corpus"], r["language"], r["sample_rate"], r["channel"]) == ("wsj0", "en", 16000, 1)
    assert_manifest_records(result.records)


def test_wsj0_skips_shorten_and_unreadable_with_clear_reasons(wsj0_root: Path) -> None:
    with pytest.warns(UserWarning, match="sph2pipe"):
        result = corpora.scan_wsj0(wsj0_root)
    reasons = {Path(s.path).name: s.reason for s in result.skipped}
    assert set(reasons) == {"01aa0103.wv1", "02ba0102.wv1"}
    assert "shorten" in reasons["02ba0102.wv1"] and "sph2pipe" in reasons["02ba0102.wv1"]
    assert "02ba0102.wv1" in reasons["02ba0102.wv1"]
    assert "cannot read audio" in reasons["01aa0103.wv1"]


def test_wsj0_uses_channel_two_only_when_channel_one_is_missing(tmp_path: Path) -> None:
    sphere(tmp_path / "wsj0" / "si_tr_s" / "01a" / "01aa0101.wv2", seconds=0.2)
    (rec,) = corpora.scan_wsj0(tmp_path).records
    assert rec["channel"] == 2 and rec["duration"] == pytest.approx(0.2)


def test_wsj0_all_compressed_is_one_clear_error(tmp_path: Path) -> None:
    shorten_sphere(tmp_path / "wsj0" / "si_et_05" / "440" / "440c0201.wv1")
    with pytest.raises(CorpusError, match="sph2pipe"):
        corpora.scan_wsj0(tmp_path)


def test_missing_root_and_unknown_layout_raise(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        corpora.scan_wsj0(tmp_path / "nowhere")
    tone(tmp_path / "x" / "a.wav", 16000)
    with pytest.raises(CorpusError, match="si_tr_s"):
        corpora.scan_wsj0(tmp_path)
    with pytest.raises(CorpusError, match="clean_trainset_28spk_wav"):
        corpora.scan_voicebank(tmp_path)
    with pytest.raises(CorpusError, match="LibriSpeech"):
        corpora.scan_librispeech(tmp_path)


def test_sphere_coding(tmp_path: Path) -> None:
    assert corpora.sphere_coding(sphere(tmp_path / "a.wv1")) == "pcm"
    assert corpora.sphere_coding(shorten_sphere(tmp_path / "b.wv1")) == "pcm,embedded-shorten-v2.00"
    assert corpora.sphere_coding(tone(tmp_path / "c.wav", 16000)) is None


# ---------------------------------------------------------------------------------- VoiceBank

VB_SR = 48000
VB_TRAIN = ["p226_001", "p226_002", "p287_001", "p230_001", "p230_002"]
VB_TEST = ["p232_001", "p257_001"]


@pytest.fixture
def vb_root(tmp_path: Path) -> Path:
    root = tmp_path / "DS_10283_2791"
    for utt in VB_TRAIN:
        tone(
            root / "clean_trainset_28spk_wav" / f"{utt}.wav", VB_SR, freq=1000.0, channels=2 if utt == "p230_001" else 1
        )
    for utt in VB_TRAIN[:-1] + ["p231_001"]:  # p230_002 has no noisy copy, p231_001 no clean one
        tone(root / "noisy_trainset_28spk_wav" / f"{utt}.wav", VB_SR, noise=0.05)
    for utt in VB_TEST:
        tone(root / "clean_testset_wav" / f"{utt}.wav", VB_SR, freq=1000.0)
        tone(root / "noisy_testset_wav" / f"{utt}.wav", VB_SR, noise=0.05)
    tone(root / "clean_trainset_56spk_wav" / "p234_001.wav", VB_SR)
    junk(root / "clean_trainset_28spk_wav" / "._p226_001.wav")  # macOS residue: ignored
    junk(root / "__MACOSX" / "clean_testset_wav" / "._p232_001.wav")
    return root


def test_voicebank_clean_records_and_validation_speakers(vb_root: Path) -> None:
    with pytest.warns(UserWarning, match="p231_001"):
        result = corpora.scan_voicebank(vb_root)
    clean = by_id([r for r in result.records if r["condition"] == "clean"])
    assert sorted(clean) == sorted(VB_TRAIN + VB_TEST)  # 28spk set only, by default
    assert {i: r["split"] for i, r in clean.items()} == {
        "p226_001": "valid",
        "p226_002": "valid",
        "p287_001": "valid",
        "p230_001": "train",
        "p230_002": "train",
        "p232_001": "test",
        "p257_001": "test",
    }
    assert {r["speaker"] for r in clean.values()} == {"p226", "p287", "p230", "p232", "p257"}
    for r in result.records:
        assert r["sample_rate"] == VB_SR and r["duration"] == pytest.approx(SECONDS)
        assert r["corpus"] == "voicebank" and r["language"] == "en"
    assert_manifest_records(result.records)


def test_voicebank_noisy_records_point_at_matching_clean(vb_root: Path) -> None:
    with pytest.warns(UserWarning):
        result = corpora.scan_voicebank(vb_root)
    noisy = by_id([r for r in result.records if r["condition"] == "noisy"])
    assert sorted(noisy) == sorted(f"{u}_noisy" for u in VB_TRAIN[:-1] + VB_TEST)
    for rid, r in noisy.items():
        utt = rid.removesuffix("_noisy")
        folder = "testset" if utt in VB_TEST else "trainset_28spk"
        assert Path(r["path"]) == vb_root / f"noisy_{folder}_wav" / f"{utt}.wav"
        assert Path(r["clean_path"]) == vb_root / f"clean_{folder}_wav" / f"{utt}.wav"
    assert noisy["p287_001_noisy"]["split"] == "valid" and noisy["p230_001_noisy"]["split"] == "train"
    assert [Path(s.path).name for s in result.skipped] == ["p231_001.wav"]
    assert "no matching clean file" in result.skipped[0].reason


def test_voicebank_56_speaker_set_on_request(vb_root: Path) -> None:
    recs = by_id(corpora.scan_voicebank(vb_root, train_set="56spk").records)
    assert sorted(recs) == sorted(VB_TEST + [f"{u}_noisy" for u in VB_TEST] + ["p234_001"])
    assert recs["p234_001"]["split"] == "train"
    with pytest.raises(CorpusError, match="28spk or 56spk"):
        corpora.scan_voicebank(vb_root, train_set="11spk")


def test_materialize_writes_16k_mono_flac_and_keeps_pairs(vb_root: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        records = corpora.scan_voicebank(vb_root).records
    out = corpora.materialize(records, tmp_path / "vb16k")
    assert [r["id"] for r in out] == [r["id"] for r in records]
    converted = {r["id"]: r for r in out}
    t = np.arange(int(SECONDS * 16000)) / 16000
    expected = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
    for r in out:
        info = sf.info(r["path"])
        assert (info.samplerate, info.channels, info.frames, info.format) == (16000, 1, 4800, "FLAC")
        assert r["sample_rate"] == 16000 and r["duration"] == pytest.approx(SECONDS)
        assert r["sha256"] == sha(r["path"])
        if r["condition"] == "clean":  # the 1 kHz tone survives resampling and downmix
            x, _ = sf.read(r["path"])
            assert np.max(np.abs(x[200:-200] - expected[200:-200])) < 1e-2
    assert converted["p230_001_noisy"]["clean_path"] == converted["p230_001"]["path"]
    assert Path(converted["p232_001"]["path"]) == tmp_path / "vb16k" / "clean_testset_wav" / "p232_001.flac"
    assert not list((tmp_path / "vb16k").rglob(".*"))  # no temporary files left

    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "vb16k").rglob("*.flac")}
    assert corpora.materialize(records, tmp_path / "vb16k") == out
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "vb16k").rglob("*.flac")} == stamps


def test_materialize_refuses_two_sources_on_one_target(tmp_path: Path) -> None:
    a, b = tone(tmp_path / "a" / "spk" / "x.wav", 16000), tone(tmp_path / "b" / "spk" / "x.flac", 16000)
    recs = [{"id": "1", "path": str(a)}, {"id": "2", "path": str(b)}]
    with pytest.raises(CorpusError, match="both be copied"):
        corpora.materialize(recs, tmp_path / "out")


def test_write_manifests_one_per_split_and_condition(vb_root: Path, tmp_path: Path) -> None:
    with pytest.warns(UserWarning):
        result = corpora.scan_voicebank(vb_root)
    written = corpora.write_manifests(result.records, tmp_path / "manifests", result.skipped)
    assert sorted(written) == ["test", "test_noisy", "train", "train_noisy", "valid", "valid_noisy"]
    valid_noisy = read_manifest(written["valid_noisy"], required=REQUIRED_FIELDS)
    assert sorted(r["id"] for r in valid_noisy) == ["p226_001_noisy", "p226_002_noisy", "p287_001_noisy"]
    assert all(Path(r["clean_path"]).parent.name == "clean_trainset_28spk_wav" for r in valid_noisy)
    train = read_manifest(written["train"], required=REQUIRED_FIELDS)
    assert sorted(r["id"] for r in train) == ["p230_001", "p230_002"]
    skipped = (tmp_path / "manifests" / "skipped.tsv").read_text().splitlines()
    assert len(skipped) == 1 and skipped[0].startswith(str(vb_root / "noisy_trainset_28spk_wav" / "p231_001.wav"))


# -------------------------------------------------------------------------------- LibriSpeech

LIBRI = {
    "train-clean-100": ["19/198/19-198-0001", "19/198/19-198-0002", "26/495/26-495-0000"],
    "dev-clean": ["84/121123/84-121123-0000"],
    "test-other": ["1688/142285/1688-142285-0000"],
}


@pytest.fixture
def libri_root(tmp_path: Path) -> Path:
    base = tmp_path / "LibriSpeech"
    for subset, utts in LIBRI.items():
        for utt in utts:
            tone(base / subset / f"{utt}.flac", 16000)
    (base / "train-clean-100" / "19" / "198" / "19-198.trans.txt").write_text("19-198-0001 HELLO\n")
    (base / "BOOKS.TXT").write_text("books")
    return tmp_path


def test_librispeech_splits_speakers_and_chapters(libri_root: Path) -> None:
    result = corpora.scan_librispeech(libri_root)
    recs = by_id(result.records)
    assert sorted(recs) == sorted(u.rsplit("/", 1)[1] for utts in LIBRI.values() for u in utts)
    assert {i: r["split"] for i, r in recs.items()} == {
        "19-198-0001": "train",
        "19-198-0002": "train",
        "26-495-0000": "train",
        "84-121123-0000": "valid",
        "1688-142285-0000": "test",
    }
    assert (recs["84-121123-0000"]["speaker"], recs["84-121123-0000"]["chapter"]) == ("84", "121123")
    assert recs["1688-142285-0000"]["subset"] == "test-other"
    for r in recs.values():
        assert r["duration"] == pytest.approx(SECONDS) and r["language"] == "en" and r["corpus"] == "librispeech"
    assert_manifest_records(result.records)
    assert result.skipped == []


@pytest.mark.parametrize(
    "where, expected",
    [
        ("LibriSpeech", {"train", "valid", "test"}),
        ("LibriSpeech/dev-clean", {"valid"}),
    ],
)
def test_librispeech_accepts_inner_roots(libri_root: Path, where: str, expected: set[str]) -> None:
    assert {r["split"] for r in corpora.scan_librispeech(libri_root / where).records} == expected


def test_librispeech_subset_filter_and_misplaced_files(libri_root: Path) -> None:
    tone(libri_root / "LibriSpeech" / "dev-clean" / "84" / "stray.flac", 16000)
    with pytest.warns(UserWarning, match="stray.flac"):
        result = corpora.scan_librispeech(libri_root, subsets=["dev-clean"])
    assert [r["id"] for r in result.records] == ["84-121123-0000"]
    with pytest.raises(CorpusError, match="train-other-500"):
        corpora.scan_librispeech(libri_root, subsets=["train-other-500"])


# ------------------------------------------------------------------------------------ folder


def test_folder_ids_speakers_and_skips(tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    tone(root / "alice" / "a1.wav", 22050)
    tone(root / "alice" / "sub" / "a2.flac", 16000, seconds=0.5)
    tone(root / "bob" / "b1.ogg", 44100, format="OGG", subtype="VORBIS")
    tone(root / "top.WAV", 8000)
    (root / "notes.txt").write_text("not audio")
    junk(root / "bob" / "bad.wav")
    with pytest.warns(UserWarning, match="bad.wav"):
        result = corpora.scan_folder(root, split="train", language="fr")
    recs = by_id(result.records)
    assert sorted(recs) == ["alice/a1", "alice/sub/a2", "bob/b1", "top"]
    assert {i: r["speaker"] for i, r in recs.items()} == {
        "alice/a1": "alice",
        "alice/sub/a2": "sub",
        "bob/b1": "bob",
        "top": "recordings",
    }
    assert recs["alice/sub/a2"]["duration"] == pytest.approx(0.5)
    assert recs["bob/b1"]["sample_rate"] == 44100
    assert {(r["split"], r["language"], r["corpus"]) for r in recs.values()} == {("train", "fr", "folder")}
    assert_manifest_records(result.records)
    assert [Path(s.path).name for s in result.skipped] == ["bad.wav"]


def test_folder_defaults_duplicate_ids_and_empty(tmp_path: Path) -> None:
    tone(tmp_path / "d" / "x.wav", 16000)
    tone(tmp_path / "d" / "x.flac", 16000)
    with pytest.warns(UserWarning, match="same id"):
        result = corpora.scan("folder", tmp_path / "d")
    assert [(r["id"], r["split"], r["language"]) for r in result.records] == [("x", "test", "und")]
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "readme.txt").write_text("x")
    with pytest.raises(CorpusError, match="no audio files"):
        corpora.scan_folder(tmp_path / "e")
    with pytest.raises(CorpusError, match="unknown corpus"):
        corpora.scan("timit", tmp_path)
